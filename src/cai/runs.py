"""Run folders: ``runs/<name>/<stage>/`` with sharded, atomically written data and a manifest written last.

A stage folder without ``manifest.json`` is unfinished. Work is cut into fixed shards (decided from the full input,
never from what is left), each written atomically when done, so a rerun after a kill skips finished shards and
recomputes the rest exactly as an uninterrupted run would.

Nothing on disk is trusted blindly:

- one process writes a stage folder at a time (``.lock``, see :mod:`cai.runlock`);
- ``config.json`` records the settings' fingerprint and a content digest of every input file the settings name
  (and of the items a stage passes as ``inputs``); settings that differ are refused, inputs whose content changed
  make the stage start again, saying so;
- ``shards/index.ndjson`` (append-only, one line per shard written) records each shard's row count and SHA-256; a
  shard that is missing from it or does not match (cut short, edited, copied from another run) is computed again, saying so;
- the manifest records the SHA-256 of every output written with :meth:`StageDir.write_output`; a finished stage
  whose outputs no longer match is rebuilt, saying so;
- a damaged ``config.json``, ``manifest.json`` or shard is an error naming the file, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from cai.data.io import atomic_write_text, read_json, read_jsonl, write_json, write_jsonl
from cai.errors import UserInputError
from cai.redact import redact_obj
from cai import runlock

FORMAT_VERSION = 1
_VERSIONED = ("constitutional-ai", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "pydantic")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def content_fingerprint(items: Any) -> str:
    """Digest of the *content* of a stage's inputs (records, texts), for ``StageDir.begin(inputs=...)``.

    Unlike a fingerprint of the settings, which name a prompt file by its path, this changes whenever a prompt,
    an id or any other field of any record changes.
    """
    h = hashlib.sha256()
    for item in items if isinstance(items, (list, tuple)) else [items]:
        h.update(json.dumps(item, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()[:16]


BIG_FILE_BYTES = 64 << 20
"""Input files larger than this are fingerprinted by size and modification time instead of content."""


def file_digest(path: str | Path) -> str:
    """SHA-256 (16 hex digits) of a file's bytes; files over ``BIG_FILE_BYTES`` by size and mtime instead."""
    st = os.stat(path)
    if st.st_size > BIG_FILE_BYTES:
        return f"size={st.st_size},mtime_ns={st.st_mtime_ns}"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def input_files(config: Any, *, exclude: Path | None = None) -> dict[str, str]:
    """{path: digest} for every string in ``config`` that names an existing file (folders are skipped, and so are
    files inside ``exclude``, the stage's own folder, which the stage itself writes)."""
    out: dict[str, str] = {}
    own = str(exclude.resolve()) + os.sep if exclude is not None else None
    stack = [config]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
        elif isinstance(v, str) and 0 < len(v) < 4096 and "\n" not in v and v not in out:
            try:
                if os.path.isfile(v) and not (own and os.path.realpath(v).startswith(own)):
                    out[v] = file_digest(v)
            except (OSError, ValueError):
                continue
    return dict(sorted(out.items()))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _describe_checksum(data: bytes) -> dict:
    rows = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    return {"rows": rows, "bytes": len(data), "sha256": _sha(data)}


def run_dir_for(runs_dir: str | Path, run: str) -> Path:
    """``runs_dir/run``, refusing a run name that is empty, absolute or climbs out with ``..``."""
    name = str(run)
    parts = Path(name).parts
    if not name.strip() or Path(name).is_absolute() or ".." in parts or "\x00" in name:
        raise UserInputError(
            f"--run '{name}': a run name must be a folder name inside --runs-dir (no '..', not an absolute path).",
            fix="pass a plain name such as --run demo, and choose the parent folder with --runs-dir.",
        )
    return Path(runs_dir) / name


def check_run_dir(run_dir: str | Path) -> Path:
    """Refuse a run folder path that goes back up after going down (``runs/../../x``): it leaves ``--runs-dir``."""
    p = Path(run_dir)
    down = ""
    for part in p.parts:
        if part == "..":
            if down:
                raise UserInputError(
                    f"run folder '{p}' leaves its runs folder (a '..' after '{down}'); output would land "
                    "outside --runs-dir.",
                    fix="pass a plain run name such as --run demo, and choose the parent folder with --runs-dir.",
                )
        elif part not in (".", p.anchor):
            down = part
    return p


def warn(message: str) -> None:
    """Tell the user about something the toolkit recovered from (stderr; the CLI's progress bar stays intact)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def sft_model_of(run_dir: str | Path) -> Path | None:
    """This run's SL-CAI model folder (``sft/model``) when it exists: the default policy of later stages."""
    p = Path(run_dir) / "sft" / "model"
    return p if (p / "config.json").exists() else None


class StageDir:
    """One stage's folder inside a run.

    Use: ``state = stage.begin(config, inputs=content_fingerprint(items))`` ("new", "resume" or "complete"), then
    ``shard_done(i)`` / ``write_shard(i, rows)`` per shard, ``read_shards(n)``, ``write_output(name, rows)`` and
    ``finish(manifest)`` last. ``begin`` takes the folder's lock; ``finish`` (or ``release``) gives it back.
    """

    def __init__(self, run_dir: str | Path, stage: str):
        self.path = check_run_dir(run_dir) / stage
        self.stage = stage
        self.shards = self.path / "shards"
        self.t0 = time.time()
        self.notes: list[str] = []
        """What was found and recovered from (changed inputs, bad shards, damaged outputs); also in the manifest."""
        self._lock: runlock.StageLock | None = None
        self._key: str | None = None
        self._index: dict | None = None
        self._verified: dict[int, bool] = {}
        self._outputs: dict[str, dict] = {}

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    @property
    def index_path(self) -> Path:
        return self.shards / "index.ndjson"

    def is_complete(self) -> bool:
        return self.manifest_path.exists()

    def manifest(self) -> dict:
        m = read_json(self.manifest_path, what="manifest", fix=self._damaged_fix())
        if not isinstance(m, dict):
            raise UserInputError(f"{self.manifest_path}: the manifest is damaged (not a JSON object).", fix=self._damaged_fix())
        return m

    def _damaged_fix(self) -> str:
        return f"rerun this stage with --overwrite (or delete {self.path}) to compute it again."

    def _note(self, message: str) -> None:
        self.notes.append(message)
        warn(message)

    # --- lifecycle ----------------------------------------------------------------------------------------------
    def begin(self, config: dict, *, overwrite: bool = False, inputs: Any = None) -> str:
        """Lock the folder, record the config, and say where the stage stands: ``"new"``, ``"resume"`` or
        ``"complete"``.

        A folder started with different settings is refused. ``inputs`` (for example
        :func:`content_fingerprint` of the stage's records) and the content of every file the config names are
        compared with what the folder was started from; if they changed, the stage starts again, saying so.
        """
        self._make_folder()
        self._lock = runlock.acquire(self.path, what=f"{self.stage} stage")
        note = runlock.stale_note(self._lock)
        if note:
            self._note(note)
        try:
            return self._begin(config, overwrite, inputs)
        except BaseException:
            self.release()
            raise

    def _begin(self, config: dict, overwrite: bool, inputs: Any) -> str:
        safe = redact_obj(config)
        fp = fingerprint(safe)
        record = {"files": input_files(config, exclude=self.path)}
        if inputs is not None:
            record["items"] = inputs if isinstance(inputs, str) else content_fingerprint(inputs)
        self._key = fingerprint({"config": fp, "inputs": record})
        cfg_path = self.path / "config.json"
        if overwrite:
            self._clear()
        if not cfg_path.exists():
            self._write_config(fp, safe, record)
            return "new"
        old = read_json(cfg_path, what="stage config", fix=self._damaged_fix())
        if not isinstance(old, dict) or "fingerprint" not in old:
            raise UserInputError(f"{cfg_path}: the stage config is damaged (no fingerprint).", fix=self._damaged_fix())
        if old.get("fingerprint") != fp:
            raise UserInputError(
                f"{self.path} was started with a different configuration (fingerprint {old.get('fingerprint')} "
                f"vs {fp} now), so it cannot be resumed.",
                fix="rerun with the same settings to resume, pass --overwrite to start this stage again, "
                "or choose another --run name.",
            )
        changed = _changed_inputs(old.get("inputs"), record)
        if changed:
            done = len(list(self.shards.glob("[0-9]*.jsonl"))) if self.shards.is_dir() else 0
            self._note(f"{self.path}: {changed} changed since this stage was started; discarding its "
                       f"{done} finished shard(s) and outputs and computing it again.")
            self._clear()
            self._write_config(fp, safe, record)
            return "new"
        if "inputs" not in old:  # written by an older version: record what the inputs are now
            self._write_config(fp, safe, record)
        if not self.is_complete():
            return "resume"
        bad = self._damaged_outputs(self.manifest())
        if bad:
            self._note(f"{self.path}: output {bad} no longer matches the checksum recorded when the stage finished "
                       "(cut short or edited); rebuilding the stage's outputs.")
            self.manifest_path.unlink()
            return "resume"
        self.release()
        return "complete"

    def _make_folder(self) -> None:
        try:
            if self.path.is_symlink() and not self.path.exists():
                raise FileNotFoundError(2, "it is a link to a folder that no longer exists")
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserInputError(
                f"cannot create the stage folder {self.path} ({e.strerror or e}).",
                fix="choose a --runs-dir you can write to (it is created if missing), or fix the permissions.",
            ) from None

    def _write_config(self, fp: str, safe: dict, record: dict) -> None:
        write_json(self.path / "config.json",
                   {"fingerprint": fp, "config": safe, "inputs": record, "format_version": FORMAT_VERSION})

    def _clear(self) -> None:
        """Empty the folder, keeping the lock: manifest first, then config and shard index, so a kill part-way
        leaves a folder that is unfinished, never one that looks finished."""
        if self.path.is_symlink():  # a stage reused from another run: drop the link, never the other run's files
            self.release()  # the lock held was the other run's
            self.path.unlink()
            self._make_folder()
            self._lock = runlock.acquire(self.path, what=f"{self.stage} stage")
            self._index = None
            self._verified.clear()
            return
        for first in (self.manifest_path, self.path / "config.json", self.index_path):
            first.unlink(missing_ok=True)
        for child in sorted(self.path.iterdir()):
            if child.name == runlock.LOCK_NAME:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        self._index = None
        self._verified.clear()

    def release(self) -> None:
        """Give the folder's lock back (``finish`` does this; so does the end of the process)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # --- shards -------------------------------------------------------------------------------------------------
    def shard_path(self, i: int) -> Path:
        return self.shards / f"{i:05d}.jsonl"

    def _shard_index(self) -> dict:
        """{"key": fingerprint of settings and inputs, "shards": {"i": {rows, bytes, sha256}}} from the index log.

        The log's first line names the settings and inputs it belongs to; each later line records one shard written
        (a later line for the same shard wins). A log of another configuration is started afresh; unreadable lines
        (a torn last line after a kill) are skipped, so their shards are computed again.
        """
        if self._index is None:
            shards: dict[str, dict] = {}
            key = None
            bad = 0
            try:
                lines = self.index_path.read_text(encoding="utf-8").splitlines() if self.index_path.exists() else []
            except (OSError, UnicodeDecodeError):
                lines, bad = [], 1
            for n, line in enumerate(lines):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    rec = None
                if n == 0 and isinstance(rec, dict) and "key" in rec:
                    key = rec["key"]
                elif isinstance(rec, dict) and isinstance(rec.get("shard"), int) and key is not None:
                    shards[str(rec["shard"])] = rec
                else:
                    bad += 1
            if bad and key is not None:
                self._note(f"{self.index_path}: {bad} unreadable line(s) skipped; their shards will be computed again.")
            elif lines and key is None:
                self._note(f"{self.index_path} is damaged; every shard will be computed again.")
            if key != self._key:
                shards = {}
                atomic_write_text(self.index_path, json.dumps({"key": self._key}) + "\n")
            self._index = {"key": self._key, "shards": shards}
        return self._index

    def shard_done(self, i: int) -> bool:
        """Whether shard ``i`` is on disk *and* matches the row count and checksum recorded when it was written.

        A shard that does not match is deleted (and so computed again), with a warning.
        """
        if i in self._verified:
            return self._verified[i]
        p = self.shard_path(i)
        ok = False
        if p.exists():
            entry = self._shard_index()["shards"].get(str(i))
            data = p.read_bytes()
            found = _describe_checksum(data)
            cut = ", the last line cut short" if data and not data.endswith(b"\n") else ""
            if not isinstance(entry, dict):
                why = "is not in the shard index (left by an interrupted or a different run)"
            elif entry.get("sha256") != found["sha256"]:
                why = (f"does not match the shard index ({entry.get('rows')} rows recorded, {found['rows']} "
                       f"found{cut}; checksums differ)")
            else:
                why = ""
                ok = True
            if not ok:
                self._note(f"{p} {why}; computing it again.")
                p.unlink()
        self._verified[i] = ok
        return ok

    def write_shard(self, i: int, rows: list[dict]) -> None:
        """Write shard ``i`` atomically, then record its row count and checksum in the shard index."""
        write_jsonl(self.shard_path(i), rows)
        idx = self._shard_index()
        entry = {"shard": i, **_describe_checksum(self.shard_path(i).read_bytes())}
        idx["shards"][str(i)] = entry
        with open(self.index_path, "a", encoding="utf-8") as f:  # one short line, one write: O(1) per shard
            f.write(json.dumps(entry, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._verified[i] = True

    def read_shards(self, n: int) -> list[dict]:
        """Rows of shards ``0..n-1``, each verified against the shard index."""
        rows: list[dict] = []
        for i in range(n):
            if not self.shard_done(i):
                raise UserInputError(f"{self.shard_path(i)}: shard {i} of {n} is missing or damaged.",
                                     fix="run the same command again: missing shards are computed again.")
            rows.extend(read_jsonl(self.shard_path(i)))
        return rows

    # --- outputs ------------------------------------------------------------------------------------------------
    def write_output(self, name: str, rows: list[dict]) -> Path:
        """Write an output (JSON Lines) atomically and remember its checksum for the manifest."""
        p = self.path / name
        write_jsonl(p, rows)
        self.record_output(name)
        return p

    def record_output(self, name: str) -> None:
        """Remember the checksum of an output the stage wrote itself, so a later damage to it is detected."""
        self._outputs[name] = _describe_checksum((self.path / name).read_bytes())

    def _damaged_outputs(self, manifest: dict) -> str:
        sums = manifest.get("checksums")
        if not isinstance(sums, dict):
            return ""
        bad = []
        for name, want in sorted(sums.items()):
            p = self.path / name
            if not isinstance(want, dict) or not p.is_file() or _sha(p.read_bytes()) != want.get("sha256"):
                bad.append(name)
        return ", ".join(bad)

    def finish(self, manifest: dict) -> Path:
        """Write the manifest last: only now is the stage complete. Gives the folder's lock back.

        A stage with a typed manifest model (:mod:`cai.manifests`) has its manifest checked against it first."""
        from cai.manifests import MANIFESTS, load_manifest

        if self.stage in MANIFESTS:
            load_manifest(self.stage, manifest)
        body = {
            "stage": self.stage,
            "format_version": FORMAT_VERSION,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": package_versions(),
            **manifest,
        }
        if self._outputs:
            body["checksums"] = {**body.get("checksums", {}), **self._outputs}
        if self.notes:
            body["recovered"] = list(self.notes)
        write_json(self.manifest_path, body)
        self.release()
        return self.manifest_path


def _changed_inputs(old: Any, new: dict) -> str:
    """What differs between two input records, in words ("" when nothing did or nothing was recorded)."""
    if not isinstance(old, dict):
        return ""
    what = []
    old_files = old.get("files") if isinstance(old.get("files"), dict) else {}
    for path, digest in new["files"].items():
        if path in old_files and old_files[path] != digest:
            what.append(f"the content of {path}")
    if "items" in old and "items" in new and old["items"] != new["items"]:
        what.append("the input records")
    return " and ".join(what)
