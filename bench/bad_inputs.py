"""Bad inputs a new user meets, each through the real CLI: handled = a clear ending (one ``error: ... -> fix``
line and the expected exit code, or a warning line for inputs that still work), no traceback, no hang.
Prints one JSON line: {"tried": N, "handled": M, "not_handled": [...]}.

    python bench/bad_inputs.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, cwd: Path, timeout: int = 120) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        res = subprocess.run([sys.executable, "-m", "mattepod", *args], capture_output=True, text=True, cwd=cwd,
                             env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -999, "hang"
    return res.returncode, res.stderr


def video(path: Path, frames: int = 24, extra: list[str] | None = None, audio: bool = False) -> Path:
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=24"]
    if audio:
        cmd += ["-f", "lavfi", "-i", "sine=duration=1", "-shortest"]
    subprocess.run([*cmd, "-frames:v", str(frames), *(extra or ["-c:v", "libx264", "-pix_fmt", "yuv420p"]), str(path)],
                   check=True)
    return path


def png_bomb(path: Path) -> Path:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    w, h = 24000, 16000
    z = zlib.compressobj(9)
    body = b"".join(z.compress(b"\x00" * (1 + w // 8)) for _ in range(h)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", help="work in this folder (kept) instead of a temp folder")
    a = ap.parse_args()
    d = Path(a.keep or tempfile.mkdtemp(prefix="mattepod-bad-"))
    d.mkdir(parents=True, exist_ok=True)
    clip = video(d / "clip.mp4", audio=True)
    m = np.zeros((64, 96), np.uint8)
    m[16:48, 24:72] = 255
    cv2.imwrite(str(d / "mask.png"), m)
    # inputs
    (d / "empty.mp4").write_bytes(b"")
    (d / "zeros.mp4").write_bytes(b"\0" * 4096)
    (d / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 8192, np.uint8).tobytes())
    (d / "text.mp4").write_text("hello\n")
    os.mkfifo(d / "fifo.mp4")
    (d / "noimages").mkdir()
    (d / "broken_seq").mkdir()
    cv2.imwrite(str(d / "broken_seq" / "0001.png"), np.zeros((64, 96, 3), np.uint8))
    (d / "broken_seq" / "0002.png").write_bytes(b"not a png")
    full = video(d / "full.mp4", frames=96)
    (d / "cut.mp4").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "sine=duration=1", str(d / "audio.m4a")],
                   check=True)
    mkv = video(d / "full.mkv", frames=96)
    (d / "cut.mkv").write_bytes(mkv.read_bytes()[: mkv.stat().st_size // 2])
    shutil.copy(d / "mask.png", d / "still.mp4")
    # masks
    cv2.imwrite(str(d / "empty_mask.png"), np.zeros((64, 96), np.uint8))
    cv2.imwrite(str(d / "square.png"), np.full((64, 64), 255, np.uint8))
    (d / "notimage.png").write_text("nope")
    png_bomb(d / "bomb.png")
    # configs
    (d / "latin1.yaml").write_bytes(b"engine:\n  name: mask\n# caf\xe9\n")
    (d / "bad.yaml").write_text("engine: [unclosed\n")
    (d / "list.yaml").write_text("- a\n- b\n")
    (d / "unknown.yaml").write_text("engine:\n  nmae: mask\n")
    (d / "afile").write_text("x")
    # run folders
    base = ["run", "--input", str(clip), "--mask", str(d / "mask.png"), "--engine", "mask", "--outputs", "alpha", "-q"]
    done = d / "done_run"
    cli(*base, "--run-dir", str(done), cwd=d)
    cut = d / "cut_run"
    cli(*base, "--input", str(d / "cut.mp4"), "--run-dir", str(cut), cwd=d)
    badcfg = d / "badcfg_run"
    shutil.copytree(cut, badcfg)
    (badcfg / "config.yaml").write_bytes(b"\xff\xfe")
    ro = d / "ro"
    ro.mkdir()
    ro_ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)],
                           capture_output=True).returncode == 0

    def run_with(**kw: str) -> list[str]:
        args = list(base)
        for key, val in kw.items():
            flag = "--" + key.replace("_", "-")
            if flag in args:
                args[args.index(flag) + 1] = val
            else:
                args += [flag, val]
        return args + (["-o", str(d / "o")] if "output_dir" not in kw else [])

    cases: list[tuple[str, list[str], set[int] | str]] = [
        ("input missing", run_with(input=str(d / "nope.mp4")), {3}),
        ("input empty file", run_with(input=str(d / "empty.mp4")), {4}),
        ("input zeros", run_with(input=str(d / "zeros.mp4")), {4}),
        ("input random bytes", run_with(input=str(d / "random.mp4")), {4}),
        ("input text file", run_with(input=str(d / "text.mp4")), {4}),
        ("input FIFO", run_with(input=str(d / "fifo.mp4")), {4}),
        ("input /dev/zero", run_with(input="/dev/zero"), {4}),
        ("input /dev/null", run_with(input="/dev/null"), {4}),
        ("input folder without images", run_with(input=str(d / "noimages")), {4}),
        ("input sequence with a broken image", run_with(input=str(d / "broken_seq")), {4}),
        ("input truncated mp4", run_with(input=str(d / "cut.mp4")), {4}),
        ("input audio only", run_with(input=str(d / "audio.m4a")), {4}),
        ("input truncated mkv (warned)", ["run", "--input", str(d / "cut.mkv"), "--dry-run"], "looks truncated"),
        ("input PNG named .mp4 (warned)", ["run", "--input", str(d / "still.mp4"), "--dry-run"], "image named .mp4"),
        ("mask missing", run_with(mask=str(d / "nomask.png")), {3}),
        ("mask empty", run_with(mask=str(d / "empty_mask.png")), {5}),
        ("mask wrong aspect", run_with(mask=str(d / "square.png")), {5}),
        ("mask not an image", run_with(mask=str(d / "notimage.png")), {5}),
        ("mask PNG bomb", run_with(mask=str(d / "bomb.png")), {5}),
        ("mask is a folder", run_with(mask=str(d / "noimages")), {3, 5}),
        ("config not UTF-8", ["run", str(d / "latin1.yaml"), *run_with()[1:]], {2}),
        ("config bad YAML", ["run", str(d / "bad.yaml"), *run_with()[1:]], {2}),
        ("config a list", ["run", str(d / "list.yaml"), *run_with()[1:]], {2}),
        ("config unknown key", ["run", str(d / "unknown.yaml"), *run_with()[1:]], {2}),
        ("config file missing", ["run", str(d / "none.yaml"), *run_with()[1:]], {2}),
        ("--set bad value", [*run_with(), "--set", "recovery.segment_frames=-3"], {2}),
        ("--set unknown key", [*run_with(), "--set", "nope.key=1"], {2}),
        ("--points malformed", [*run_with(), "--points", "1,2,3,4"], {2}),
        ("--box malformed", [*run_with(), "--box", "1,2"], {2}),
        ("prompt frame beyond end", [*run_with(), "--prompt-frame", "999"], {5}),
        ("start frame beyond end", [*run_with(), "--start-frame", "999"], {4}),
        ("scale out of range", [*run_with(), "--scale", "3"], {2}),
        ("output dir is a file", run_with(output_dir=str(d / "afile")), {11}),
        ("--run-dir is a file", [*run_with(), "--run-dir", str(d / "afile")], {11}),
        ("--run-dir holds a completed run", [*run_with(), "--run-dir", str(done)], {9}),
        ("--run-dir holds an unfinished run", [*run_with(), "--run-dir", str(cut)], {9}),
        ("resume a file", ["run", "--resume", str(d / "afile")], {9}),
        ("resume a missing folder", ["run", "--resume", str(d / "nothere")], {9}),
        ("resume an empty folder", ["run", "--resume", str(d / "noimages")], {9}),
        ("resume a completed run", ["run", "--resume", str(done)], {9}),
        ("resume with a non-UTF-8 config.yaml", ["run", "--resume", str(badcfg)], {9}),
        ("resume with extra flags", ["run", "--resume", str(cut), "--input", str(clip)], {2}),
    ]
    if ro_ok:
        cases.append(("output folder read-only", run_with(output_dir=str(ro)), {11}))
    results = []
    for name, args, want in cases:
        code, err = cli(*args, cwd=d)
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        if isinstance(want, str):
            ok = code == 0 and want in err and "Traceback" not in err
        else:
            last = lines[-1] if lines else ""
            ok = code in want and "Traceback" not in err and last.startswith("error: ") and " -> " in last
        results.append({"case": name, "ok": ok, "exit": code, "last": lines[-1][:160] if lines else ""})
    if ro_ok:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)
    bad = [r for r in results if not r["ok"]]
    print(json.dumps({"tried": len(results), "handled": len(results) - len(bad), "not_handled": bad}))
    if not a.keep:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
