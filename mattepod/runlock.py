"""One writer per run folder: an exclusive ``fcntl`` lock on ``<run>/.lock``.

The kernel drops the lock when the holding process dies (kill -9 included), so a stale lock cannot
exist; the file itself stays and only carries the holder's PID for the message. A second run or resume
of the same folder gets ``RunStateError`` (exit 9) "run is in use by PID N" instead of a double write.
ffmpeg children never inherit the descriptor (``subprocess`` closes it), so they cannot hold it either.
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from mattepod.errors import RunStateError

LOCK = ".lock"


@dataclass
class RunLock:
    path: Path
    fd: int

    @classmethod
    def acquire(cls, run_dir: Path) -> "RunLock":
        """Take the lock or raise ``RunStateError`` naming the PID that holds it."""
        path = Path(run_dir) / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunStateError(f"run {run_dir} is in use by PID {holder(run_dir) or '?'}",
                                "wait for it to finish, or cancel it first (one writer per run folder)") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # a full disk must not stop the lock itself; the PID is only for the message
        return cls(path, fd)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the flock
            self.fd = -1


def holder(run_dir: Path) -> int | None:
    """PID written by the current holder (best effort: it may have just exited)."""
    try:
        text = (Path(run_dir) / LOCK).read_text(errors="replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def in_use(run_dir: Path) -> bool:
    """Whether another process holds the run folder now (used to skip it in auto_resume)."""
    path = Path(run_dir) / LOCK
    if not path.is_file():
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)
