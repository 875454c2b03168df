"""Segment manifest and engine state: what lets a run continue after kill -9, power loss or a pod restart.

After every finished segment (all its files closed), the engine state captured at that frame is written,
then ``manifest.json`` is replaced atomically. A resumed run trusts only what the manifest names: segments
written after the last manifest update are redone, so a crash at any instant loses at most one segment.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mattepod.runfolder import read_json, write_atomic

MANIFEST = "manifest.json"


@dataclass
class Manifest:
    segment_frames: int
    total_frames: int
    segments_done: int = 0
    frames_done: int = 0
    state_file: str | None = None
    backward_done: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: Path) -> "Manifest | None":
        data = read_json(run_dir / MANIFEST)
        return cls(**data) if data else None

    def save(self, run_dir: Path) -> None:
        write_atomic(run_dir / MANIFEST, json.dumps(asdict(self), indent=2))


def serialise_state(state: dict[str, Any]) -> bytes:
    """Snapshot now (the engine keeps mutating its tensors): bytes are safe to hand to another thread."""
    import torch  # only where a network runs: a dry run or a config error never loads torch

    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def commit_segment(run_dir: Path, manifest: Manifest, segment: int, frames_done: int, state: bytes | None) -> None:
    """Record segment ``segment`` as finished: state file first, then the manifest that points at it."""
    state_file = None
    if state is not None:
        state_file = f"state/{segment:06d}.pt"
        write_atomic(run_dir / state_file, state)
    old = manifest.state_file
    manifest.segments_done = segment + 1
    manifest.frames_done = frames_done
    manifest.state_file = state_file
    manifest.save(run_dir)
    if old and old != state_file:
        (run_dir / old).unlink(missing_ok=True)


def load_state(run_dir: Path, manifest: Manifest) -> dict[str, Any] | None:
    if not manifest.state_file:
        return None
    import torch

    return torch.load(run_dir / manifest.state_file, map_location="cpu", weights_only=False)
