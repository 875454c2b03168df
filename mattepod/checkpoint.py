"""Segment manifest and engine state: what lets a run continue after kill -9, power loss or a pod restart.

After every finished segment (all its files closed), the engine state captured at that frame is written,
then ``manifest.json`` is replaced atomically. The manifest records what each segment's files must look
like (frames, size, a sha256 for small files); a resumed run re-checks them (``verify``) and redoes from
the first one that is missing, truncated or different, so nothing it trusts is unchecked. Segments
written after the last manifest update are redone, so a crash at any instant loses at most one segment.
The join's progress is recorded in the same file (``finalize``), step by step.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mattepod.runfolder import write_atomic

MANIFEST = "manifest.json"
HASH_LIMIT = 32 << 20  # segment files up to this size are hashed as well as sized
log = logging.getLogger("mattepod.checkpoint")


class ManifestDamaged(Exception):
    """manifest.json exists but cannot be trusted (not JSON, not UTF-8, wrong shape, impossible counts)."""


@dataclass
class Manifest:
    segment_frames: int
    total_frames: int
    segments_done: int = 0
    frames_done: int = 0
    state_file: str | None = None
    backward_done: bool = False
    # one record per committed segment: {"frames": n, "files": {format: {"size", "frames", "sha256"?}}}
    segments: list[dict[str, Any]] = field(default_factory=list)
    # finalisation steps already done, in order ("publish:alpha", "hook:proxies", "cleanup", ...)
    finalize: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: Path) -> "Manifest | None":
        """None when there is none; ``ManifestDamaged`` when it exists but cannot be trusted."""
        path = run_dir / MANIFEST
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ManifestDamaged(f"not readable JSON ({type(exc).__name__})") from None
        if not isinstance(data, dict):
            raise ManifestDamaged(f"holds a JSON {type(data).__name__}, not an object")
        known = {f.name for f in fields(cls)}
        missing = [k for k in ("segment_frames", "total_frames") if k not in data]
        if missing:
            raise ManifestDamaged(f"lacks {', '.join(missing)}")
        try:
            m = cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise ManifestDamaged(str(exc)) from None
        m.check()
        return m

    def check(self) -> None:
        """Impossible numbers mean the file was edited or damaged: never act on them."""
        ints = (self.segment_frames, self.total_frames, self.segments_done, self.frames_done)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints):
            raise ManifestDamaged("counts are not integers")
        if self.segment_frames < 1 or self.total_frames < 1:
            raise ManifestDamaged("segment_frames / total_frames below 1")
        if not 0 <= self.frames_done <= self.total_frames:
            raise ManifestDamaged(f"frames_done {self.frames_done} is outside 0..{self.total_frames}")
        if self.segments_done > -(-self.total_frames // self.segment_frames):
            raise ManifestDamaged(f"segments_done {self.segments_done} is more than the input holds")
        if self.frames_done != min(self.segments_done * self.segment_frames, self.total_frames):
            raise ManifestDamaged(f"frames_done {self.frames_done} does not match segments_done {self.segments_done}")
        if not isinstance(self.segments, list) or not isinstance(self.finalize, list) \
                or not all(isinstance(s, dict) for s in self.segments):
            raise ManifestDamaged("segments / finalize are not lists")
        if self.state_file is not None and (not isinstance(self.state_file, str) or ".." in self.state_file
                                            or self.state_file.startswith("/")):
            raise ManifestDamaged("state_file is not a file of the run folder")

    def save(self, run_dir: Path) -> None:
        write_atomic(run_dir / MANIFEST, json.dumps(asdict(self), indent=2))

    def rollback(self, run_dir: Path, segment: int) -> None:
        """Forget segments ``segment`` .. and the join: they are redone (the state no longer matches)."""
        self.segments_done = segment
        self.frames_done = min(segment * self.segment_frames, self.total_frames)
        self.segments = self.segments[:segment]
        old, self.state_file = self.state_file, None
        self.finalize = []
        self.save(run_dir)
        if old:
            (run_dir / old).unlink(missing_ok=True)


def serialise_state(state: dict[str, Any]) -> bytes:
    """Snapshot now (the engine keeps mutating its tensors): bytes are safe to hand to another thread."""
    import torch  # only where a network runs: a dry run or a config error never loads torch

    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def commit_segment(run_dir: Path, manifest: Manifest, segment: int, frames_done: int, state: bytes | None,
                   record: dict[str, Any] | None = None) -> None:
    """Record segment ``segment`` as finished: state file first, then the manifest that points at it."""
    state_file = None
    if state is not None:
        state_file = f"state/{segment:06d}.pt"
        write_atomic(run_dir / state_file, state)
    old = manifest.state_file
    manifest.segments = manifest.segments[:segment] + [record or {}]
    manifest.segments_done = segment + 1
    manifest.frames_done = frames_done
    manifest.state_file = state_file
    manifest.save(run_dir)
    if old and old != state_file:
        (run_dir / old).unlink(missing_ok=True)


def load_state(run_dir: Path, manifest: Manifest) -> dict[str, Any] | None:
    """The engine state at ``frames_done``; None when there is none or it cannot be read (the caller replays)."""
    if not manifest.state_file:
        return None
    path = run_dir / manifest.state_file
    try:
        import torch  # only where a network runs: a dry run or a config error never loads torch

        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - missing, truncated or foreign: replaying is always correct
        log.warning("engine state %s cannot be read (%s); replaying the engine up to frame %d",
                    manifest.state_file, type(exc).__name__, manifest.frames_done)
        return None


# ---- what a segment's files must look like ----------------------------------------------------------

def file_record(path: Path, frames: int) -> dict[str, Any]:
    size = path.stat().st_size
    rec: dict[str, Any] = {"frames": frames, "size": size}
    if size <= HASH_LIMIT:
        rec["sha256"] = sha256_file(path)
    return rec


def files_record(paths: list[Path]) -> dict[str, Any]:
    """A segment of an image sequence: the count, the total size, and one hash over all of them if small."""
    sizes = [p.stat().st_size for p in paths]
    rec: dict[str, Any] = {"frames": len(paths), "size": sum(sizes)}
    if sum(sizes) <= HASH_LIMIT:
        h = hashlib.sha256()
        for p in paths:
            h.update(p.read_bytes())
        rec["sha256"] = h.hexdigest()
    return rec


def check_file(path: Path, rec: dict[str, Any]) -> str | None:
    """None if ``path`` matches its record, else what is wrong with it (for the log)."""
    try:
        size = path.stat().st_size
    except OSError:
        return "missing"
    if size != rec.get("size"):
        return f"{size} bytes, {rec.get('size')} recorded"
    if "sha256" in rec and sha256_file(path) != rec["sha256"]:
        return "content differs from the recorded hash"
    return None


def check_files(paths: list[Path], rec: dict[str, Any]) -> str | None:
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        return f"{len(missing)} file(s) missing ({missing[0]}...)"
    if len(paths) != rec.get("frames"):
        return f"{len(paths)} frames, {rec.get('frames')} recorded"
    got = files_record(paths)
    if got["size"] != rec.get("size"):
        return f"{got['size']} bytes, {rec.get('size')} recorded"
    if "sha256" in rec and got.get("sha256") != rec["sha256"]:
        return "content differs from the recorded hash"
    return None


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (segments here; weights in the run's metadata)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
