"""Peak RSS of a whole run on N and 10N frames of a 1080p clip (trivial engine): streaming means the ratio
stays near 1 (goal <= 1.05). Prints one JSON line.

    python bench/pipeline_memory.py [--frames 30] [--size 1920x1080]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import sys
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import make_clip, run_child  # noqa: E402

CHILD = """
import json, resource
from mattepod import config, pipeline
cfg = config.load(None, {{"input": {clip!r}, "output_dir": {out!r}, "prompt.mask": {mask!r}, "engine.name": "mask",
                         "outputs.formats": ["green", "alpha16"], "outputs.previews": 0}})
res = pipeline.run(cfg, pipeline.RunOptions(progress_bar=False))
print(json.dumps({{"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "fps": res.metadata["timings"]["fps"]}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--size", default="1920x1080")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    import cv2
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4: 3 * h // 4, w // 3: 2 * w // 3] = 255
        cv2.imwrite(str(t / "mask.png"), mask)
        results = []
        for n in (args.frames, 10 * args.frames):
            clip = make_clip(t / f"clip{n}.mp4", w, h, n)
            results.append(run_child(CHILD.format(clip=str(clip), out=str(t / f"out{n}"), mask=str(t / "mask.png"))))
    ratio = results[1]["peak_rss_mb"] / results[0]["peak_rss_mb"]
    print(json.dumps({"bench": "pipeline_memory", "size": args.size, "frames": [args.frames, 10 * args.frames],
                      "peak_rss_mb": [round(r["peak_rss_mb"], 1) for r in results],
                      "fps": [r["fps"] for r in results], "ratio": round(ratio, 4), "goal": 1.05,
                      "ok": ratio <= 1.05}))


if __name__ == "__main__":
    main()
