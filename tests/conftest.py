"""Shared fixtures: test media made with ffmpeg (never committed), the repo paths, a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def make_video(path: Path, width: int = 96, height: int = 64, frames: int = 24, fps: str = "24",
               audio: bool = True, codec: str = "libx264", extra: list[str] | None = None,
               src: str = "testsrc2") -> Path:
    """A moving test pattern (and a tone) encoded by real ffmpeg."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if src == "testsrc2" and (width % 2 or height % 2):
        src = "testsrc"  # testsrc2 rounds odd sizes down
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"{src}=size={width}x{height}:rate={fps}"]
    if audio:
        from fractions import Fraction

        seconds = float(frames / Fraction(fps))
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds:.4f}", "-c:a", "aac"]
    cmd += ["-frames:v", str(frames)] if not audio else ["-t", f"{seconds:.4f}"]
    odd = bool(width % 2 or height % 2)
    pix = ["-pix_fmt", "yuv444p" if odd else "yuv420p"] if codec in ("libx264", "ffv1") else []
    cmd += ["-c:v", codec, *pix, *(extra or []), str(path)]
    subprocess.run(cmd, check=True)
    return path


def make_mask(path: Path, width: int, height: int, box: tuple[int, int, int, int] | None = None) -> Path:
    m = np.zeros((height, width), np.uint8)
    x0, y0, x1, y1 = box or (width // 4, height // 4, 3 * width // 4, 3 * height // 4)
    m[y0:y1, x0:x1] = 255
    cv2.imwrite(str(path), m)
    return path


def run_cli(*args: str, env: dict | None = None, check: bool = False, **kw) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    res = subprocess.run([sys.executable, "-m", "mattepod", *args], capture_output=True, text=True,
                         env=full_env, cwd=kw.pop("cwd", ROOT), **kw)
    if check and res.returncode != 0:
        raise AssertionError(f"exit {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


def whole_crash_resume(args: list[str], tmp_path: Path, kill_at: int, timeout: int = 600) -> tuple[Path, Path]:
    """Run ``args`` uninterrupted into tmp/whole, and into tmp/crash with a SIGKILL after ``kill_at`` frames
    followed by ``--resume``; returns both run folders (the resume promise: their outputs must be equal)."""
    whole, crash = tmp_path / "whole", tmp_path / "crash"
    res = run_cli(*args, "--run-dir", str(whole), timeout=timeout)
    assert res.returncode == 0, res.stderr[-2000:]
    killed = run_cli(*args, "--run-dir", str(crash), env={"MATTEPOD_TEST_KILL_AT_FRAME": str(kill_at)}, timeout=timeout)
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = run_cli("run", "--resume", str(crash), "-q", timeout=timeout)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    return whole, crash


def decode(path: Path, pix_fmt: str = "gray16le") -> np.ndarray:
    """All frames of a (small, test) video as an array, via ffmpeg."""
    info = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                           "stream=width,height", "-of", "csv=p=0", str(path)], capture_output=True, text=True,
                          check=True).stdout.strip().split(",")
    w, h = int(info[0]), int(info[1])
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", pix_fmt, "-"],
                         capture_output=True, check=True).stdout
    ch = {"gray16le": 1, "gray": 1, "rgb24": 3, "rgba": 4, "rgba64le": 4}[pix_fmt]
    dt = np.uint16 if pix_fmt in ("gray16le", "rgba64le") else np.uint8
    arr = np.frombuffer(raw, dt)
    return arr.reshape(-1, h, w, ch) if ch > 1 else arr.reshape(-1, h, w)


def stream_info(path: Path) -> list[dict]:
    import json

    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["streams"]


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return make_video(tmp_path / "clip.mp4")


@pytest.fixture
def mask(tmp_path: Path) -> Path:
    return make_mask(tmp_path / "mask.png", 96, 64)
