"""Progress for people (tqdm on stderr) and for machines (JSON lines on stdout, progress.json in the run)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mattepod.runfolder import PROGRESS, write_atomic


class Progress:
    """One sink per run. ``listener`` lets an in-process caller (serverless worker) see every update."""

    def __init__(self, total: int, run_dir: Path | None, json_lines: bool = False, bar: bool = True,
                 listener: Callable[[dict[str, Any]], None] | None = None, min_interval: float = 0.5):
        self.total = total
        self.run_dir = run_dir
        self.json_lines = json_lines
        self.listener = listener
        self.min_interval = min_interval
        self._bar = tqdm(total=total, unit="frame", dynamic_ncols=True, file=sys.stderr,
                         disable=not bar or not sys.stderr.isatty() and json_lines)
        self._t0 = time.monotonic()
        self._last = 0.0
        self._done0 = 0
        self.stage = "matting"

    def emit(self, event: dict[str, Any]) -> None:
        if self.json_lines:
            print(json.dumps(event), flush=True)
        if self.listener:
            self.listener(event)

    def begin(self, stage: str, done: int = 0, total: int | None = None) -> None:
        self.stage = stage
        self.total = self.total if total is None else total
        self._t0 = time.monotonic()
        self._done0 = done
        self._bar.reset(total=self.total)
        self._bar.update(done)
        self._bar.set_description(stage)

    def update(self, done: int, force: bool = False) -> None:
        self._bar.update(done - self._bar.n)
        now = time.monotonic()
        if not force and now - self._last < self.min_interval and done < self.total:
            return
        self._last = now
        elapsed = max(now - self._t0, 1e-9)
        fps = (done - self._done0) / elapsed
        eta = (self.total - done) / fps if fps > 0 else None
        event = {"event": "progress", "stage": self.stage, "frame": done, "total": self.total,
                 "fps": round(fps, 3), "eta": None if eta is None else round(eta, 1)}
        if self.run_dir is not None:
            write_atomic(self.run_dir / PROGRESS, json.dumps(event))
        self.emit(event)

    def close(self) -> None:
        self._bar.close()
