"""Tiny generated media for the batch and serverless tests (ffmpeg, no binaries in git)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

W, H, FRAMES = 64, 48, 10


def make_clip(path: Path, frames: int = FRAMES, rate: int = 10, size: tuple[int, int] = (W, H)) -> Path:
    """A moving test pattern with a bright square: decodable by every part of the pipeline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size={size[0]}x{size[1]}:rate={rate}", "-frames:v", str(frames),
                    "-c:v", "libx264", "-g", str(rate), "-pix_fmt", "yuv420p", str(path)], check=True, timeout=60)
    return path


def make_broken(path: Path) -> Path:
    """Bytes that look like a video by name only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 20)
    return path


def make_mask(path: Path, size: tuple[int, int] = (W, H)) -> Path:
    """A centred rectangle, 0/255, at the clip's size."""
    m = np.zeros((size[1], size[0]), np.uint8)
    m[size[1] // 4: 3 * size[1] // 4, size[0] // 4: 3 * size[0] // 4] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(m).save(path)
    return path
