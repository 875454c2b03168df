"""How long Cancel takes on a real job: the page's Cancel (``JobManager.cancel``: SIGTERM to the job's process
group) against the real CLI running MatAnyone (generated weights: the real network, meaningless mattes).

For each try, the job is started, cancelled after a random number of matted frames, and timed from the signal
to the job's final ``cancelled`` status; one more try cancels during start-up (Python still importing torch).
Baseline, measured in the same run: the time one frame takes (1 / the job's own fps), since a job stops at the
next frame boundary. Prints one JSON line; ``ratio`` = median stop time / frame time. Goal (issue 13): <= 2 s.

    python bench/cancel_latency.py [--tries 5] [--width 320 --height 192]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


class _Tmp:
    """What tests/matanyone_common.write_weights needs of pytest's tmp_path_factory."""

    def __init__(self, root: Path):
        self.root = root

    def mktemp(self, name: str) -> Path:
        p = Path(tempfile.mkdtemp(prefix=name, dir=self.root))
        return p


def wait_for(pred, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tries", type=int, default=5)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=192)
    ap.add_argument("--frames", type=int, default=2000)
    args = ap.parse_args()

    from matanyone_common import write_weights

    from mattepod import config as configmod
    from mattepod import jobs

    work = Path(tempfile.mkdtemp(prefix="cancel-bench-"))
    weights = write_weights(_Tmp(work))
    clip = work / "clip.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size={args.width}x{args.height}:rate=24", "-frames:v", str(args.frames),
                    "-pix_fmt", "yuv420p", str(clip)], check=True)
    import cv2
    import numpy as np

    mask = np.zeros((args.height, args.width), np.uint8)
    mask[args.height // 4: 3 * args.height // 4, args.width // 4: 3 * args.width // 4] = 255
    cv2.imwrite(str(work / "mask.png"), mask)
    cfg = configmod.validate({
        "input": str(clip), "weights_dir": str(weights), "prompt": {"mask": str(work / "mask.png")},
        "engine": {"name": "matanyone", "device": "cpu", "precision": "fp32", "warmup": 1, "top_k": 8},
        "outputs": {"formats": ["alpha", "green"], "previews": 0}, "recovery": {"segment_frames": 50}})
    manager = jobs.JobManager(work / "out", kill_grace=60)
    rng = random.Random(5)
    stops, fps_seen, exits = [], [], []
    try:
        for i in range(args.tries + 1):
            startup = i == args.tries
            job_id = manager.submit(jobs.create_run(cfg, work / "out"))
            wait_for(lambda: manager.status(job_id).status == "running", 60)
            if startup:
                time.sleep(0.5)
            else:
                at = rng.randint(5, 60)
                wait_for(lambda: (manager.status(job_id).frame or 0) >= at
                         and manager.status(job_id).stage == "matting", 600)
                fps_seen.append(manager.status(job_id).fps or 0.0)
            t0 = time.monotonic()
            manager.cancel(job_id, wait=False)
            ok = wait_for(lambda: manager.status(job_id).status == "cancelled", 60)
            took = time.monotonic() - t0
            exits.append(manager.status(job_id).exit_code)
            if startup:
                startup_s = took if ok else None
            else:
                stops.append(took if ok else float("inf"))
    finally:
        manager.close(cancel_running=True)
    fps = statistics.median([f for f in fps_seen if f > 0] or [0.0])
    frame_s = 1.0 / fps if fps else None
    med = statistics.median(stops)
    print(json.dumps({
        "bench": "cancel_latency", "engine": "matanyone", "device": "cpu", "frame": [args.width, args.height],
        "tries": args.tries, "stop_s": [round(s, 3) for s in stops], "stop_median_s": round(med, 3),
        "stop_max_s": round(max(stops), 3), "startup_stop_s": None if startup_s is None else round(startup_s, 3),
        "frame_s": None if frame_s is None else round(frame_s, 4),
        "ratio": None if not frame_s else round(med / frame_s, 2), "exit_codes": exits,
        "goal_s": 2.0, "meets_goal": max(stops) <= 2.0 and (startup_s or 99) <= 2.0,
    }))


if __name__ == "__main__":
    main()
