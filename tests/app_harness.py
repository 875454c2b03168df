"""Shared helpers for the app tests: generated clips, a free port, the real app in a subprocess."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"  # Debian's
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


@contextlib.contextmanager
def chromium():
    """Debian's headless Chromium driven by Playwright (the browser of every page test)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()
# The subject: a white square moving right over a dark grey background.
BOX = {"x0": 20, "y0": 30, "size": 40, "speed": 2}


def render_frame(n: int, w: int = 160, h: int = 96) -> np.ndarray:
    """Frame ``n`` of the test clip (RGB): the white square at x0 + n*speed on dark grey."""
    frame = np.full((h, w, 3), 32, np.uint8)
    frame[box_mask(n, w, h) > 0] = 255
    return frame


def make_clip(path: Path, frames: int = 20, w: int = 160, h: int = 96, fps: int = 10) -> Path:
    """Render the frames in numpy and encode them with ffmpeg (the box position is exact per frame)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps),
         "-i", "-", "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "12", str(path)],
        stdin=subprocess.PIPE)
    for n in range(frames):
        proc.stdin.write(render_frame(n, w, h).tobytes())
    proc.stdin.close()
    if proc.wait(60) != 0:
        raise RuntimeError(f"ffmpeg could not write {path}")
    return path


def box_mask(frame: int = 0, w: int = 160, h: int = 96) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    x = min(BOX["x0"] + frame * BOX["speed"], w - BOX["size"])
    m[BOX["y0"] : BOX["y0"] + BOX["size"], x : x + BOX["size"]] = 255
    return m


def write_mask(path: Path, frame: int = 0) -> Path:
    cv2.imwrite(str(path), box_mask(frame))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningApp:
    """app/gradio_app.py started for real on 127.0.0.1 in its own process group."""

    def __init__(self, root: Path, env: dict[str, str] | None = None, port: int | None = None):
        self.root = root
        self.port = port or free_port()  # the same port again: a restarted pod (the browser's storage is per port)
        self.url = f"http://127.0.0.1:{self.port}/"
        self.input, self.output, self.weights = root / "input", root / "output", root / "weights"
        for d in (self.input, self.output, self.weights):
            d.mkdir(parents=True, exist_ok=True)
        self.log = root / f"app-{self.port}.log"
        full = {k: v for k, v in os.environ.items()
                if k not in ("GRADIO_USERNAME", "GRADIO_PASSWORD", "APP_PASSWORD")}
        full.update({"INPUT_DIR": str(self.input), "OUTPUT_DIR": str(self.output),
                     "MODEL_CACHE_DIR": str(self.weights), "GRADIO_SERVER_NAME": "127.0.0.1",
                     "GRADIO_SERVER_PORT": str(self.port), "GRADIO_ANALYTICS_ENABLED": "False",
                     "GRADIO_TEMP_DIR": str(root / "gradio-cache"), "PYTHONPATH": str(REPO),
                     "OMP_NUM_THREADS": "1"})
        full.update(env or {})
        self.proc = subprocess.Popen([sys.executable, str(REPO / "app" / "gradio_app.py")], cwd=str(root),
                                     env=full, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        try:
            self._wait_up()
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> "RunningApp":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _wait_up(self, timeout: float = 90) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(self.url + "gradio_api/info", timeout=2)
                return
            except urllib.error.HTTPError:
                return  # 401 with auth on: the server is up
            except (urllib.error.URLError, OSError):
                time.sleep(0.3)
        raise RuntimeError(f"app did not start in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        """Stop the app and any job it left running (jobs have their own sessions and outlive the app)."""
        import json

        for job_file in self.output.glob("*/job.json"):
            try:
                pid = json.loads(job_file.read_text()).get("pid")
                if pid and str(job_file.parent) in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                    os.killpg(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def make_long_clip(path: Path, frames: int = 3000, w: int = 160, h: int = 96, fps: int = 25) -> Path:
    """A long clip (ffmpeg's test pattern) for jobs that must still be running when a test cancels them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size={w}x{h}:rate={fps}",
                    "-frames:v", str(frames), "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast",
                    str(path)], check=True, timeout=120)
    return path
