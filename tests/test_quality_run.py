"""``run --gt``: the ground truth is checked before any matting, the run ends by measuring its matte
(quality.json in the run folder, the means in metadata.json), and a processed range meets the right frames."""

from __future__ import annotations

import json

import pytest

from mattepod import cli, config, pipeline, quality as q
from tests.conftest import make_mask, make_video, run_cli


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A clip, its mask, and a ground truth: the alpha16 PNGs of the same deterministic engine (made once)."""
    root = tmp_path_factory.mktemp("quality-run")
    clip, mask = make_video(root / "clip.mp4"), make_mask(root / "mask.png", 96, 64)
    cfg = config.load(None, {"input": str(clip), "output_dir": str(root / "gt"), "prompt.mask": str(mask),
                             "engine.name": "mask", "outputs.formats": ["alpha16"]})
    run = pipeline.run(cfg, pipeline.RunOptions(progress_bar=False)).run_dir
    return clip, mask, run / "clip_alpha16_png"


def _run(clip, mask, out, *extra, **kw):
    return run_cli("run", "--input", str(clip), "--mask", str(mask), "--engine", "mask", "-o", str(out), "-q",
                   "--set", "recovery.segment_frames=7", *extra, **kw)


def test_run_with_gt_writes_quality_json_and_metadata(tmp_path, made):
    clip, mask, gt = made  # the same deterministic engine: a perfect ground truth
    res = _run(clip, mask, tmp_path / "b", "--outputs", "alpha,alpha16", "--gt", str(gt),
               "--run-dir", str(tmp_path / "b" / "r"))
    assert res.returncode == 0, res.stderr
    run = tmp_path / "b" / "r"
    assert "| frames | MAD | MSE | Grad | Conn | dtSSD |" in res.stdout and "quality.json" in res.stdout
    report = json.loads((run / "quality.json").read_text())
    assert report["frames"] == 24 and len(report["per_frame"]) == 24
    assert "alpha16" in report["pred"]["detail"] and report["gt"]["path"] == str(gt)
    assert all(v == 0.0 for v in report["mean"].values())
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["status"] == "completed"
    assert meta["quality"]["mean"] == report["mean"] and meta["quality"]["file"] == "quality.json"
    assert meta["quality"]["matte"] == "alpha16"
    # the lossy 10-bit alpha video of the same run, measured in native depth, is close but not exact
    video = q.evaluate(run / "clip_alpha.mp4", gt, depth="native")
    assert 0 < video.mean["mad"] < 3


def test_a_processed_range_meets_its_ground_truth_frames(tmp_path, made):
    clip, mask, gt = made  # 24 frames: one per input frame
    part = _run(clip, mask, tmp_path / "b", "--outputs", "alpha16", "--gt", str(gt), "--start-frame", "5",
                "--max-frames", "9", "--set", "quality.depth=native", "--run-dir", str(tmp_path / "b" / "r"))
    assert part.returncode == 0, part.stderr
    report = json.loads((tmp_path / "b" / "r" / "quality.json").read_text())
    assert report["frames"] == 9 and report["gt_start"] == 5 and report["depth"] == "native"
    want = q.evaluate(tmp_path / "b" / "r" / "clip_alpha16_png", gt, depth="native", gt_start=5, gt_longer=True)
    assert report["mean"] == pytest.approx(want.mean, abs=1e-12)


@pytest.mark.parametrize("case", ["size", "count", "no_matte", "missing"])
def test_a_ground_truth_that_does_not_fit_stops_before_matting(tmp_path, made, case, capsys):
    import cv2
    import numpy as np

    clip, mask, _ = made
    gt = tmp_path / "gt"
    gt.mkdir()
    n, shape = {"size": (24, (32, 48)), "count": (10, (64, 96))}.get(case, (24, (64, 96)))
    for i in range(n):
        cv2.imwrite(str(gt / f"{i:04d}.png"), np.zeros(shape, np.uint8))
    outputs = "green" if case == "no_matte" else "alpha16"
    target = tmp_path / "missing" if case == "missing" else gt
    code = cli.main(["run", "--input", str(clip), "--mask", str(mask), "--engine", "mask", "-o", str(tmp_path / "o"),
                     "-q", "--outputs", outputs, "--gt", str(target)])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == {"size": 4, "count": 4, "no_matte": 2, "missing": 3}[case], lines
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert {"size": "is 48x32, the input 96x64", "count": "has 10 frames; the input has 24",
            "no_matte": "quality.gt needs a matte", "missing": "does not exist"}[case] in lines[0]
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())  # nothing was started


def test_a_failure_after_the_outputs_is_recorded_not_raised(tmp_path):
    """The matte is complete by then: quality.json is missing, metadata says why, eval can measure later."""
    run = tmp_path / "r"
    (run / "m").mkdir(parents=True)
    import cv2
    import numpy as np

    cv2.imwrite(str(run / "m" / "0.png"), np.zeros((8, 8), np.uint8))
    summary = q.finish_run(run, {"alpha16": "m"}, str(tmp_path / "gone"), "field", 0)
    assert "does not exist" in summary["error"] and not (run / "quality.json").exists()
    assert "mattepod eval --pred" in q.report_lines(summary, run)[0]


def test_page_markdown_of_a_run(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    assert q.page_markdown(run) == ""  # no quality.json, no metadata: nothing shown
    (run / "metadata.json").write_text(json.dumps({"quality": {"error": "ground truth x does not exist"}}))
    assert "not measured (ground truth x does not exist)" in q.page_markdown(run)
    report = {"frames": 3, "depth": "field", "gt": {"path": "/gt"},
              "mean": {"mad": 1.5, "mse": 0.25, "grad": 0.125, "conn": 0.5, "dtssd": 2.0}}
    (run / "quality.json").write_text(json.dumps(report))
    md = q.page_markdown(run)
    assert "| frames | MAD | MSE | Grad | Conn | dtSSD |" in md and "| 3 | 1.5000 | 0.2500 | 0.1250 | 0.5000 | 2.0000 |" in md
    assert "`/gt`" in md


@pytest.mark.slow
def test_dry_run_checks_the_ground_truth_and_a_kill_in_the_quality_step_resumes(tmp_path, made):
    clip, mask, gt = made
    plan = _run(clip, mask, tmp_path / "b", "--outputs", "alpha16", "--gt", str(gt), "--start-frame", "3", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["plan"]["quality"] == {"gt": str(gt), "gt_start": 3, "depth": "field"}
    run = tmp_path / "c" / "r"
    killed = _run(clip, mask, tmp_path / "c", "--outputs", "alpha16", "--gt", str(gt), "--run-dir", str(run),
                  env={"MATTEPOD_TEST_KILL_AT_STEP": "hook:quality:done"})
    assert killed.returncode == -9, killed.stderr
    assert (run / "quality.json").is_file()  # written (atomically) before the kill
    assert json.loads((run / "metadata.json").read_text())["status"] != "completed"
    resumed = run_cli("run", "--resume", str(run), "-q")
    assert resumed.returncode == 0, resumed.stderr
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["status"] == "completed" and all(v == 0.0 for v in meta["quality"]["mean"].values())
