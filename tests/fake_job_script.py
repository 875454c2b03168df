"""FAKE job script for the job-layer tests: the CLI's argv and run-folder contract, no pipeline.

Reads ``<run>/config.yaml``; ``max_frames`` = frame count, ``start_frame`` = milliseconds to sleep per frame;
an input path containing "fail" makes it fail with exit code 4 the way the real CLI does. It also starts a
child process (like the real CLI's ffmpeg) so tests can check that Cancel kills the whole process group.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

cfg_path, run = Path(sys.argv[1]), Path(sys.argv[sys.argv.index("--run-dir") + 1])
cfg = yaml.safe_load(cfg_path.read_text())
total, sleep = cfg.get("max_frames") or 5, (cfg.get("start_frame") or 0) / 1000
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
(run / "child.pid").write_text(str(child.pid))
meta = {"status": "running", "error": None, "frames": {"total": total, "done": 0}, "outputs": {}, "previews": []}
(run / "metadata.json").write_text(json.dumps(meta))
print(json.dumps({"event": "start", "run_dir": str(run)}), flush=True)
for n in range(1, total + 1):
    time.sleep(sleep)
    print(json.dumps({"event": "progress", "stage": "matting", "frame": n, "total": total, "fps": 10.0,
                      "eta": (total - n) / 10}), flush=True)
if "fail" in str(cfg.get("input")):
    err = {"type": "InvalidMediaError", "message": "clip.mp4 is truncated -> re-export it", "exit_code": 4}
    meta.update(status="failed", error=err)
    (run / "metadata.json").write_text(json.dumps(meta))
    print(json.dumps({"event": "done", "status": "failed", "run_dir": str(run), "outputs": {}, "error": err}))
    print("clip.mp4 is truncated -> re-export it", file=sys.stderr)
    child.kill()
    sys.exit(4)
(run / "clip_alpha.mp4").write_bytes(b"fake alpha")
(run / "previews").mkdir(exist_ok=True)
(run / "previews" / "alpha_0.png").write_bytes(b"fake png")
meta.update(status="completed", outputs={"alpha": "clip_alpha.mp4", "evil": "../../etc/passwd"},
            previews=["previews/alpha_0.png"], frames={"total": total, "done": total})
(run / "metadata.json").write_text(json.dumps(meta))
print(json.dumps({"event": "done", "status": "completed", "run_dir": str(run), "outputs": meta["outputs"]}))
child.kill()
