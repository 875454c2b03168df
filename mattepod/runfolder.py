"""The run folder: one per run, holding the effective config, metadata.json, progress, log, previews, outputs.

Everything a face (UI Jobs tab, batch summary, serverless result) knows about a run it reads from here, so a
run survives the browser tab, the app and the pod. Files are replaced atomically (write + rename).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mattepod.errors import RunStateError

METADATA = "metadata.json"
CONFIG = "config.yaml"
PROGRESS = "progress.json"
LOG = "run.log"


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
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def new_run_dir(output_dir: Path, stem: str) -> Path:
    """``<output_dir>/<stem>_<YYYYmmdd-HHMMSS>``; a suffix is added rather than ever reusing a folder."""
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

    def status(self) -> str | None:
        return self.metadata().get("status")

    def attach_log(self) -> logging.Handler:
        handler = logging.FileHandler(self.path / LOG)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("mattepod").addHandler(handler)
        return handler


def open_for_new_run(output_dir: Path, stem: str, run_dir: str | Path | None) -> RunFolder:
    """A fresh folder (the timestamped default, or exactly ``run_dir``) that holds no earlier run."""
    if run_dir is None:
        return RunFolder(new_run_dir(output_dir, stem))
    path = Path(run_dir)
    folder = RunFolder(path)
    status = folder.status() if path.exists() else None
    if status == "completed":
        raise RunStateError(f"run folder {path} holds a completed run", "choose another --run-dir; finished work is never overwritten")
    if status is not None:
        raise RunStateError(f"run folder {path} holds an unfinished run (status {status})", f"continue it with --resume {path}")
    path.mkdir(parents=True, exist_ok=True)
    return folder
