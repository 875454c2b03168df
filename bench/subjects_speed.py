"""Several subjects in one engine: time per frame for 1, 2 and 4 subjects against one subject
(goal: 2 subjects <= 1.5x one), and against the same subjects as separate engines stepped one after
the other (what a run per subject would cost, decode aside). Prints one JSON line.

Synthetic reference weights (speed does not depend on the weight values) unless ``--weights``.
All subjects are prompted on frame 0, so they stay in phase (one encoder pass, one batch for the
rest); the prompt frame is not timed.

    python bench/subjects_speed.py [--size 240x320] [--steps 6] [--threads 1] [--counts 1,2,4]

On a GPU (``--device cuda``, default when there is one) the default size is 1080x1920 in fp16.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from matanyone_speed import get_net, sync  # noqa: E402
from mattepod.config import EngineConfig  # noqa: E402
from mattepod.matting import MatAnyoneEngine  # noqa: E402
from mattepod.subjects import SubjectsEngine  # noqa: E402


def frame(h: int, w: int, t: int, n: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """A textured frame with ``n`` ellipses side by side moving right by t px, and their masks."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    bg = 0.5 + 0.25 * np.sin(xx / 7.0 + t) * np.cos(yy / 11.0)
    img = np.stack([bg, bg * 0.8, 1 - bg], -1)
    masks = []
    for k in range(n):
        cx, cy = (k + 0.5) * w / n + t, h / 2
        inside = ((yy - cy) / (h / 3)) ** 2 + ((xx - cx) / (w / (3 * n))) ** 2 <= 1
        img[inside] = [0.9, 0.3 + 0.15 * k, 0.2]
        masks.append(inside.astype(np.float32))
    return (img * 255).astype(np.uint8), masks


def time_run(step, dev: torch.device, frames: list) -> float:
    """Median ms per frame over the timed frames (frame 0, the prompt, is not timed)."""
    times = []
    for t, (img, _) in enumerate(frames[1:], start=1):
        sync(dev)
        t0 = time.perf_counter()
        step(img)
        sync(dev)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", help="HxW (default 240x320 on the CPU, 1080x1920 on a GPU)")
    ap.add_argument("--steps", type=int, default=6, help="timed frames per run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--counts", default="1,2,4")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--weights", help="a MatAnyone checkpoint (default: synthetic reference weights)")
    ap.add_argument("--no-separate", action="store_true", help="skip the separate-engines baseline")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    h, w = (int(v) for v in (args.size or ("1080x1920" if dev.type == "cuda" else "240x320")).split("x"))
    counts = [int(c) for c in args.counts.split(",")]
    net = get_net(args.weights)
    cfg = EngineConfig(device=args.device, precision="auto", warmup=1, erode=0, dilate=0)
    out: dict = {"bench": "subjects_speed", "device": torch.cuda.get_device_name(dev) if dev.type == "cuda"
                 else platform.processor() or platform.machine(), "size": f"{h}x{w}", "threads": args.threads,
                 "precision": "fp16" if dev.type == "cuda" else "fp32", "steps": args.steps,
                 "ms_per_frame": {}, "separate_ms_per_frame": {}}
    base = MatAnyoneEngine(net, cfg)  # the network moved to the device once; every engine is a twin
    for n in counts:
        clip = [frame(h, w, t, n) for t in range(args.steps + 1)]
        eng = SubjectsEngine([f"s{k}" for k in range(n)], [base.twin() for _ in range(n)])
        names = eng.names
        eng.step(clip[0][0], dict(zip(names, clip[0][1])))
        out["ms_per_frame"][n] = round(time_run(eng.step, dev, clip), 2)
        if not args.no_separate and n > 1:
            sep = [base.twin() for _ in range(n)]
            for e, m in zip(sep, clip[0][1]):
                e.start(clip[0][0], m)
            out["separate_ms_per_frame"][n] = round(time_run(lambda img: [e.step(img) for e in sep], dev, clip), 2)
    one = out["ms_per_frame"].get(1)
    if one:
        out["ratio_vs_one"] = {n: round(v / one, 3) for n, v in out["ms_per_frame"].items()}
        if 2 in out["ratio_vs_one"]:
            out["goal_2_subjects_le_1.5x"] = out["ratio_vs_one"][2] <= 1.5
    out["speedup_vs_separate"] = {n: round(v / out["ms_per_frame"][n], 3)
                                  for n, v in out["separate_ms_per_frame"].items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
