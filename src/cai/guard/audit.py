"""The guard server's audit log: append-only JSON Lines, one record per request, rotated by size.

Every request to a guarded endpoint writes exactly one record, whatever its outcome (passed, revised, blocked,
refused with 401/413, failed upstream). Records hold ids, the policy hash, verdicts, the action and latencies; the
conversation and the answer are replaced by their length and a sha256 digest unless content logging is on (then
URLs in them still have credentials masked by :mod:`cai.redact`).

One lock serializes writers, so concurrent requests never interleave lines. Durability is chosen by ``fsync``:
``always`` (fsync after every record), ``interval`` (at most once per ``fsync_interval_s``, and at close; the
default: a crash loses at most that window, a clean stop nothing) or ``never`` (the OS decides).
When a record would push the file past ``max_bytes`` the file is renamed to ``.1`` (older ones shift to ``.2``,
... up to ``backups``; the oldest is dropped) and a new file is started.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Literal

from cai.redact import redact_obj

FsyncPolicy = Literal["always", "interval", "never"]


def digest_text(text: str) -> dict:
    """What the audit log keeps of a text it must not store: its length and a sha256 prefix."""
    return {"chars": len(text), "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]}


def redact_messages(messages: list[dict]) -> list[dict]:
    return [{"role": str(m.get("role", "")), **digest_text(str(m.get("content", "")))} for m in messages]


class AuditLog:
    """A thread-safe, size-rotated JSONL writer."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_bytes: int = 50 << 20,
        backups: int = 5,
        fsync: FsyncPolicy = "interval",
        fsync_interval_s: float = 1.0,
        include_content: bool = False,
    ):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.fsync = fsync
        self.fsync_interval_s = fsync_interval_s
        self.include_content = include_content
        self.records_written = 0
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self._open()
        self._last_sync = time.monotonic()

    def _open(self):
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return os.fdopen(fd, "ab")

    def content(self, messages: list[dict] | None = None, answer: str | None = None) -> dict:
        """The content fields of a record: full (URLs redacted) or only lengths and digests."""
        out: dict[str, Any] = {}
        if messages is not None:
            out["messages"] = redact_obj(messages) if self.include_content else redact_messages(messages)
        if answer is not None:
            out["answer"] = redact_obj(answer) if self.include_content else digest_text(answer)
        return out

    def write(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False, default=str, separators=(",", ":")) + "\n").encode("utf-8")
        with self._lock:
            if self._f.closed:  # a request that ends after shutdown began (cancelled, late): still recorded, once
                with self._open() as f:
                    f.write(line)
                    f.flush()
                    os.fsync(f.fileno())
                self.records_written += 1
                return
            if self.max_bytes and self._f.tell() > 0 and self._f.tell() + len(line) > self.max_bytes:
                self._rotate()
            self._f.write(line)
            self._f.flush()
            self.records_written += 1
            now = time.monotonic()
            if self.fsync == "always" or (self.fsync == "interval" and now - self._last_sync >= self.fsync_interval_s):
                os.fsync(self._f.fileno())
                self._last_sync = now

    def _rotate(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        if self.backups > 0:
            for i in range(self.backups - 1, 0, -1):
                src = self.path.with_name(f"{self.path.name}.{i}")
                if src.exists():
                    os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
        self._f = self._open()

    def files(self) -> list[Path]:
        """The current file and its rotated predecessors, oldest first."""
        return _files(self.path, self.backups)

    def close(self) -> None:
        with self._lock:
            if not self._f.closed:
                self._f.flush()
                if self.fsync != "never":
                    os.fsync(self._f.fileno())
                self._f.close()


def read_records(log: AuditLog | str | Path, backups: int = 5) -> list[dict]:
    """Every record of an audit log and its rotated files, oldest first."""
    files = log.files() if isinstance(log, AuditLog) else _files(Path(log), backups)
    out = []
    for p in files:
        with open(p, encoding="utf-8") as f:
            out.extend(json.loads(line) for line in f if line.strip())
    return out


def _files(path: Path, backups: int) -> list[Path]:
    older = [path.with_name(f"{path.name}.{i}") for i in range(backups, 0, -1)]
    return [p for p in older if p.exists()] + ([path] if path.exists() else [])
