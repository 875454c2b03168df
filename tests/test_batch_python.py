"""mattepod.batch: input expansion, run folder names, skip/resume/fail handling and the summary.

Every run goes through the real ``python -m mattepod run`` with ``engine.name: mask`` (no weights).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mattepod import batch
from mattepod.errors import InputNotFoundError
from tests.batch_media import make_broken, make_clip, make_mask

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def videos(tmp_path: Path) -> Path:
    folder = tmp_path / "videos"
    make_clip(folder / "a.mp4")
    make_clip(folder / "b.mov", frames=6)
    make_broken(folder / "broken.mp4")
    (folder / "notes.txt").write_text("not a video and not in the folder listing\n")
    make_mask(tmp_path / "mask.png")
    return folder


def test_expand_file_folder_and_list(tmp_path: Path, videos: Path) -> None:
    got = [p.name for p, _ in batch.expand_inputs([str(videos)])]
    assert got == ["a.mp4", "b.mov", "broken.mp4"]
    lst = tmp_path / "list.txt"
    lst.write_text("# my videos\nvideos/b.mov\tmask.png\n\nvideos/a.mp4\nvideos/missing.mp4\nvideos/b.mov\n")
    entries = batch.expand_inputs([str(lst), str(videos / "a.mp4")])
    assert [(p.name, m.name if m else None) for p, m in entries] == [
        ("b.mov", "mask.png"), ("a.mp4", None), ("missing.mp4", None)]
    assert entries[0][0] == tmp_path / "videos" / "b.mov"  # relative to the list file
    with pytest.raises(InputNotFoundError, match="nothere"):
        batch.expand_inputs([str(tmp_path / "nothere")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputNotFoundError, match="no videos"):
        batch.expand_inputs([str(empty)])


def test_run_dirs_are_deterministic_and_unique(tmp_path: Path) -> None:
    vids = [Path("/x/clip.mp4"), Path("/y/clip.mov"), Path("/x/other.mp4")]
    first = batch.run_dirs(vids, tmp_path)
    assert first == batch.run_dirs(vids, tmp_path)
    assert len(set(first)) == 3 and first[2] == tmp_path / "other"
    assert first[0].name.startswith("clip-") and first[0] != first[1]


def test_mask_folder_per_video(tmp_path: Path) -> None:
    make_mask(tmp_path / "masks" / "a.png")
    assert batch.mask_for(Path("v/a.mp4"), tmp_path / "masks") == (tmp_path / "masks" / "a.png", None)
    mask, problem = batch.mask_for(Path("v/b.mp4"), tmp_path / "masks")
    assert mask is None and "b.png" in problem


def argv_for_cli(video: Path, mask: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "mattepod", "run","--input", str(video), "--mask", str(mask), "--run-dir", str(run_dir), "--engine", "mask",
                  "--outputs", "alpha", "--set", "recovery.segment_frames=20", "--progress-json", "--quiet"]


def interrupt(argv: list[str]) -> None:
    """Start a real run and SIGINT it as soon as it reports its first frames (a user's Ctrl-C)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    for line in proc.stdout:
        if '"event": "start"' in line or '"start"' in line:
            proc.send_signal(signal.SIGINT)
            break
    proc.communicate(timeout=60)


def test_batch_reports_failure_goes_on_and_rerun_skips(tmp_path: Path, videos: Path, monkeypatch,
                                                       capsys) -> None:
    monkeypatch.delenv("MATTEPOD_RUN_CMD", raising=False)
    out = tmp_path / "out"
    argv = ["--input", str(videos), "--mask", str(tmp_path / "mask.png"), "--output-dir", str(out),
            "--set", "engine.name=mask", "--outputs", "alpha", "--quiet"]
    assert batch.main(argv) == 1
    table = capsys.readouterr().out
    rows = {line.split()[0]: line for line in table.splitlines() if line.split() and "." in line.split()[0]}
    assert "completed" in rows["a.mp4"] and "10/10" in rows["a.mp4"] and "a_alpha" in rows["a.mp4"]
    assert "completed" in rows["b.mov"] and "6/6" in rows["b.mov"]
    assert "failed" in rows["broken.mp4"] and "error 4" in rows["broken.mp4"]
    assert json.loads((out / "a" / "metadata.json").read_text())["status"] == "completed"
    summary = json.loads((out / "batch-summary.json").read_text())
    assert [r["status"] for r in summary] == ["completed", "completed", "failed"]

    # An interrupted run: the batch resumes it instead of starting over.
    make_clip(videos / "c.mp4", frames=150)
    interrupt(argv_for_cli(videos / "c.mp4", tmp_path / "mask.png", out / "c"))
    assert json.loads((out / "c" / "metadata.json").read_text())["status"] == "cancelled"
    assert batch.main(argv) == 1
    table = capsys.readouterr().out
    rows = {line.split()[0]: line for line in table.splitlines() if line.split() and "." in line.split()[0]}
    assert "skipped" in rows["a.mp4"] and "10/10" in rows["a.mp4"]
    assert "skipped" in rows["b.mov"]
    assert "completed (resumed)" in rows["c.mp4"] and "150/150" in rows["c.mp4"]
    assert "failed" in rows["broken.mp4"]
    summary = json.loads((out / "batch-summary.json").read_text())
    assert [r["action"] for r in summary] == ["skip", "skip", "new", "resume"]

    assert batch.main(argv + ["--skip-failed"]) == 1  # broken is not retried, but still reported failed
    summary = json.loads((out / "batch-summary.json").read_text())
    assert [r["action"] for r in summary] == ["skip", "skip", "new", "skip"]


def test_bad_config_fails_once_up_front(tmp_path: Path, videos: Path, capsys) -> None:
    assert batch.main(["--input", str(videos), "--output-dir", str(tmp_path / "o")]) == 2
    assert "no prompt" in capsys.readouterr().err
    assert batch.main(["--input", str(videos), "--auto-person", "--set", "engine.nmae=mask"]) == 2
    assert "engine.nmae" in capsys.readouterr().err
    assert batch.main(["--input", str(tmp_path / "nope.mp4"), "--auto-person"]) == 3
    assert not (tmp_path / "o").exists()


def test_dry_run_plans_without_running(tmp_path: Path, videos: Path, capsys) -> None:
    out = tmp_path / "out"
    assert batch.main(["--input", str(videos), "--auto-person", "--output-dir", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split("\t")[2] for ln in lines] == ["new", "new", "new"]
    assert lines[0].split("\t")[1] == str(out / "a")
    assert not out.exists()
