"""Cancel through the job layer with the *real* CLI (not tests/fake_job_script.py): the page's Cancel button
calls ``JobManager.cancel``, which SIGTERMs the job's process group (the CLI and its ffmpeg children).

The job must stop at a frame boundary on its own -- status ``cancelled``, exit 130 recorded by the run itself,
the committed segments kept, resumable to completion -- and never need the SIGKILL fallback. The grace is set
far above any sane stop time, so a job that ignored SIGTERM fails the test instead of being killed quietly.
The stop time is printed (figures: ``python bench/cancel_latency.py``); it is not asserted as a wall-clock
limit. Engines: MatAnyone with generated weights (the real network, as on a pod) and, at start-up, the mask
engine (SIGTERM while Python is still importing torch).
"""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import pytest

from mattepod import config as configmod
from mattepod import jobs
from tests.conftest import make_mask, make_video
from tests.test_jobs_manager import wait_for

GRACE = 60.0  # SIGKILL fallback: far longer than a SIGTERM-honouring job takes


def frames_done(manager: jobs.JobManager, job_id: str) -> int:
    info = manager.status(job_id)
    return int(info.frame or 0) if info.stage == "matting" else 0


def make_job(tmp_path: Path, engine: dict, frames: int, weights: Path | None = None) -> tuple[Path, Path]:
    clip = make_video(tmp_path / "clip.mp4", width=128, height=96, frames=frames, audio=False)
    mask = make_mask(tmp_path / "mask.png", 128, 96)
    data = {"input": str(clip), "prompt": {"mask": str(mask)}, "engine": engine,
            "outputs": {"formats": ["alpha", "png"], "alpha_codec": "ffv1", "previews": 0},
            "recovery": {"segment_frames": 8}, "runtime": {"threads": 1}}
    if weights is not None:
        data["weights_dir"] = str(weights)
    out = tmp_path / "out"
    return out, jobs.create_run(configmod.validate(data), out)


def assert_cancelled_by_the_run(manager: jobs.JobManager, job_id: str, run: Path) -> jobs.JobInfo:
    info = manager.status(job_id)
    assert info.status == "cancelled", info.summary()
    assert info.resumable and not info.cancelling
    job = json.loads((run / jobs.JOB_FILE).read_text())
    assert job["exit_code"] in (130, -15), job  # SIGTERM honoured (the run's exit or Python's default), no SIGKILL
    return info


def resume_to_completion(manager: jobs.JobManager, job_id: str) -> jobs.JobInfo:
    manager.resume(job_id)
    done = manager.wait(job_id, timeout=600)
    assert done.status == "completed", done.summary()
    return done


@pytest.fixture
def weights(tmp_path_factory):
    from matanyone_common import need_reference, write_weights

    need_reference()
    return write_weights(tmp_path_factory)


@pytest.mark.slow
def test_cancel_a_real_matanyone_job_mid_run_stops_at_a_frame_and_resumes(tmp_path, weights):
    out, run = make_job(tmp_path, {"name": "matanyone", "device": "cpu", "precision": "fp32", "warmup": 1, "top_k": 8},
                        frames=160, weights=weights)
    manager = jobs.JobManager(out, kill_grace=GRACE)
    try:
        job_id = manager.submit(run)
        assert wait_for(lambda: frames_done(manager, job_id) >= 10 or manager.status(job_id).status != "running", 300)
        assert manager.status(job_id).status == "running", manager.status(job_id).summary()
        t0 = time.monotonic()
        pending = manager.cancel(job_id, wait=False)
        assert pending.cancelling or pending.status == "cancelled"  # the page shows "cancelling" at once
        assert wait_for(lambda: manager.status(job_id).status == "cancelled", GRACE - 5)
        latency = time.monotonic() - t0
        print(f"cancel of a real MatAnyone job: stopped in {latency:.2f} s")
        assert_cancelled_by_the_run(manager, job_id, run)
        meta = json.loads((run / "metadata.json").read_text())
        assert meta["status"] == "cancelled" and meta["error"]["exit_code"] == 130
        kept = json.loads((run / "manifest.json").read_text())["frames_done"]
        assert 8 <= kept < 160  # stopped in the middle; the committed segments are kept
        # resume continues from the checkpoint (a short tail keeps this fast: max_frames is the run's own)
        done = resume_to_completion(manager, job_id)
        assert set(done.outputs) == {"alpha", "png"}
        assert json.loads((run / "manifest.json").read_text())["frames_done"] == 160
    finally:
        manager.close(cancel_running=True)


def test_cancel_while_the_cli_is_still_starting(tmp_path):
    """SIGTERM before the first frame (Python importing torch, the probe): no frame lost, nothing left
    half-written, and the job resumes to completion."""
    out, run = make_job(tmp_path, {"name": "mask"}, frames=24)
    manager = jobs.JobManager(out, kill_grace=GRACE)
    try:
        job_id = manager.submit(run)
        assert wait_for(lambda: manager.status(job_id).status == "running", 30)
        time.sleep(0.3)  # inside the interpreter's start-up
        t0 = time.monotonic()
        manager.cancel(job_id, wait=False)
        assert wait_for(lambda: manager.status(job_id).status == "cancelled", GRACE - 5)
        print(f"cancel at start-up: stopped in {time.monotonic() - t0:.2f} s")
        assert_cancelled_by_the_run(manager, job_id, run)
        done = resume_to_completion(manager, job_id)
        # the PNG sequence is a folder output: listed, not offered as one file, and every frame is in the zip
        assert set(done.folders()) == {"png"} and all(Path(f).is_file() for f in done.files())
        with zipfile.ZipFile(manager.zip_outputs(job_id)) as zf:
            names = zf.namelist()
        pngs = [n for n in names if n.startswith(Path(done.outputs["png"]).name + "/") and n.endswith(".png")]
        assert len(pngs) == 24 and Path(done.outputs["alpha"]).name in names
    finally:
        manager.close(cancel_running=True)
