"""Job layer: real processes in their own process groups, a real queue, state read back from run folders.

The job script is tests/fake_job_script.py (a FAKE of the CLI's run-folder contract) so these tests stay fast;
the app tests run the real CLI.
"""

import json
import os
import sys
import time
from pathlib import Path

import pytest

from mattepod import config as configmod
from mattepod import jobs
from mattepod.errors import InputNotFoundError, RunStateError

FAKE = Path(__file__).with_name("fake_job_script.py")


def fake_command(run: Path) -> list[str]:
    return [sys.executable, str(FAKE), str(run / "config.yaml"), "--run-dir", str(run), "--progress-json"]


def make_run(out: Path, frames: int = 5, ms: int = 0, name: str = "clip.mp4") -> Path:
    cfg = configmod.validate({"input": f"/data/{name}", "max_frames": frames, "start_frame": ms,
                              "engine": {"name": "mask"}})
    return jobs.create_run(cfg, out)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[1].startswith("Z"))


def wait_for(pred, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def manager(tmp_path):
    m = jobs.JobManager(tmp_path / "out", command=fake_command, kill_grace=3)
    yield m
    m.close(cancel_running=True)


def test_create_run_writes_config_and_queued_job(tmp_path):
    run = make_run(tmp_path / "out")
    again = make_run(tmp_path / "out")
    assert run != again and run.name.startswith("clip_") and again.name.startswith("clip_")
    cfg = configmod.load(run / "config.yaml")
    assert cfg.engine.name == "mask" and Path(cfg.output_dir) == (tmp_path / "out").resolve()
    assert jobs.read_job(run).status == "queued"


def test_job_completes_with_outputs_inside_its_run_only(manager, tmp_path):
    job_id = manager.submit(make_run(tmp_path / "out", frames=7))
    info = manager.wait(job_id, timeout=30)
    assert info.status == "completed", info
    assert (info.frame, info.total) == (7, 7)
    assert set(info.outputs) == {"alpha"}  # the "../../etc/passwd" entry is dropped
    assert Path(info.outputs["alpha"]).read_bytes() == b"fake alpha"
    assert [Path(p).name for p in info.previews] == ["alpha_0.png"]
    assert json.loads((Path(info.run_dir) / "job.json").read_text())["exit_code"] == 0


def test_failed_job_reports_the_error(manager, tmp_path):
    info = manager.wait(manager.submit(make_run(tmp_path / "out", name="fail.mp4")), timeout=30)
    assert info.status == "failed"
    assert info.error["exit_code"] == 4 and "truncated" in info.error["message"]
    assert "truncated" in info.summary()


def test_one_job_at_a_time_with_positions(manager, tmp_path):
    ids = [manager.submit(make_run(tmp_path / "out", frames=40, ms=50)) for _ in range(3)]
    assert wait_for(lambda: manager.status(ids[0]).status == "running")
    assert [manager.status(i).position for i in ids] == [None, 1, 2]
    assert manager.status(ids[2]).summary() == "queued (position 2)"
    manager.cancel(ids[0])
    assert wait_for(lambda: manager.status(ids[1]).status == "running")
    assert manager.status(ids[2]).position == 1


def test_cancel_kills_the_whole_process_group(manager, tmp_path):
    run = make_run(tmp_path / "out", frames=400, ms=50)
    job_id = manager.submit(run)
    assert wait_for(lambda: (run / "child.pid").exists() and manager.status(job_id).frame)
    pid = json.loads((run / "job.json").read_text())["pid"]
    child = int((run / "child.pid").read_text())
    assert alive(pid) and alive(child)
    info = manager.cancel(job_id)
    assert info.status == "cancelled"
    assert wait_for(lambda: not alive(pid) and not alive(child), 5), "job or its child survived Cancel"
    assert info.frame < 400


def test_cancel_a_queued_job_never_starts_it(manager, tmp_path):
    first = manager.submit(make_run(tmp_path / "out", frames=100, ms=50))
    second_run = make_run(tmp_path / "out")
    second = manager.submit(second_run)
    assert manager.cancel(second).status == "cancelled"
    manager.cancel(first)
    time.sleep(0.5)
    assert not (second_run / jobs.STDOUT_FILE).exists()
    assert manager.status(second).status == "cancelled"


def test_jobs_survive_an_app_restart(tmp_path):
    out = tmp_path / "out"
    first = jobs.JobManager(out, command=fake_command)
    a = first.submit(make_run(out, frames=20, ms=50))
    b = first.submit(make_run(out, frames=3))
    assert wait_for(lambda: first.status(a).status == "running")
    first.close()  # the app goes away; the job process keeps running (own session, output to files)
    second = jobs.JobManager(out, command=fake_command)
    try:
        listed = {j.id: j for j in second.list_jobs()}
        assert listed[a].status == "running" and listed[b].status == "queued"
        assert listed[b].position == 1
        assert second.wait(a, timeout=30).status == "completed"
        assert second.wait(b, timeout=30).status == "completed"
    finally:
        second.close(cancel_running=True)


def test_a_job_that_died_with_the_pod_is_interrupted(tmp_path):
    run = make_run(tmp_path / "out")
    jobs._update_job_file(run, status="running", pid=2**22 + 12345)
    info = jobs.read_job(run)
    assert info.status == "interrupted" and "--resume" in info.error["message"]


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "", "x/../../y", "/etc"])
def test_job_ids_cannot_leave_the_output_folder(manager, bad):
    with pytest.raises((RunStateError, InputNotFoundError)):
        manager.status(bad)


def test_inside_refuses_traversal_and_symlinks(tmp_path):
    root = tmp_path / "input"
    root.mkdir()
    (root / "ok.mp4").write_bytes(b"x")
    (root / "escape").symlink_to("/etc")
    assert jobs.inside(root / "ok.mp4", [root]) == (root / "ok.mp4").resolve()
    for bad in [root / ".." / "secret", "/etc/passwd", root / "escape" / "passwd", ""]:
        with pytest.raises(InputNotFoundError, match="outside the allowed folders|no file path"):
            jobs.inside(bad, [root])


def test_a_restarted_app_can_cancel_a_job_it_did_not_start(tmp_path):
    out = tmp_path / "out"
    first = jobs.JobManager(out, command=fake_command)
    run = make_run(out, frames=400, ms=50)
    job_id = first.submit(run)
    assert wait_for(lambda: (run / "child.pid").exists())
    first.close()
    second = jobs.JobManager(out, command=fake_command, kill_grace=3)
    try:
        pid = json.loads((run / "job.json").read_text())["pid"]
        child = int((run / "child.pid").read_text())
        assert second.cancel(job_id).status == "cancelled"
        assert wait_for(lambda: not alive(pid) and not alive(child), 5)
    finally:
        second.close(cancel_running=True)


def test_cancel_answers_at_once_shows_cancelling_and_the_job_stops_at_a_frame(manager, tmp_path):
    run = make_run(tmp_path / "out", frames=400, ms=50)
    job_id = manager.submit(run)
    assert wait_for(lambda: manager.status(job_id).frame)
    t0 = time.monotonic()
    info = manager.cancel(job_id, wait=False)
    assert time.monotonic() - t0 < 1.0  # the page is not blocked while the job winds down
    assert info.status in ("running", "cancelled")
    if info.status == "running":
        assert info.cancelling and info.summary().startswith("cancelling")
    assert wait_for(lambda: manager.status(job_id).status == "cancelled", 2.0)  # SIGTERM honoured: <= 2 s
    info = manager.status(job_id)
    assert info.resumable and not info.cancelling and info.elapsed is not None


def test_a_job_ignoring_sigterm_is_killed_after_the_grace(tmp_path):
    m = jobs.JobManager(tmp_path / "out", command=fake_command, kill_grace=1)
    try:
        run = make_run(tmp_path / "out", frames=400, ms=50, name="stubborn.mp4")
        job_id = m.submit(run)
        assert wait_for(lambda: m.status(job_id).frame)
        pid = json.loads((run / "job.json").read_text())["pid"]
        m.cancel(job_id, wait=False)
        assert m.status(job_id).cancelling
        assert wait_for(lambda: m.status(job_id).status == "cancelled", 6)
        assert not alive(pid)
    finally:
        m.close(cancel_running=True)


def test_resume_continues_with_the_clis_resume_command(tmp_path):
    seen = []

    def resume_command(run: Path) -> list[str]:
        seen.append(run)
        return [sys.executable, str(FAKE), "--resume", str(run), "--progress-json"]

    m = jobs.JobManager(tmp_path / "out", command=fake_command, resume_command=resume_command)
    try:
        run = make_run(tmp_path / "out", frames=60, ms=30)
        job_id = m.submit(run)
        assert wait_for(lambda: (m.status(job_id).frame or 0) >= 5)
        m.cancel(job_id)
        stopped = m.status(job_id)
        assert stopped.status == "cancelled" and stopped.resumable
        m.resume(job_id)
        with pytest.raises(RunStateError, match="still"):
            m.resume(job_id)  # already queued or running again
        info = m.wait(job_id, timeout=30)
        assert info.status == "completed" and seen == [run]
        assert int((run / "resumed_from.txt").read_text()) == stopped.frame + 1  # not from frame 1
        assert not info.resumable
        with pytest.raises(RunStateError, match="cannot be resumed"):
            m.resume(job_id)
    finally:
        m.close(cancel_running=True)


def test_default_resume_command_is_the_clis():
    argv = jobs.default_resume_command(Path("/out/run_1"))
    assert argv[-3:] == ["--resume", "/out/run_1", "--progress-json"] and "config.yaml" not in " ".join(argv)


def test_zip_and_delete_a_finished_job(manager, tmp_path):
    import zipfile

    job_id = manager.submit(make_run(tmp_path / "out", frames=3))
    running = make_run(tmp_path / "out", frames=400, ms=50)
    assert manager.wait(job_id, timeout=30).status == "completed"
    z = manager.zip_outputs(job_id)
    with zipfile.ZipFile(z) as zf:
        assert {"clip_alpha.mp4", "previews/alpha_0.png", "config.yaml", "metadata.json"} <= set(zf.namelist())
        assert zf.read("clip_alpha.mp4") == b"fake alpha"
    assert manager.zip_outputs(job_id) == z  # reused while nothing changed
    other = manager.submit(running)
    assert wait_for(lambda: manager.status(other).status == "running")
    with pytest.raises(RunStateError, match="cancel it first"):
        manager.delete(other)
    manager.delete(job_id)
    assert not (tmp_path / "out" / job_id).exists()
    with pytest.raises((RunStateError, InputNotFoundError)):
        manager.delete("..")


def test_progress_text_reads_well():
    assert jobs.fmt_duration(2099) == "0:34:59" and jobs.fmt_duration(3 * 3600 + 5) == "3:00:05"
    assert jobs.fmt_fps(0.0412) == "0.0412" and jobs.fmt_fps(2.345) == "2.35" and jobs.fmt_fps(31.26) == "31.3"
    info = jobs.JobInfo("j", "/x", "running", frame=4, total=79, fps=0.034, eta=2099, stage="matting", elapsed=65)
    assert info.summary() == "running · matting 4/79 frames · 0.034 fps · ETA 0:34:59 · 0:01:05 elapsed"
