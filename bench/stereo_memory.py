"""Peak memory of the stereo path at 8K does not grow with the clip length.

Runs StereoEngine (MaskFollowEngine per eye, matting at ``--scale`` of each eye) + eye split/merge +
fisheye reprojection and alpha packing over N and then 10N synthetic 8K SBS frames (8192x4096), each
in its own process, frames generated in memory one at a time (a moving textured shape in both eyes
with a known disparity). Prints one JSON line: peak RSS of both runs and their ratio (goal <= 1.05).

    python bench/stereo_memory.py [--frames 2] [--scale 0.125] [--width 8192] [--height 4096]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402

from mattepod.engine import MaskFollowEngine  # noqa: E402
from mattepod.stereo import Layout, StereoEngine, merge_eyes, split_eyes  # noqa: E402
from mattepod.vrproject import packed_frame  # noqa: E402

DISPARITY = -96  # px at 8K: the subject sits this far left in the right eye


class Clip:
    """Synthetic SBS frames made on demand; only the static textures are kept."""

    def __init__(self, width: int, height: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.w, self.h, self.eye = width, height, width // 2
        small = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
        self.bg = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
        self.oh, self.ow = int(height * 0.4), int(self.eye * 0.25)
        small = rng.integers(0, 256, (self.oh // 8, self.ow // 8, 3), dtype=np.uint8)
        self.obj = cv2.resize(small, (self.ow, self.oh), interpolation=cv2.INTER_LINEAR)
        m = np.zeros((self.oh, self.ow), np.uint8)
        cv2.ellipse(m, (self.ow // 2, self.oh // 2), (self.ow // 2 - 1, self.oh // 2 - 1), 0, 0, 360, 1, -1)
        self.obj_mask = m.astype(bool)

    def frame(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """(frame, full-frame mask of the subject in the left eye)."""
        f = self.bg.copy()
        x = int(self.eye * 0.35) + 8 * (t % 100)
        y = int(self.h * 0.3)
        mask = np.zeros((self.h, self.w), np.float32)
        for x0 in (x, self.eye + x + DISPARITY):
            region = f[y:y + self.oh, x0:x0 + self.ow]
            region[self.obj_mask] = self.obj[self.obj_mask]
        mask[y:y + self.oh, x:x + self.ow][self.obj_mask] = 1.0
        return f, mask


def child(frames: int, width: int, height: int, scale: float) -> dict:
    layout = Layout("sbs", projection="equirect", fov=180.0)
    clip = Clip(width, height)
    engine = StereoEngine(MaskFollowEngine, layout, scale=scale)
    t0 = time.perf_counter()
    for t in range(frames):
        frame, mask = clip.frame(t)
        if t == 0:
            alpha = engine.start(frame, mask)
        else:
            alpha = engine.step(frame)
        del mask
        left, right = split_eyes(frame, layout)  # what the SBS green/RGBA writers do per eye
        merged = merge_eyes(left, right, layout)
        packed = packed_frame(frame, alpha, layout, fov=180.0)
        engine.drain_consistency()  # the pipeline writes these out
        del frame, alpha, merged, packed, left, right
    elapsed = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"frames": frames, "peak_rss_mb": round(peak_kb / 1024, 1), "sec_per_frame": round(elapsed / frames, 3),
            "summary": engine.summary()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=2, help="N (the second run does 10 N)")
    ap.add_argument("--scale", type=float, default=0.125, help="internal matting size per eye")
    ap.add_argument("--width", type=int, default=8192)
    ap.add_argument("--height", type=int, default=4096)
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.width, a.height, a.scale)))
        return
    runs = []
    for n in (a.frames, 10 * a.frames):
        cmd = [sys.executable, __file__, "--child", str(n), "--scale", str(a.scale), "--width", str(a.width),
               "--height", str(a.height)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    ratio = runs[1]["peak_rss_mb"] / runs[0]["peak_rss_mb"]
    print(json.dumps({"bench": "stereo_memory", "width": a.width, "height": a.height, "scale": a.scale,
                      "frames": [r["frames"] for r in runs], "peak_rss_mb": [r["peak_rss_mb"] for r in runs],
                      "ratio": round(ratio, 4), "goal": 1.05, "ok": ratio <= 1.05,
                      "sec_per_frame": runs[1]["sec_per_frame"], "iou_mean": runs[1]["summary"]["iou_mean"]}))


if __name__ == "__main__":
    main()
