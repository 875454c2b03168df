"""Runs never lie (issue 11): each numbered case of the issue, reproduced, then resumed to the same bytes.

1. kill -9 anywhere in the join resumes (all output kinds), no tmp files left;
2. resume re-checks segments (deleted / truncated video segment, deleted PNG) and the join counts frames;
3. one writer per run folder (exit 9 "in use by PID N"), two resumes at once give one complete run;
4. a real full disk (tmpfs) -> exit 8, one line, status failed, run.log written; resumable after freeing space;
5. bad inputs end in one line and their exit code (read-only folder, file as folder, non-UTF-8 config, damaged
   manifest variants, missing state, PNG bomb mask, FIFO / device input, truncated MKV, PNG named .mp4);
SIGTERM stops at a frame boundary: status cancelled, exit 130, resumable to the same bytes.
The kill loop (random kills until done, then compare) is marked slow.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mattepod import config, pipeline
from mattepod.engine import MaskFollowEngine
from mattepod.errors import CancelledError, MattePodError
from mattepod.runlock import RunLock
from tests.conftest import ROOT, make_mask, make_video, run_cli

FRAMES, SEG = 48, 10
ALL = "alpha,green,prores,png"


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    return make_video(d / "clip.mp4", frames=FRAMES), make_mask(d / "mask.png", 96, 64)


def cli_args(media, outputs: str = ALL) -> list[str]:
    clip, mask = media
    return ["run", "--input", str(clip), "--mask", str(mask), "--engine", "mask", "--outputs", outputs,
            "--set", f"recovery.segment_frames={SEG}", "-q"]


def digest(run_dir: Path) -> dict[str, str]:
    """sha256 of every output file (PNG folders file by file): the bytes a user gets."""
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["status"] == "completed", meta.get("error")
    out = {}
    for name in meta["outputs"].values():
        p = run_dir / name
        for f in sorted(p.iterdir()) if p.is_dir() else [p]:
            out[str(f.relative_to(run_dir))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def whole(media, tmp_path_factory):
    """The reference: one uninterrupted run per output set."""
    cache: dict[str, dict[str, str]] = {}

    def get(outputs: str = ALL) -> dict[str, str]:
        if outputs not in cache:
            d = tmp_path_factory.mktemp("whole") / "run"
            run_cli(*cli_args(media, outputs), "--run-dir", str(d), check=True, timeout=600)
            cache[outputs] = digest(d)
        return cache[outputs]
    return get


def assert_clean(run_dir: Path) -> None:
    """A completed run holds its outputs and records only: no segments, spill, state, partials, concat lists."""
    left = [p.name for p in run_dir.iterdir() if p.name in ("segments", "spill", "state") or ".partial" in p.name
            or p.suffix == ".txt" or p.name == ".reserve"]
    assert not left, left


def one_line_error(res: subprocess.CompletedProcess, code: int) -> str:
    assert res.returncode == code, (res.returncode, res.stderr[-3000:])
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and " -> " in last, last
    return last


class FailAt:
    """Engine factory whose engine raises after ``n`` frames (a device fault): leaves a resumable run."""

    class Fault(RuntimeError):
        pass

    def __init__(self, n: int | None):
        self.n = n

    def __call__(self, cfg):
        eng, n, seen = MaskFollowEngine(), self.n, [0]
        start, step = eng.start, eng.step

        def count(fn):
            def wrapped(*a, **kw):
                seen[0] += 1
                if n is not None and seen[0] > n:
                    raise FailAt.Fault("simulated device fault")
                return fn(*a, **kw)
            return wrapped
        eng.start, eng.step = count(start), count(step)
        return eng


def interrupted(media, tmp_path: Path, outputs: str = ALL, at: int = 35) -> Path:
    """An unfinished run (failed after ``at`` frames: 3 segments of 10 committed), in-process."""
    clip, mask = media
    cfg = config.load(None, {"input": str(clip), "output_dir": str(tmp_path / "o"), "prompt.mask": str(mask),
                             "engine.name": "mask", "recovery.segment_frames": SEG,
                             "outputs.formats": outputs.split(",")})
    with pytest.raises(FailAt.Fault):
        pipeline.run(cfg, pipeline.RunOptions(progress_bar=False, engine_factory=FailAt(at)))
    (run_dir,) = (tmp_path / "o").iterdir()
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["frames_done"] == 30 and json.loads((run_dir / "metadata.json").read_text())["status"] == "failed"
    return run_dir


def resume_in_process(run_dir: Path) -> pipeline.RunResult:
    return pipeline.run(config.Config(), pipeline.RunOptions(resume=run_dir, progress_bar=False))


# ---- 1. kill -9 in the join ----------------------------------------------------------------------------

@pytest.mark.parametrize("point", ["publish:green:joined", "publish:png:done", "cleanup:before"])
def test_kill_in_the_join_resumes_to_the_same_bytes(media, whole, tmp_path, point):
    d = tmp_path / "run"
    killed = run_cli(*cli_args(media), "--run-dir", str(d), env={"MATTEPOD_TEST_KILL_AT_STEP": point}, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert json.loads((d / "metadata.json").read_text())["status"] == "running"
    res = run_cli("run", "--resume", str(d), "-q", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert digest(d) == whole()
    assert_clean(d)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["publish:alpha:before", "publish:alpha:joined", "publish:alpha:done",
                                   "publish:prores:joined", "publish:png:before", "cleanup:done"])
def test_kill_in_the_join_more_points(media, whole, tmp_path, point):
    test_kill_in_the_join_resumes_to_the_same_bytes(media, whole, tmp_path, point)


def test_kill_when_joining_is_printed_resumes(media, whole, tmp_path):
    """The issue's repro: SIGKILL to the process group as soon as the run says "joining"."""
    d = tmp_path / "j1"
    args = [a for a in cli_args(media) if a != "-q"]
    proc = subprocess.Popen([sys.executable, "-m", "mattepod", *args, "--run-dir", str(d), "--progress-json"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if '"joining"' in line:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -9
    res = run_cli("run", "--resume", str(d), "-q", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert digest(d) == whole()
    assert_clean(d)


# ---- 2. verified segments -------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["delete_video_segment", "truncate_video_segment", "delete_png",
                                    "replace_png"])
def test_resume_redoes_bad_segments(media, whole, tmp_path, damage):
    d = interrupted(media, tmp_path, "alpha,green,png")
    if damage == "delete_video_segment":
        (d / "segments" / "green" / "000001.mp4").unlink()
    elif damage == "truncate_video_segment":
        seg = d / "segments" / "alpha" / "000002.mp4"
        seg.write_bytes(seg.read_bytes()[: seg.stat().st_size // 2])
    elif damage == "delete_png":
        (d / "clip_rgba_png.partial" / "000005.png").unlink()
    else:
        png = d / "clip_rgba_png.partial" / "000025.png"
        png.write_bytes((d / "clip_rgba_png.partial" / "000024.png").read_bytes())
    res = resume_in_process(d)
    assert res.status == "completed"
    assert digest(d) == whole("alpha,green,png")
    assert_clean(d)


def test_a_segment_lost_during_the_join_is_redone(media, whole, tmp_path):
    d = tmp_path / "run"
    assert run_cli(*cli_args(media, "alpha,green,png"), "--run-dir", str(d),
                   env={"MATTEPOD_TEST_KILL_AT_STEP": "publish:png:done"}, timeout=600).returncode == -9
    (d / "segments" / "green" / "000003.mp4").unlink()
    assert run_cli("run", "--resume", str(d), "-q", timeout=600).returncode == 0
    assert digest(d) == whole("alpha,green,png")


def _unrecorded_short_segment_run(media, tmp_path: Path) -> Path:
    d = interrupted(media, tmp_path, "alpha,png")
    m = json.loads((d / "manifest.json").read_text())
    m["segments"] = []  # as written before segments were recorded
    (d / "manifest.json").write_text(json.dumps(m))
    seg = d / "segments" / "alpha"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(seg / "000000.mp4"), "-frames:v", "4", "-c", "copy",
                    str(seg / "short.mp4")], check=True)
    os.replace(seg / "short.mp4", seg / "000000.mp4")
    return d


def test_join_refuses_a_short_output(media, tmp_path):
    d = _unrecorded_short_segment_run(media, tmp_path)
    with pytest.raises(MattePodError) as err:
        resume_in_process(d)
    import re

    got = re.search(r"joined clip_alpha.mp4 has (\d+) frames, 48 went in", str(err.value))
    assert err.value.exit_code == 10 and got and int(got.group(1)) < 48, str(err.value)
    meta = json.loads((d / "metadata.json").read_text())
    assert meta["status"] == "failed" and not meta.get("outputs") and not (d / "clip_alpha.mp4").exists()


# ---- 3. one writer ----------------------------------------------------------------------------------------

def test_a_run_in_use_is_refused_with_its_pid(media, tmp_path):
    d = interrupted(media, tmp_path, "alpha")
    lock = RunLock.acquire(d)
    try:
        res = run_cli("run", "--resume", str(d), "-q", timeout=300)
        last = one_line_error(res, 9)
        assert f"in use by PID {os.getpid()}" in last
        res = run_cli(*cli_args(media, "alpha"), "--run-dir", str(d), timeout=300)
        assert f"in use by PID {os.getpid()}" in one_line_error(res, 9)
    finally:
        lock.release()


def test_two_resumes_at_once_make_one_complete_run(media, whole, tmp_path):
    d = interrupted(media, tmp_path, "alpha,green,png")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "mattepod", "run", "--resume", str(d), "-q"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 9], (codes, [o[1][-1500:] for o in outs])
    loser = outs[[p.returncode for p in procs].index(9)][1]
    assert "in use by PID" in loser or "already completed" in loser
    assert digest(d) == whole("alpha,green,png")


# ---- 4. a real full disk ------------------------------------------------------------------------------

def _mount_tmpfs(path: Path, opts: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True).returncode == 0


def test_full_disk_fails_cleanly_and_resumes(media, whole, tmp_path):
    mnt = tmp_path / "small"
    if not _mount_tmpfs(mnt, "size=1m"):
        pytest.skip("cannot mount a tmpfs here (needs root); tests/test_disk_full.py covers /dev/full")
    try:
        d = mnt / "run"
        res = run_cli(*cli_args(media), "--run-dir", str(d), timeout=600)
        last = one_line_error(res, 8)
        assert "disk full" in last and "--resume" in last
        meta = json.loads((d / "metadata.json").read_text())
        assert meta["status"] == "failed" and meta["error"]["exit_code"] == 8
        assert "disk full" in (d / "run.log").read_text()
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        res = run_cli("run", "--resume", str(d), "-q", timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        assert digest(d) == whole()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# ---- 5. bad inputs: one line, its exit code --------------------------------------------------------------

BAD = ["read_only_output", "output_dir_is_a_file", "run_dir_is_a_file", "config_not_utf8", "mask_png_bomb",
       "fifo_input", "device_input", "resume_a_file"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line(media, tmp_path, case):
    clip, mask = media
    args = ["run", "--input", str(clip), "--mask", str(mask), "--engine", "mask", "--outputs", "alpha", "-q",
            "-o", str(tmp_path / "o")]
    code = 11
    if case == "read_only_output":
        ro = tmp_path / "ro"
        if not _mount_tmpfs(ro, "ro,size=1m"):
            pytest.skip("cannot mount a read-only tmpfs here")
        args[-1] = str(ro)
    elif case == "output_dir_is_a_file":
        (tmp_path / "o").write_text("x")
    elif case == "run_dir_is_a_file":
        (tmp_path / "r").write_text("x")
        args += ["--run-dir", str(tmp_path / "r")]
    elif case == "config_not_utf8":
        (tmp_path / "c.yaml").write_bytes(b"engine:\n  name: mask\n# \xff\xfe caf\xe9\n")
        args.insert(1, str(tmp_path / "c.yaml"))
        code = 2
    elif case == "mask_png_bomb":
        args[4] = str(_png_bomb(tmp_path / "bomb.png"))
        code = 5
    elif case == "fifo_input":
        os.mkfifo(tmp_path / "in.mp4")
        args[2] = str(tmp_path / "in.mp4")
        code = 4
    elif case == "device_input":
        args[2] = "/dev/zero"
        code = 4
    elif case == "resume_a_file":
        (tmp_path / "r").write_text("x")
        args = ["run", "--resume", str(tmp_path / "r")]
        code = 9
    try:
        res = run_cli(*args, timeout=120)
        one_line_error(res, code)
    finally:
        if case == "read_only_output":
            subprocess.run(["umount", "-l", str(tmp_path / "ro")], capture_output=True)


def _png_bomb(path: Path) -> Path:
    """A 24000x16000 1-bit PNG (the frame's aspect) of ~47 KB: 384 Mpixels once decoded."""
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    w, h = 24000, 16000
    z = zlib.compressobj(9)
    row = b"\x00" * (1 + w // 8)
    data = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("case", ["truncated_mkv", "png_named_mp4"])
def test_doubtful_inputs_are_warned(tmp_path, case):
    if case == "truncated_mkv":
        full = make_video(tmp_path / "full.mkv", frames=48, audio=False)
        path = tmp_path / "cut.mkv"
        path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
        want = "looks truncated"
    else:
        path = tmp_path / "still.mp4"
        make_mask(tmp_path / "m.png", 96, 64)
        shutil.copy(tmp_path / "m.png", path)
        want = "image named .mp4"
    res = run_cli("run", "--input", str(path), "--mask", str(tmp_path / "nomask.png"), "--dry-run", timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert want in res.stderr and want in json.dumps(json.loads(res.stdout)["plan"]["input"]["warnings"])


@pytest.mark.parametrize("variant", ["not_utf8", "missing_keys", "json_list", "frames_beyond_end", "state_missing",
                                     "state_garbage"])
def test_damaged_records_resume_to_the_same_bytes(media, whole, tmp_path, variant, caplog):
    d = interrupted(media, tmp_path, "alpha,green,png")
    man = d / "manifest.json"
    m = json.loads(man.read_text())
    if variant == "not_utf8":
        man.write_bytes(b'{"segment_frames": 10, "total_frames": 48, "x": "\xff"}')
    elif variant == "missing_keys":
        man.write_text(json.dumps({"segments_done": 3}))
    elif variant == "json_list":
        man.write_text("[1, 2, 3]")
    elif variant == "frames_beyond_end":
        m.update(frames_done=60, segments_done=6)
        man.write_text(json.dumps(m))
    elif variant == "state_missing":
        (d / m["state_file"]).unlink()
    else:
        (d / m["state_file"]).write_bytes(b"not a torch file")
    res = resume_in_process(d)
    assert res.status == "completed"
    assert digest(d) == whole("alpha,green,png")
    assert any(w in caplog.text for w in ("damaged", "replaying"))


# ---- SIGTERM -----------------------------------------------------------------------------------------------

def test_sigterm_stops_at_a_frame_boundary_and_resumes(tmp_path):
    clip = make_video(tmp_path / "long.mp4", frames=600, audio=False)
    mask = make_mask(tmp_path / "mask.png", 96, 64)
    args = ["run", "--input", str(clip), "--mask", str(mask), "--engine", "mask", "--outputs", "alpha,png",
            "--set", "recovery.segment_frames=50"]
    d = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "mattepod", *args, "--run-dir", str(d), "--progress-json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        ev = json.loads(line)
        if ev.get("stage") == "matting" and ev.get("frame", 0) >= 60:
            break
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)  # what the UI's Cancel does: the CLI and its ffmpeg children
    rest, err = proc.communicate(timeout=60)
    latency = time.monotonic() - t0
    print(f"SIGTERM -> exit in {latency:.2f} s")
    assert proc.returncode == CancelledError.exit_code, err[-3000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: run cancelled")
    done = json.loads(rest.strip().splitlines()[-1])
    assert done["event"] == "done" and done["status"] == "cancelled"
    meta = json.loads((d / "metadata.json").read_text())
    assert meta["status"] == "cancelled" and meta["error"]["exit_code"] == 130
    m = json.loads((d / "manifest.json").read_text())
    assert 50 <= m["frames_done"] < 600  # stopped in the middle, the committed part kept
    assert run_cli("run", "--resume", str(d), "-q", timeout=600).returncode == 0
    ref = tmp_path / "ref"
    run_cli(*args, "-q", "--run-dir", str(ref), check=True, timeout=600)
    assert digest(d) == digest(ref)


# ---- the kill loop -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_random_kill_loop(media, whole, tmp_path):
    """Kill -9 the run at random instants (a third of them right after "joining") until it completes,
    again and again: every resume continues, every finished run has the reference bytes."""
    rng = random.Random(11)
    want, kills, survived, runs = whole(), 0, 0, 0
    args = [a for a in cli_args(media) if a != "-q"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    while kills < 30:
        d = tmp_path / f"run{runs}"
        runs += 1
        cmd = [*args, "--run-dir", str(d), "--progress-json"]
        for _attempt in range(40):
            proc = subprocess.Popen([sys.executable, "-m", "mattepod", *cmd], stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=env, start_new_session=True)
            in_join = rng.random() < 1 / 3
            deadline = time.monotonic() + rng.uniform(0.5, 12.0)
            killed = False
            os.set_blocking(proc.stdout.fileno(), False)
            buf = ""
            while proc.poll() is None:
                buf += proc.stdout.read() or ""
                if (in_join and '"joining"' in buf) or (not in_join and time.monotonic() > deadline):
                    time.sleep(rng.uniform(0, 0.4) if in_join else 0)
                    os.killpg(proc.pid, signal.SIGKILL)
                    killed = True
                    break
                time.sleep(0.01)
            proc.wait(timeout=60)
            if killed and proc.returncode == -9:
                kills += 1
            elif proc.returncode != 0:
                raise AssertionError(f"attempt ended with {proc.returncode}: {buf[-2000:]}")
            if (d / "metadata.json").is_file() and json.loads((d / "metadata.json").read_text()).get("status") == "completed":
                break
            if (d / "metadata.json").is_file():
                cmd = ["run", "--resume", str(d), "--progress-json"]
        assert digest(d) == want
        assert_clean(d)
        survived = kills
    print(f"kills survived / kills: {survived} / {kills} over {runs} runs")
    assert survived == kills >= 30
