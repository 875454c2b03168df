"""scripts/infer_video.sh and infer_vr180.sh: shellcheck-clean, --help, and end to end on a folder of
generated clips with one broken file (the batch finishes, reports it; a re-run skips the done ones)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.batch_media import make_broken, make_clip, make_mask

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = [ROOT / "scripts" / "infer_video.sh", ROOT / "scripts" / "infer_vr180.sh"]


def shellcheck() -> str | None:
    for cand in (shutil.which("shellcheck"), str(Path(sys.executable).parent / "shellcheck")):
        if cand and Path(cand).is_file():
            return cand
    return None


def env() -> dict[str, str]:
    e = dict(os.environ, MATTEPOD_PYTHON=sys.executable)
    for key in ("OUTPUT_DIR", "MATTEPOD_RUN_CMD"):
        e.pop(key, None)
    return e


def sh(*argv: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", *argv], capture_output=True, text=True, env=env(), timeout=timeout)


@pytest.mark.skipif(shellcheck() is None, reason="shellcheck not installed")
def test_shellcheck_clean() -> None:
    res = subprocess.run([shellcheck(), "-x", *map(str, SCRIPTS)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help_and_bad_flags(script: Path) -> None:
    res = sh(str(script), "--help")
    assert res.returncode == 0 and "--input" in res.stdout and "--auto-person" in res.stdout
    res = sh(str(script), "--bogus")
    assert res.returncode == 2 and "unknown flag: --bogus" in res.stderr
    res = sh(str(script), "--mask")
    assert res.returncode == 2 and "--mask needs a value" in res.stderr


def test_vr180_help_names_its_flags() -> None:
    out = sh(str(SCRIPTS[1]), "--help").stdout
    assert "--layout" in out and "--packed" in out and "--outputs" in out


def test_infer_video_folder_end_to_end(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    make_clip(videos / "one.mp4")
    make_clip(videos / "two.mp4", frames=5)
    make_broken(videos / "zz_broken.mp4")
    mask = make_mask(tmp_path / "mask.png")
    out = tmp_path / "out"
    argv = [str(SCRIPTS[0]), "-i", str(videos), "-m", str(mask), "-e", "mask", "-o", "alpha", "-d", str(out)]
    first = sh(*argv)
    assert first.returncode == 1, first.stderr
    assert "zz_broken.mp4" in first.stderr and "FAILED" in first.stderr
    table = first.stdout.splitlines()
    assert table[0].split() == ["video", "status", "frames", "fps", "outputs"]
    assert "2 completed, 0 skipped (done before), 1 failed" in first.stdout
    for name in ("one", "two"):
        meta = json.loads((out / name / "metadata.json").read_text())
        assert meta["status"] == "completed"
        assert all((out / name / f).is_file() for f in meta["outputs"].values())
    mtime = (out / "one" / "metadata.json").stat().st_mtime_ns

    again = sh(*argv)
    assert again.returncode == 1
    assert "0 completed, 2 skipped (done before), 1 failed" in again.stdout
    assert (out / "one" / "metadata.json").stat().st_mtime_ns == mtime  # untouched


def test_infer_vr180_sets_stereo_mode(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "vr_sbs.mp4", frames=4, size=(128, 48))
    out = tmp_path / "out"
    res = sh(str(SCRIPTS[1]), "-i", str(clip), "-a", "--layout", "sbs", "-e", "mask", "--dry-run", "-d", str(out))
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\t")[1] == str(out / "vr_sbs")
    res = sh(str(SCRIPTS[1]), "-i", str(clip), "-m", str(make_mask(tmp_path / "m.png", (128, 48))),
             "--layout", "sbs", "-e", "mask", "-o", "alpha", "-d", str(out))
    assert res.returncode == 0, res.stderr
    run = out / "vr_sbs"
    stereo = yaml.safe_load((run / "config.yaml").read_text())["stereo"]  # the effective config of the run
    assert stereo["mode"] == "vr180" and stereo["layout"] == "sbs"
    bad = sh(str(SCRIPTS[1]), "-i", str(clip), "-a", "--layout", "diagonal", "--dry-run")
    assert bad.returncode == 2 and "stereo.layout" in bad.stderr


def test_sigterm_to_the_batch_cancels_the_running_video_and_rerun_resumes(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    make_clip(videos / "long1.mp4", frames=400)
    make_clip(videos / "long2.mp4", frames=10)
    mask = make_mask(tmp_path / "mask.png")
    out = tmp_path / "out"
    argv = ["bash", str(SCRIPTS[0]), "-i", str(videos), "-m", str(mask), "-e", "mask", "-o", "alpha", "-d", str(out)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    for line in proc.stderr:  # the script execs python, so proc.pid is the batch itself
        if "long1.mp4: matting" in line:  # the run is under way (its folder exists)
            proc.send_signal(signal.SIGTERM)
            break
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout
    assert "long1.mp4" in stdout and "cancelled" in stdout and "long2.mp4" not in stdout
    assert json.loads((out / "long1" / "metadata.json").read_text())["status"] == "cancelled"
    again = sh(*argv[1:])
    assert again.returncode == 0, again.stderr
    assert "completed (resumed)" in again.stdout and "400/400" in again.stdout


def test_infer_video_list_file_with_masks_and_a_missing_entry(tmp_path: Path) -> None:
    make_clip(tmp_path / "shots" / "s1.mp4", frames=4)
    make_clip(tmp_path / "shots" / "s2.mp4", frames=4)
    make_mask(tmp_path / "shots" / "s1_mask.png")
    lst = tmp_path / "shots.txt"
    lst.write_text("# tonight's shots\nshots/s1.mp4\tshots/s1_mask.png\nshots/gone.mp4\nshots/s2.mp4\n")
    res = sh(str(SCRIPTS[0]), "-i", str(lst), "-e", "mask", "-o", "alpha", "-d", str(tmp_path / "out"))
    assert res.returncode == 1, res.stderr
    rows = {ln.split()[0]: ln for ln in res.stdout.splitlines() if ln.startswith(("s1.mp4", "s2.mp4", "gone.mp4"))}
    assert "completed" in rows["s1.mp4"] and "4/4" in rows["s1.mp4"]
    assert "failed" in rows["gone.mp4"] and "not found" in rows["gone.mp4"]
    assert "failed" in rows["s2.mp4"] and "no prompt for s2.mp4" in rows["s2.mp4"]
