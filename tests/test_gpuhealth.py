"""mattepod.gpuhealth: the wrong-host check at start-up, and the serverless worker after a CUDA fault.

The worker test runs the real runpod SDK in its production loop (job-take / job-done webhooks) against a FAKE
RunPod queue on 127.0.0.1, with the ``mask`` engine wrapped in a FAKE that raises what torch raises on an
illegal memory access (no GPU here). What the SDK posts back is what RunPod's platform would receive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mattepod import gpuhealth
from mattepod.errors import ConfigError
from tests.batch_media import make_clip, make_mask

ROOT = Path(__file__).resolve().parents[1]

ILLEGAL_ACCESS = ("CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be asynchronously "
                  "reported at some other API call, so the stacktrace below might be incorrect.")


# --------------------------------------------------------------------------- host check


def test_driver_version_is_read_from_proc(tmp_path: Path) -> None:
    proc = tmp_path / "version"
    proc.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  "
                    "(dvs-builder@U16-I3-B03-4-3)  Tue Jul 22 19:27:39 UTC 2025\nGCC version:  gcc version 12\n")
    assert gpuhealth.driver_version(proc) == "580.65.06"
    proc.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.127.05  Tue Oct  8 03:22:07 UTC 2024\n")
    assert gpuhealth.driver_version(proc) == "550.127.05"


def test_old_driver_names_the_runpod_filter() -> None:
    report = gpuhealth.check_host(env={}, driver="550.127.05", probe_torch=False)
    line = report.problem()
    assert report.expected and line is not None
    assert "550.127.05" in line and "CUDA 13.0+" in line and "580" in line and "\n" not in line


def test_gpu_expectation() -> None:
    # no driver and nothing says a GPU was given: a CPU host (CI, a laptop) is fine
    assert gpuhealth.check_host(env={}, driver=None, probe_torch=False).problem() is None
    # RunPod says it gave GPUs, but no driver is visible: the pod runs on the wrong host/runtime
    missing = gpuhealth.check_host(env={"RUNPOD_GPU_COUNT": "1"}, driver=None, probe_torch=False).problem()
    assert missing and "no NVIDIA driver" in missing and "CUDA 13.0+" in missing
    assert gpuhealth.check_host(env={"RUNPOD_GPU_COUNT": "1", "MATTEPOD_GPU_CHECK": "off"}, driver=None,
                                probe_torch=False).problem() is None
    ok = gpuhealth.HostReport(expected=True, driver="580.95.05", torch_cuda="13.0", available=True)
    assert ok.problem() is None
    blind = gpuhealth.HostReport(expected=True, driver="590.44.01", torch_cuda="13.0", available=False)
    assert "--gpus all" in (blind.problem() or "") and "MATTEPOD_GPU_CHECK=off" in (blind.problem() or "")


def _module(env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "MATTEPOD_"))}
    return subprocess.run([sys.executable, "-m", "mattepod.gpuhealth"], env={**clean, "PYTHONPATH": str(ROOT), **env},
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(Path("/proc/driver/nvidia/version").exists(), reason="this host has an NVIDIA driver")
def test_module_exit_codes_on_this_gpu_less_host() -> None:
    res = _module({})
    assert res.returncode == 0 and "CPU only" in res.stderr
    res = _module({"MATTEPOD_GPU_CHECK": "require"})
    assert res.returncode == gpuhealth.EXIT_WRONG_HOST
    assert res.stderr.strip().count("\n") == 0 and "[gpu] ERROR:" in res.stderr and "CUDA 13.0+" in res.stderr


@pytest.mark.skipif(Path("/proc/driver/nvidia/version").exists(), reason="this host has an NVIDIA driver")
def test_entrypoint_refuses_to_start_on_a_gpu_less_pod(tmp_path: Path) -> None:
    """A RunPod pod that was promised a GPU but has no usable driver stops before the app, with the filter hint."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "RUNPOD_", "MODELS", "MATTEPOD_"))}
    env.update(PYTHON=sys.executable, PYTHONPATH=str(ROOT), MODELS="none", ENCODER_PROBE="0",
               MODEL_CACHE_DIR=str(tmp_path / "w"), OUTPUT_DIR=str(tmp_path / "o"), RUNPOD_GPU_COUNT="1",
               STARTUP_COMMAND=f"{sys.executable} -c 'print(\"APP STARTED\")'")
    res = subprocess.run(["bash", str(ROOT / "docker" / "entrypoint.sh")], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == gpuhealth.EXIT_WRONG_HOST, res.stdout + res.stderr
    assert "APP STARTED" not in res.stdout and "CUDA 13.0+" in res.stderr
    res = subprocess.run(["bash", str(ROOT / "docker" / "entrypoint.sh")], env={**env, "MATTEPOD_GPU_CHECK": "off"},
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "APP STARTED" in res.stdout, res.stderr


# --------------------------------------------------------------------------- fault classification and the guard


class FakeCudaFault(RuntimeError):
    """FAKE: the RuntimeError torch raises after an illegal memory access (no GPU in CI)."""


def test_cuda_faults_are_told_from_other_errors() -> None:
    assert gpuhealth.is_cuda_fault(FakeCudaFault(ILLEGAL_ACCESS))
    assert gpuhealth.is_cuda_fault(RuntimeError("CUDA error: device-side assert triggered"))
    try:
        try:
            raise FakeCudaFault("CUDA error: unspecified launch failure")
        except RuntimeError as inner:
            raise ValueError("writer thread died") from inner
    except ValueError as outer:
        assert gpuhealth.is_cuda_fault(outer)  # found in the cause chain
    assert not gpuhealth.is_cuda_fault(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not gpuhealth.is_cuda_fault(ValueError("bad frame size"))
    assert not gpuhealth.is_cuda_fault(ConfigError("engine.device cuda requested", "use cpu"))


def test_guard_drops_engines_and_refuses_later_jobs() -> None:
    from mattepod.config import Config
    from mattepod.serverless import EnginePool

    pool = EnginePool(keep=2)
    cfg = Config.model_validate({"engine": {"name": "mask"}})
    with pool.lease() as factory:
        factory(cfg)
    calls: list[str] = []

    def handler(job: dict) -> dict:
        calls.append(job["id"])
        if job["id"] == "boom":
            raise KeyError("frames")
        if job["id"] == "fault":
            raise FakeCudaFault(ILLEGAL_ACCESS)
        return {"status": "completed"}

    guarded = gpuhealth.guard(handler, pool.clear)
    assert guarded({"id": "ok"}) == {"status": "completed"}
    boom = guarded({"id": "boom"})
    assert boom["error_type"] == "KeyError" and "refresh_worker" not in boom and "\n" not in boom["error"]
    fault = guarded({"id": "fault"})
    assert fault["refresh_worker"] is True and fault["error_type"] == "CudaFault"
    assert "illegal memory access" in fault["error"] and "\n" not in fault["error"]
    assert pool.clear() == 0  # the guard already dropped the cached engine
    later = guarded({"id": "later"})
    assert later["refresh_worker"] is True and "earlier job" in later["error"]
    assert calls == ["ok", "boom", "fault"]  # the job after the fault never reached the handler


# --------------------------------------------------------------------------- the real SDK's worker loop


WORKER = '''"""Worker for tests/test_gpuhealth.py with a FAKE engine that fails like a broken GPU when told to."""
import os
from pathlib import Path

from mattepod import pipeline, serverless
from mattepod.engine import MaskFollowEngine

PLAN = Path(os.environ["FAKE_FAULT_PLAN"])
BUILT = Path(os.environ["FAKE_ENGINES_BUILT"])


class FakeCudaFault(RuntimeError):
    """FAKE: what torch raises after an illegal memory access."""


class FakeFaultyEngine(MaskFollowEngine):
    """FAKE: the mask engine, except that it raises when the queue's plan for the current job says so."""

    def step(self, frame, mask=None):
        plan = PLAN.read_text().strip()
        if plan == "cuda" and self._index >= 2:
            raise FakeCudaFault(%r)
        if plan == "boom" and self._index >= 2:
            raise ZeroDivisionError("fake bug in a filter")
        return super().step(frame, mask)


def build_engine(cfg):
    with BUILT.open("a") as f:
        f.write("1\\n")
    return FakeFaultyEngine()


pipeline.build_engine = build_engine
serverless.main()
''' % ILLEGAL_ACCESS


class FakeRunpodQueue(BaseHTTPRequestHandler):
    """FAKE RunPod job queue: hands out ``jobs`` on job-take (204 when empty), records job-done posts."""

    jobs: list[tuple[str, dict]] = []
    done: list[tuple[str, dict]] = []
    plan: Path

    def do_GET(self) -> None:  # noqa: N802
        if self.path.startswith("/job-take/") and self.jobs:
            plan, job = self.jobs.pop(0)
            self.plan.write_text(plan)
            body = json.dumps(job).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(204)
        self.end_headers()

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        data = json.loads(body) if body else {}
        # The SDK posts progress updates to the same job-done URL with status IN_PROGRESS: only final results count
        # (counting progress posts made the test stop the worker with SIGTERM in the middle of its first job).
        if self.path.startswith("/job-done/") and data.get("status") != "IN_PROGRESS":
            self.done.append((self.path, data))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.mark.slow  # four jobs through the SDK's worker loop: ~30 s on 2 cores
def test_sdk_worker_loop_refreshes_after_a_cuda_fault(tmp_path: Path) -> None:
    vol = tmp_path / "volume"
    make_clip(vol / "in" / "clip.mp4", frames=6)
    make_mask(vol / "mask.png")
    plan, built = tmp_path / "plan", tmp_path / "built"
    plan.write_text("ok")
    (tmp_path / "worker.py").write_text(WORKER)

    def job(jid: str) -> dict:
        return {"id": jid, "input": {"video": "in/clip.mp4", "prompt": {"mask": "mask.png"}, "outputs": ["alpha"],
                                     "config": {"engine": {"name": "mask"}}, "run_name": jid}}

    FakeRunpodQueue.jobs = [("ok", job("j1-ok")), ("boom", job("j2-bug")), ("cuda", job("j3-fault")),
                            ("ok", job("j4-after"))]
    FakeRunpodQueue.done = []
    FakeRunpodQueue.plan = plan
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeRunpodQueue)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "MATTEPOD_"))}
    env.update(PYTHONPATH=str(ROOT), RUNPOD_VOLUME_PATH=str(vol), MATTEPOD_ALLOWED_ROOTS=str(vol),
               OUTPUT_DIR=str(vol / "out"), PYTHONUNBUFFERED="1", FAKE_FAULT_PLAN=str(plan),
               FAKE_ENGINES_BUILT=str(built), RUNPOD_POD_ID="worker-1", RUNPOD_SKIP_AUTO_SYSTEM_CHECKS="true",
               RUNPOD_WEBHOOK_GET_JOB=f"{base}/job-take/$ID?gpu=fake",
               RUNPOD_WEBHOOK_POST_OUTPUT=f"{base}/job-done/$RUNPOD_POD_ID/$ID?gpu=fake")
    proc = subprocess.Popen([sys.executable, str(tmp_path / "worker.py")], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while len(FakeRunpodQueue.done) < 4 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        server.shutdown()
    results = {path.split("/")[3].split("?")[0]: body for path, body in FakeRunpodQueue.done}
    assert set(results) == {"j1-ok", "j2-bug", "j3-fault", "j4-after"}, out[-4000:]

    bug = results["j2-bug"]
    assert "fake bug in a filter" in bug["error"] and bug["output"]["error_type"] == "ZeroDivisionError"
    assert "stopPod" not in bug and "Traceback" not in bug["error"]  # an error dict, not the SDK's traceback
    fault = results["j3-fault"]
    assert fault["stopPod"] is True and "illegal memory access" in fault["error"]
    assert fault["output"]["error_type"] == "CudaFault"
    after = results["j4-after"]
    assert after["stopPod"] is True and "earlier job" in after["error"]
    assert "dropped 1 cached engines" in out
    assert built.read_text().count("1") == 1  # one engine for the worker's life: nothing rebuilt after the fault
    first = results["j1-ok"]
    assert "stopPod" not in first
    assert first["output"]["status"] == "completed"
