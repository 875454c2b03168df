"""Pipeline efficiency: end-to-end fps divided by the slowest stage's fps measured alone (decode only,
engine only, encode only) on the same clip in the same run. Goal >= 0.9: the threads and bounded queues
hide everything but the slowest stage. Prints one JSON line.

    python bench/pipeline_efficiency.py [--frames 120] [--size 1280x720]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

import sys
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
from _common import make_clip  # noqa: E402
from mattepod import config, pipeline  # noqa: E402
from mattepod.engine import MaskFollowEngine  # noqa: E402
from mattepod.media.probe import probe  # noqa: E402
from mattepod.media.reader import read_frames  # noqa: E402
from mattepod.outputs import OutputSet  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--formats", default="green")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    formats = args.formats.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        clip = make_clip(t / "clip.mp4", w, h, args.frames)
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4: 3 * h // 4, w // 3: 2 * w // 3] = 255
        cv2.imwrite(str(t / "mask.png"), mask)
        info = probe(clip)
        n = info.frame_count

        t0 = time.perf_counter()
        sample = []
        for i, f in enumerate(read_frames(info)):
            if i < 8:
                sample.append(f.copy())
        decode_fps = n / (time.perf_counter() - t0)

        eng = MaskFollowEngine()
        m = mask.astype(np.float32) / 255
        t0 = time.perf_counter()
        eng.start(sample[0], m)
        alphas = []
        for i in range(1, n):
            a = eng.step(sample[i % len(sample)])
            if i < 8:
                alphas.append(a)
        engine_fps = n / (time.perf_counter() - t0)

        cfg = config.load(None, {"outputs.formats": formats, "outputs.previews": 0})
        outs = OutputSet(t / "enc", "clip", w, h, Fraction(30), cfg.outputs, {"h264": "libx264", "hevc": "libx265"})
        t0 = time.perf_counter()
        outs.open_segment(0, 0)
        for i in range(n):
            outs.write(i, sample[i % len(sample)], alphas[i % len(alphas)])
        outs.close_segment()
        encode_fps = n / (time.perf_counter() - t0)

        run_cfg = config.load(None, {"input": str(clip), "output_dir": str(t / "out"), "prompt.mask": str(t / "mask.png"),
                                     "engine.name": "mask", "outputs.formats": formats, "outputs.previews": 0,
                                     "recovery.segment_frames": max(n, 1)})
        t0 = time.perf_counter()
        res = pipeline.run(run_cfg, pipeline.RunOptions(progress_bar=False))
        e2e_fps = n / (time.perf_counter() - t0)
    slowest = min(decode_fps, engine_fps, encode_fps)
    print(json.dumps({"bench": "pipeline_efficiency", "size": args.size, "frames": n, "formats": formats,
                      "decode_fps": round(decode_fps, 2), "engine_fps": round(engine_fps, 2),
                      "encode_fps": round(encode_fps, 2), "end_to_end_fps": round(e2e_fps, 2),
                      "loop_fps": res.metadata["timings"]["fps"],
                      "efficiency": round(e2e_fps / slowest, 3), "goal": 0.9}))


if __name__ == "__main__":
    main()
