"""The run folder: one per run, holding the effective config, metadata.json, progress, log, previews, outputs.

Everything a face (UI Jobs tab, batch summary, serverless result) knows about a run it reads from here, so a
run survives the browser tab, the app and the pod. Files are replaced atomically (write + rename).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from mattepod.errors import DiskFullError, OutputPathError, RunStateError

METADATA = "metadata.json"
CONFIG = "config.yaml"
PROGRESS = "progress.json"
LOG = "run.log"
RESERVE = ".reserve"  # space kept back so the failure record can still be written on a full disk
RESERVE_BYTES = 256 << 10
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG)
log = logging.getLogger("mattepod.runfolder")


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write to a temp file in the same folder, fsync, rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode() if isinstance(text, str) else text
    fd, tmp = tempfile.mkstemp(prefix="." + path.name, dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object, or None when the file is missing, unreadable, not UTF-8, not JSON, or not an object."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def os_error(exc: OSError) -> Exception:
    """An OSError met while writing a run, as the one-line error a user can act on (else itself)."""
    where = exc.filename or "the output folder"
    if exc.errno in NO_SPACE:
        return DiskFullError(f"disk full while writing {where}", "free space in the output volume, then --resume the run")
    if exc.errno in NOT_WRITABLE:
        return OutputPathError(f"cannot write {where}: {exc.strerror}",
                               "choose a writable output folder (--output-dir / --run-dir) that is a folder, not a file")
    return exc


@contextmanager
def writing(what: str = "") -> Iterator[None]:
    """Turn the OSErrors of folder set-up into their one-line errors."""
    try:
        yield
    except OSError as exc:
        err = os_error(exc)
        if err is exc:
            raise
        raise err from None


def new_run_dir(output_dir: Path, stem: str) -> Path:
    """``<output_dir>/<stem>_<YYYYmmdd-HHMMSS>``; a suffix is added rather than ever reusing a folder."""
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputPathError(f"output folder {output_dir} is a file", "give --output-dir a folder path")
    output_dir.mkdir(parents=True, exist_ok=True)
    base = f"{stem}_{time.strftime('%Y%m%d-%H%M%S')}"
    for n in range(1000):
        path = output_dir / (base if n == 0 else f"{base}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RunStateError(f"cannot create a run folder under {output_dir}", "clean up the output folder")


@dataclass
class RunFolder:
    path: Path

    @property
    def metadata_path(self) -> Path:
        return self.path / METADATA

    def metadata(self) -> dict[str, Any]:
        return read_json(self.metadata_path) or {}

    def update(self, **fields: Any) -> dict[str, Any]:
        meta = self.metadata()
        meta.update(fields)
        meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_atomic(self.metadata_path, json.dumps(meta, indent=2, default=str))
        return meta

    def record_end(self, **fields: Any) -> bool:
        """The last word of a run (failed/cancelled): must land even on a full disk, must never raise.

        The reserve file is given back first, which frees the room for metadata.json and the log line;
        if the atomic write still fails, the file is overwritten in place. Returns whether it was written."""
        self.release_reserve()
        try:
            self.update(**fields)
            return True
        except Exception:  # noqa: BLE001 - the run's own error is what the user must see
            pass
        try:
            meta = self.metadata()
            meta.update(fields)
            with open(self.metadata_path, "r+b" if self.metadata_path.exists() else "wb") as f:
                data = json.dumps(meta, default=str).encode()
                f.write(data)
                f.truncate(len(data))
            return True
        except Exception:  # noqa: BLE001
            return False

    def reserve(self) -> None:
        """Keep ``RESERVE_BYTES`` of real blocks (zeros, not a sparse file) for ``record_end``."""
        try:
            with open(self.path / RESERVE, "wb") as f:
                f.write(b"\0" * RESERVE_BYTES)
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            (self.path / RESERVE).unlink(missing_ok=True)

    def release_reserve(self) -> None:
        try:
            (self.path / RESERVE).unlink(missing_ok=True)
        except OSError:
            pass

    def status(self) -> str | None:
        return self.metadata().get("status")

    def attach_log(self) -> logging.Handler:
        handler = QuietFileHandler(self.path / LOG)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("mattepod").addHandler(handler)
        return handler


class QuietFileHandler(logging.FileHandler):
    """run.log: flushed per line; a write that fails (full disk) is dropped, never printed as a traceback."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        pass


def open_for_new_run(output_dir: Path, stem: str, run_dir: str | Path | None) -> tuple[RunFolder, Any]:
    """A fresh folder (the timestamped default, or exactly ``run_dir``) that holds no earlier run, locked
    (returns the folder and its ``RunLock``)."""
    from mattepod.runlock import RunLock

    with writing():
        if run_dir is None:
            path = new_run_dir(output_dir, stem)
        else:
            path = Path(run_dir)
            if path.exists() and not path.is_dir():
                raise OutputPathError(f"--run-dir {path} is a file, not a folder", "give a folder path for --run-dir")
            path.mkdir(parents=True, exist_ok=True)
        lock = RunLock.acquire(path)
    folder = RunFolder(path)
    status = folder.status() if run_dir is not None else None
    if status is None and run_dir is not None and (path / METADATA).exists():
        status = "unreadable"
    if status is not None:
        lock.release()
    if status == "completed":
        raise RunStateError(f"run folder {path} holds a completed run", "choose another --run-dir; finished work is never overwritten")
    if status is not None:
        raise RunStateError(f"run folder {path} holds an unfinished run (status {status})", f"continue it with --resume {path}")
    return folder, lock
