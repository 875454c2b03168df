#!/usr/bin/env python3
"""Download and verify model weights (see mattepod/download.py). Usage: download_models.py --models all"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mattepod.download import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
