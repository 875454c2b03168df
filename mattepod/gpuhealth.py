"""Is this host's GPU usable, and what a worker does after its GPU fails.

Two jobs, both about hosts rather than matting:

* **Fail fast on the wrong host** (``python -m mattepod.gpuhealth``, run by ``docker/runtime_setup.sh``): the
  image's torch wheels are CUDA 13.0 builds, which need an NVIDIA driver >= 580. On an older driver torch quietly
  falls back to "no GPU" and every job would crawl on the CPU or fail late, so when a GPU is expected the start-up
  stops with one line naming the driver found and the RunPod filter to set ("CUDA 13.0+").
* **After a CUDA fault** (an illegal memory access, a device-side assert, an ECC error, a lost device) the CUDA
  context of the process is unusable until it exits: every cached engine holds dead tensors and every later job
  would fail the same way. ``guard`` wraps the serverless handler: such a job returns ``refresh_worker: True``
  (the RunPod SDK then stops this worker after the job and the platform starts a fresh one), the cached engines are
  dropped, and later jobs on the same worker are refused at once with ``refresh_worker`` too. Any other unexpected
  exception comes back as an error dict (one line, ``error_type``), never as a raised exception.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mattepod.errors import GpuHostError

log = logging.getLogger("mattepod.gpuhealth")

REQUIRED_CUDA = "13.0"
MIN_DRIVER = 580  # the first driver branch that runs CUDA 13.0 (NVIDIA's CUDA toolkit/driver table)
RUNPOD_FILTER = "on RunPod choose GPUs with the CUDA 13.0+ filter (pod: 'CUDA Versions'; endpoint: 'CUDA Versions' " \
                "under Advanced); elsewhere update the NVIDIA driver to 580 or newer"
EXIT_WRONG_HOST = GpuHostError.exit_code  # 12

# What torch/CUDA say when the device or its context is broken (not an out-of-memory: that context survives).
_FAULT = re.compile(
    r"CUDA error|CUDA driver error|cuDNN error|CUBLAS_STATUS_(?!ALLOC)|illegal memory access|device-side assert"
    r"|unspecified launch failure|uncorrectable ECC|misaligned address|CUDA-capable device"
    r"|device is busy or unavailable"
    r"|NVML|GPU is lost", re.I)
_OOM = re.compile(r"out of memory|CUBLAS_STATUS_ALLOC_FAILED", re.I)


# --------------------------------------------------------------------------- the host check


@dataclass
class HostReport:
    expected: bool  # a GPU should be there (driver visible, RunPod says it gave one, or MATTEPOD_GPU_CHECK=require)
    driver: str | None  # "580.65.06"
    torch_cuda: str | None  # the CUDA version torch was built for
    available: bool | None  # torch.cuda.is_available(); None when not asked
    device: str | None = None

    def problem(self) -> str | None:
        """One line saying what is wrong with this host for this image, or None."""
        if not self.expected:
            return None
        if self.driver is None:
            return f"a GPU was expected but no NVIDIA driver is visible -> {RUNPOD_FILTER}"
        major = int(self.driver.split(".")[0]) if self.driver.split(".")[0].isdigit() else 0
        if major < MIN_DRIVER:
            return (f"the host's NVIDIA driver {self.driver} is too old for this image's CUDA {REQUIRED_CUDA} "
                    f"(needs {MIN_DRIVER}+) -> {RUNPOD_FILTER}")
        if self.available is False:
            return (f"torch (CUDA {self.torch_cuda}) cannot use a GPU although the host has NVIDIA driver "
                    f"{self.driver} -> give the container the GPU (docker run --gpus all; NVIDIA_VISIBLE_DEVICES not "
                    "empty), or set MATTEPOD_GPU_CHECK=off to run on the CPU")
        return None


def driver_version(proc_file: Path = Path("/proc/driver/nvidia/version")) -> str | None:
    """The kernel driver's version: /proc (always there when the driver is), else nvidia-smi."""
    try:
        found = re.search(r"Kernel Module(?: for \w+)?\s+(\d+\.\d+(?:\.\d+)?)", proc_file.read_text())
        if found:
            return found[1]
    except OSError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        first = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
        return first.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def gpu_expected(env: dict[str, str], driver: str | None) -> bool:
    mode = env.get("MATTEPOD_GPU_CHECK", "auto").strip().lower() or "auto"
    if mode in ("off", "0", "no"):
        return False
    if mode in ("require", "1", "yes"):
        return True
    count = env.get("RUNPOD_GPU_COUNT", "").strip()
    return driver is not None or (count.isdigit() and int(count) > 0)


def check_host(env: dict[str, str] | None = None, driver: str | None = None, probe_torch: bool = True) -> HostReport:
    env = dict(os.environ) if env is None else env
    driver = driver if driver is not None else driver_version()
    expected = gpu_expected(env, driver)
    report = HostReport(expected=expected, driver=driver, torch_cuda=None, available=None)
    if expected and probe_torch and driver is not None:
        import torch  # only when a GPU is expected: a CPU host skips the import (seconds)

        report.torch_cuda = torch.version.cuda
        report.available = torch.cuda.is_available()
        if report.available:
            report.device = torch.cuda.get_device_name(0)
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m mattepod.gpuhealth``: exit 0 when the host suits the image, else 12 with one line."""
    del argv
    report = check_host()
    problem = report.problem()
    if problem:
        print(f"[gpu] ERROR: {problem}", file=sys.stderr)
        return EXIT_WRONG_HOST
    if not report.expected:
        print("[gpu] no NVIDIA GPU expected here (no driver visible): CPU only", file=sys.stderr)
    else:
        print(f"[gpu] {report.device or 'GPU'}: driver {report.driver}, torch CUDA {report.torch_cuda}",
              file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- the serverless guard


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def is_cuda_fault(exc: BaseException) -> bool:
    """A CUDA error that poisons the process's context (anywhere in the exception's cause chain)."""
    for e in _chain(exc):
        if any(k.__name__ == "AcceleratorError" for k in type(e).__mro__):
            return True  # torch's type for CUDA runtime errors
        text = str(e)
        if _FAULT.search(text) and not _OOM.search(text):
            return True
    return False


@dataclass
class WorkerHealth:
    """Per-worker state: once a CUDA fault was seen, this worker only asks to be replaced."""

    fault: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def guard(handler: Callable[[dict[str, Any]], Any], forget_engines: Callable[[], Any],
          health: WorkerHealth | None = None) -> Callable[[dict[str, Any]], Any]:
    """The handler RunPod calls: CUDA faults -> ``refresh_worker``; other exceptions -> an error dict."""
    state = health or WorkerHealth()

    def guarded(job: dict[str, Any]) -> Any:
        job_id = job.get("id") if isinstance(job, dict) else None
        if state.fault is not None:
            return {"error": f"this worker's GPU failed in an earlier job ({state.fault}) -> the job is refused and "
                             "the worker replaced; retry the job", "error_type": "CudaFault", "refresh_worker": True}
        try:
            return handler(job)
        except Exception as exc:  # noqa: BLE001 - the worker must answer every job
            one_line = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
            if is_cuda_fault(exc):
                with state.lock:
                    state.fault = one_line
                dropped = forget_engines()
                log.error("job %s: CUDA fault, asking RunPod to replace this worker (dropped %s cached engines): "
                          "%s\n%s", job_id, dropped, one_line, traceback.format_exc())
                return {"error": f"the GPU failed during the job ({one_line}) -> the worker is replaced "
                                 "(refresh_worker); retry the job", "error_type": "CudaFault", "refresh_worker": True}
            if _OOM.search(one_line):
                forget_engines()  # free what the cached engines hold; the context itself is fine
            log.error("job %s failed: %s\n%s", job_id, one_line, traceback.format_exc())
            return {"error": f"{one_line} -> unexpected error in the worker; the worker log has the traceback",
                    "error_type": type(exc).__name__, "exit_code": 1}

    guarded.__wrapped__ = handler  # type: ignore[attr-defined]
    return guarded


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
