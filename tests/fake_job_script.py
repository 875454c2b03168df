"""FAKE job script for the job-layer tests: the CLI's argv and run-folder contract, no pipeline.

Reads ``<run>/config.yaml``; ``max_frames`` = frame count, ``start_frame`` = milliseconds to sleep per frame;
an input path containing "fail" makes it fail with exit code 4 the way the real CLI does. It also starts a
child process (like the real CLI's ffmpeg) so tests can check that Cancel kills the whole process group.
Like the real CLI it stops at a frame boundary on SIGTERM (status cancelled, exit 130) unless the input path
contains "stubborn" (a job that ignores SIGTERM, for the SIGKILL escalation), and ``--resume RUN_DIR``
continues from the last frame it reported.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

if "--resume" in sys.argv:
    run = Path(sys.argv[sys.argv.index("--resume") + 1])
    cfg_path = run / "config.yaml"
else:
    cfg_path, run = Path(sys.argv[1]), Path(sys.argv[sys.argv.index("--run-dir") + 1])
cfg = yaml.safe_load(cfg_path.read_text())
total, sleep = cfg.get("max_frames") or 5, (cfg.get("start_frame") or 0) / 1000
first = 1
if "--resume" in sys.argv:
    for line in (run / "job.stdout.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event.get("event") == "progress":
            first = event["frame"] + 1
    (run / "resumed_from.txt").write_text(str(first))
stop = []
if "stubborn" not in str(cfg.get("input")):
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
else:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
(run / "child.pid").write_text(str(child.pid))
meta = {"status": "running", "error": None, "frames": {"total": total, "done": 0}, "outputs": {}, "previews": []}
(run / "metadata.json").write_text(json.dumps(meta))
print(json.dumps({"event": "start", "run_dir": str(run)}), flush=True)
for n in range(first, total + 1):
    if stop:
        meta.update(status="cancelled")
        (run / "metadata.json").write_text(json.dumps(meta))
        print(json.dumps({"event": "done", "status": "cancelled", "run_dir": str(run)}), flush=True)
        child.kill()
        sys.exit(130)
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
