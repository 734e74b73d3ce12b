"""GGUF files as models: ``gguf:/path/model.gguf`` or a bare ``.gguf`` path in any role.

The transformers backend cannot run a GGUF file directly, so it is dequantized once (transformers reads it with
``gguf_file=``) and saved as a plain Hugging Face folder in the cache, named by the file's sha256: the same file is
converted only once however it is named, and a changed file gets a new folder. Conversion runs under a file lock
and lands with an atomic rename, so two processes converting at once neither corrupt the cache nor convert twice.

Every backend built from a GGUF file reports the file and its sha256 in :meth:`describe`, which is what the stage
manifests record. Hashing a large file takes a few seconds, so the digest is remembered in the cache, keyed by the
file's real path, size and modification time.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from cai.backends.transformers_backend import TransformersBackend
from cai.errors import UserInputError

GGUF_MAGIC = b"GGUF"
_CHUNK = 8 * 1024 * 1024


def cache_dir() -> Path:
    """Root of the toolkit's cache (``CAI_CACHE_DIR``, else ``~/.cache/cai``)."""
    root = os.environ.get("CAI_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "cai")
    return Path(root)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if missing), held for the ``with`` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def is_gguf_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is a regular file that starts with the GGUF magic bytes."""
    p = Path(path)
    if not p.is_file():
        return False
    with open(p, "rb") as fh:
        return fh.read(4) == GGUF_MAGIC


def strip_gguf_prefix(model: str) -> str:
    """``gguf:/a/b.gguf`` -> ``/a/b.gguf`` (other strings unchanged)."""
    return model[len("gguf:") :] if model.startswith("gguf:") else model


def looks_like_gguf(model: str) -> bool:
    """A model string that names a GGUF file: the ``gguf:`` prefix or a ``.gguf`` suffix."""
    return model.startswith("gguf:") or model.lower().endswith(".gguf")


def resolve_gguf(model: str, *, field: str = "model") -> Path:
    """The GGUF file a model string names, checked: it exists and is a GGUF file."""
    path = Path(os.path.expanduser(strip_gguf_prefix(model))).resolve()
    if not path.exists():
        raise UserInputError(
            f"{field}: the GGUF file '{path}' does not exist.",
            fix="point the role at an existing .gguf file (gguf:/path/model.gguf), or at a Hugging Face folder.",
        )
    if not is_gguf_file(path):
        raise UserInputError(
            f"{field}: '{path}' is not a GGUF file (it does not start with the bytes 'GGUF').",
            fix="check the path; a Hugging Face folder is given without the gguf: prefix.",
        )
    return path


def hash_stream(chunks: Iterator[bytes]) -> tuple[str, int]:
    """sha256 hex digest and byte count of a stream of chunks."""
    h = hashlib.sha256()
    n = 0
    for chunk in chunks:
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


def read_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            yield chunk


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file, remembered in the cache by (real path, size, mtime) so a large file is hashed once."""
    p = Path(path).resolve()
    st = p.stat()
    key = hashlib.sha1(f"{p}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()
    memo = cache_dir() / "hashes" / f"{key}.json"
    try:
        rec = json.loads(memo.read_text())
        if rec.get("path") == str(p) and rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns:
            return str(rec["sha256"])
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    digest, _ = hash_stream(read_chunks(p))
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}))
    os.replace(tmp, memo)
    return digest


# GGUF value types -> struct format of a scalar (8 = string, 9 = array are handled apart)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def gguf_metadata(path: str | os.PathLike, keys: tuple[str, ...] = ("general.name", "general.architecture")) -> dict:
    """Scalar and string fields of a GGUF header, read until every wanted key is found (missing ones left out).

    A small streaming reader: it skips over values it does not want (the tokenizer's large arrays) without building
    them, so it takes milliseconds where a full header parse of a 150k-token vocabulary takes seconds.
    """
    import struct

    want = set(keys)
    out: dict = {}
    with open(path, "rb") as fh:

        def read(fmt: str):
            size = struct.calcsize("<" + fmt)
            data = fh.read(size)
            if len(data) != size:
                raise ValueError(f"{path}: the GGUF header ends early")
            return struct.unpack("<" + fmt, data)[0]

        def read_str() -> bytes:
            n = read("Q")
            data = fh.read(n)
            if len(data) != n:
                raise ValueError(f"{path}: the GGUF header ends early")
            return data

        def value(vtype: int, keep: bool):
            if vtype == 8:
                raw = read_str()
                return raw.decode("utf-8", errors="replace") if keep else None
            if vtype == 9:
                etype, count = read("I"), read("Q")
                if etype in _SCALARS:
                    fh.seek(struct.calcsize("<" + _SCALARS[etype]) * count, os.SEEK_CUR)
                else:
                    for _ in range(count):
                        value(etype, False)
                return None
            if vtype not in _SCALARS:
                raise ValueError(f"{path}: unknown GGUF value type {vtype}")
            return read(_SCALARS[vtype])

        if fh.read(4) != GGUF_MAGIC:
            raise ValueError(f"{path} is not a GGUF file")
        version = read("I")
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is not supported")
        read("Q")  # tensor count
        for _ in range(read("Q")):
            key = read_str().decode("utf-8", errors="replace")
            v = value(read("I"), key in want)
            if key in want and v is not None:
                out[key] = v
                if want <= out.keys():
                    break
    return out


def convert_gguf(src: Path, target: Path) -> None:
    """Dequantize ``src`` with transformers and save it as a Hugging Face folder at ``target`` (atomic rename)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(prefix=f".convert-{target.name}-", dir=target.parent))
    try:
        try:
            tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
            model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name)
        except Exception as e:  # a truncated or unsupported file fails in many ways inside the reader
            raise UserInputError(
                f"transformers could not load the GGUF file '{src}': {e}",
                fix="transformers dequantizes only the architectures and quantization types it supports; for other "
                "files use the llamacpp backend (llamacpp:/path/model.gguf, pip install '.[llamacpp]').",
            ) from e
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        model.generation_config.pad_token_id = model.config.pad_token_id
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / ".complete").write_text("converted from " + src.name + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_converted(src: Path, target: Path, *, convert: Callable[[Path, Path], None] = convert_gguf) -> Path:
    """Return ``target``, converting ``src`` into it first unless a complete conversion is already there.

    The check is repeated under a lock next to ``target``, so concurrent callers convert once and all see the result.
    """
    if (target / "config.json").exists() and (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f".{target.name}.lock"):
        if (target / "config.json").exists() and (target / ".complete").exists():
            return target
        # Under the lock nobody else converts into target: a temporary folder left for it was left by a killed run.
        for stale in target.parent.glob(f".convert-{target.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        convert(src, target)
    return target


def gguf_model_dir(src: Path, sha256: str | None = None) -> Path:
    """The converted Hugging Face folder of a GGUF file (converted on first use), keyed by its sha256."""
    digest = sha256 or sha256_file(src)
    return ensure_converted(src, cache_dir() / "models" / f"gguf-{digest[:16]}")


def describe_gguf(path: Path, sha256: str | None = None) -> dict:
    """What a manifest records about a GGUF file: its path, sha256 and ``general.name``."""
    info = {"gguf_file": str(path), "gguf_sha256": sha256 or sha256_file(path)}
    with contextlib.suppress(Exception):  # a header this gguf version cannot read still has a path and a hash
        name = gguf_metadata(path).get("general.name")
        if name:
            info["gguf_name"] = name
    return info


class GGUFTransformersBackend(TransformersBackend):
    """The transformers backend on a converted GGUF file; :meth:`describe` adds the file, its sha256 and name."""

    def __init__(self, model_path: str, *, gguf_info: dict, **kwargs):
        super().__init__(model_path, **kwargs)
        self.gguf_info = dict(gguf_info)

    def describe(self) -> dict:
        return {**super().describe(), **self.gguf_info}


def transformers_from_gguf(
    model: str, *, model_id: str | None = None, gguf_info: dict | None = None, **kwargs
) -> GGUFTransformersBackend:
    """A transformers backend on the converted folder of a GGUF file (``gguf:`` prefix optional)."""
    src = resolve_gguf(model)
    info = gguf_info or describe_gguf(src)
    folder = gguf_model_dir(src, info["gguf_sha256"])
    return GGUFTransformersBackend(str(folder), gguf_info=info, model_id=model_id or str(src), **kwargs)
