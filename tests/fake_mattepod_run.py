"""FAKE of ``python -m mattepod run`` (the CLI contract in HELPERS.md), for batch tests until the real
CLI lands. It really probes and encodes with ffmpeg (a grey "alpha" video), writes metadata.json the
way the contract says, prints --progress-json lines, and honours --run-dir / --resume. It does no matting.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

p = argparse.ArgumentParser()
p.add_argument("config", nargs="?")
p.add_argument("--input", required=True)
for flag in ("--mask", "--points", "--box", "--prompt-frame", "--outputs", "--run-dir", "--resume",
             "--weights-dir", "--start-frame", "--max-frames", "--scale", "--output-dir"):
    p.add_argument(flag)
p.add_argument("--set", action="append")
p.add_argument("--auto-person", action="store_true")
p.add_argument("--progress-json", action="store_true")
a = p.parse_args()
run_dir = Path(a.resume or a.run_dir)
run_dir.mkdir(parents=True, exist_ok=True)
stem = Path(a.input).stem
meta = {"status": "running", "error": None, "input": {}, "frames": {"total": 0, "done": 0}, "outputs": {},
        "previews": [], "timings": {}, "resumed": bool(a.resume), "argv": sys.argv[1:]}


def emit(event):
    print(json.dumps(event), flush=True)


def save():
    (run_dir / "metadata.json").write_text(json.dumps(meta))


emit({"event": "start", "run_dir": str(run_dir)})
save()
probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets", "-show_entries",
                        "stream=nb_read_packets", "-of", "csv=p=0", a.input], capture_output=True, text=True)
if probe.returncode or not probe.stdout.strip().isdigit():
    msg = f"{a.input} is not a readable video -> check the file (ffprobe: {probe.stderr.strip()[:80]})"
    meta.update(status="failed", error={"type": "InvalidMediaError", "message": msg, "exit_code": 4})
    save()
    print(msg, file=sys.stderr)
    emit({"event": "done", "status": "failed", "run_dir": str(run_dir), "outputs": {}, "error": meta["error"]})
    sys.exit(4)
total = int(probe.stdout.strip())
t0 = time.monotonic()
for n in range(1, total + 1):
    emit({"event": "progress", "stage": "matting", "frame": n, "total": total, "fps": 100.0, "eta": 0})
out = f"{stem}_alpha.mp4"
subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", a.input, "-vf", "format=gray", "-c:v", "libx264",
                str(run_dir / out)], check=True)
meta.update(status="completed", frames={"total": total, "done": total}, outputs={"alpha": out},
            timings={"matting": max(time.monotonic() - t0, 1e-3)})
save()
emit({"event": "done", "status": "completed", "run_dir": str(run_dir), "outputs": meta["outputs"], "error": None})
