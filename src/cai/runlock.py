"""One writer per stage folder: an advisory ``flock`` on ``<stage>/.lock`` naming its holder.

The operating system drops the lock when its process ends, however it ends (even ``kill -9``), so a lock left by a
dead process is simply taken over; the file still names that process, which is reported. A second ``cai`` process
that wants the same stage folder (to resume it, or to ``--overwrite`` it) is refused with the holder's pid, host and
start time. Within one process the lock is re-entrant: a stage that failed and is run again in the same process
reuses it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from cai.errors import UserInputError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
_HELD: dict[str, "StageLock"] = {}


class StageLock:
    """A held lock on one stage folder. Release with :meth:`release` (or let the process end)."""

    def __init__(self, path: Path, fd: int, previous: dict | None):
        self.path = path
        self.fd = fd
        self.previous = previous
        """The holder recorded in the lock file before we took it (a process that has ended), if any."""

    def release(self) -> None:
        if self.fd < 0:
            return
        if _HELD.get(str(self.path)) is self:
            del _HELD[str(self.path)]
        try:
            os.ftruncate(self.fd, 0)  # a lock released on purpose names no holder
            if fcntl is not None:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd = -1


def _holder_text(info: dict | None) -> str:
    if not info:
        return "another process (no details recorded)"
    when = info.get("started_at", "an unknown time")
    host = info.get("host")
    cmd = info.get("command")
    return (f"pid {info.get('pid', '?')}" + (f" on {host}" if host else "") + f", started {when}"
            + (f" ({cmd})" if cmd else ""))


def _read_info(fd: int) -> dict | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 65536)
        info = json.loads(raw.decode("utf-8")) if raw.strip() else None
        return info if isinstance(info, dict) else None
    except (OSError, ValueError):
        return None


def process_started_at() -> str:
    """This process's start time (UTC, ISO 8601), from /proc where available, else now."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        btime = next(int(x.split()[1]) for x in Path("/proc/stat").read_text().splitlines() if x.startswith("btime"))
        t = btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def acquire(folder: Path, *, what: str) -> StageLock:
    """Lock ``folder`` (which must exist) for writing, or raise a :class:`UserInputError` naming the holder."""
    path = (folder / LOCK_NAME).resolve()
    held = _HELD.get(str(path))
    if held is not None and held.fd >= 0:
        return held
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise UserInputError(f"cannot create the lock file {path} ({e.strerror or e}).",
                             fix="make the run folder writable, or choose another --runs-dir.") from None
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            info = _read_info(fd)
            for _ in range(50):  # the holder may have just taken the lock and not yet written its name
                if info:
                    break
                time.sleep(0.01)
                info = _read_info(fd)
            os.close(fd)
            pid = info.get("pid") if info else None
            raise UserInputError(
                f"{folder} is in use by another cai process: {_holder_text(info)}. Two runs writing one stage folder "
                "would mix their rows, so this one stops.",
                fix=(f"wait for that run to finish, or stop it (kill {pid}) first; " if pid else "wait for that run to finish; ")
                + "to run both at once, give this one another --run name.",
            ) from None
    previous = _read_info(fd)
    if previous and previous.get("pid") == os.getpid() and previous.get("host") == socket.gethostname():
        previous = None
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started_at": process_started_at(),
        "locked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:])[:300] if sys.argv else "",
        "what": what,
    }
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(info) + "\n").encode("utf-8"))
    lock = StageLock(path, fd, previous)
    _HELD[str(path)] = lock
    return lock


def stale_note(lock: StageLock) -> str | None:
    """A sentence about the ended process whose lock was taken over, if there was one."""
    prev = lock.previous
    if not prev:
        return None
    return f"took over the lock of {lock.path.parent}, left by {_holder_text(prev)}, which is no longer running."
