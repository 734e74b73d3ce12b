"""Run folders: ``runs/<name>/<stage>/`` with sharded, atomically written data and a manifest written last.

A stage folder without ``manifest.json`` is unfinished. Work is cut into fixed shards (decided from the full input,
never from what is left), each written atomically when done, so a rerun after a kill skips finished shards and
recomputes the rest exactly as an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from cai.data.io import read_jsonl, write_json, write_jsonl
from cai.errors import UserInputError

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


def sft_model_of(run_dir: str | Path) -> Path | None:
    """This run's SL-CAI model folder (``sft/model``) when it exists: the default policy of later stages."""
    p = Path(run_dir) / "sft" / "model"
    return p if (p / "config.json").exists() else None


class StageDir:
    """One stage's folder inside a run."""

    def __init__(self, run_dir: str | Path, stage: str):
        self.path = Path(run_dir) / stage
        self.stage = stage
        self.shards = self.path / "shards"
        self.t0 = time.time()

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def is_complete(self) -> bool:
        return self.manifest_path.exists()

    def manifest(self) -> dict:
        return json.loads(self.manifest_path.read_text(encoding="utf-8"))

    def begin(self, config: dict, *, overwrite: bool = False) -> str:
        """Record the config; refuse to resume a folder that was started with a different one.

        Returns ``"complete"``, ``"resume"`` or ``"new"``.
        """
        fp = fingerprint(config)
        cfg_path = self.path / "config.json"
        if overwrite and self.path.exists():
            import shutil

            shutil.rmtree(self.path)
        if cfg_path.exists():
            old = json.loads(cfg_path.read_text(encoding="utf-8"))
            if old.get("fingerprint") != fp:
                raise UserInputError(
                    f"{self.path} was started with a different configuration (fingerprint {old.get('fingerprint')} "
                    f"vs {fp} now), so it cannot be resumed.",
                    fix="rerun with the same settings to resume, pass --overwrite to start this stage again, "
                    "or choose another --run name.",
                )
            return "complete" if self.is_complete() else "resume"
        write_json(cfg_path, {"fingerprint": fp, "config": config, "format_version": FORMAT_VERSION})
        return "new"

    # --- shards -------------------------------------------------------------------------------------------------
    def shard_path(self, i: int) -> Path:
        return self.shards / f"{i:05d}.jsonl"

    def shard_done(self, i: int) -> bool:
        return self.shard_path(i).exists()

    def write_shard(self, i: int, rows: list[dict]) -> None:
        write_jsonl(self.shard_path(i), rows)

    def read_shards(self, n: int) -> list[dict]:
        rows: list[dict] = []
        for i in range(n):
            rows.extend(read_jsonl(self.shard_path(i)))
        return rows

    def write_output(self, name: str, rows: list[dict]) -> Path:
        p = self.path / name
        write_jsonl(p, rows)
        return p

    def finish(self, manifest: dict) -> Path:
        """Write the manifest last: only now is the stage complete."""
        body = {
            "stage": self.stage,
            "format_version": FORMAT_VERSION,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": package_versions(),
            **manifest,
        }
        write_json(self.manifest_path, body)
        return self.manifest_path
