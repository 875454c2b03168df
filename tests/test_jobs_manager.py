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
