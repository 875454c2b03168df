#!/usr/bin/env python3
"""Run one matting job: the same argv as ``python -m mattepod run`` (the UI launches jobs through this file).

    python scripts/run_inference.py configs/generate.yaml --input clip.mp4 --mask mask.png --progress-json
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout without install

from mattepod.cli import main  # noqa: E402

if __name__ == "__main__":
    argv = sys.argv[1:]
    raise SystemExit(main(argv if argv[:1] == ["run"] else ["run", *argv]))
