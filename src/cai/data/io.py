"""Atomic writes and JSONL helpers. Every artifact goes through these, so a kill never leaves half a file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from cai.errors import UserInputError
from cai.redact import redact_obj


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give artifacts the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def dumps_jsonl(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Atomically write rows as JSON Lines."""
    atomic_write_text(path, dumps_jsonl(rows))


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON, with credentials in any URL masked (see :mod:`cai.redact`)."""
    atomic_write_text(path, json.dumps(redact_obj(obj), indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(path: str | Path, *, what: str = "file", fix: str | None = None) -> Any:
    """Read a JSON file written by this toolkit; a damaged one is a located :class:`UserInputError`."""
    path = Path(path)
    fix = fix or f"delete {path} (or the folder holding it) and run the command again to recreate it."
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserInputError(f"{path}: the {what} is damaged (not UTF-8 at byte {e.start}).", fix=fix) from None
    except OSError as e:
        raise UserInputError(f"{path}: cannot read the {what} ({e.strerror or e}).", fix=fix) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserInputError(f"{path}:{e.lineno}: the {what} is damaged, not valid JSON ({e.msg} at column {e.colno}).",
                             fix=fix) from None


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read JSON Lines written by this toolkit (for user files use :func:`cai.data.readers.read_records`).

    A line cut short or edited by hand is a :class:`UserInputError` naming the file and line, not a traceback.
    """
    out = []
    fix = f"delete {path} and run the command that wrote it again (finished parts are kept)."
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    cut = "" if line.endswith("\n") else ", the line is cut short"
                    raise UserInputError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno}{cut}).", fix=fix) from None
                if not isinstance(row, dict):
                    raise UserInputError(f"{path}:{n}: expected a JSON object, found {type(row).__name__}.", fix=fix)
                out.append(row)
    except UnicodeDecodeError as e:
        raise UserInputError(f"{path}: not valid UTF-8 (byte {e.start}).", fix=fix) from None
    return out
