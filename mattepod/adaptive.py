"""Adaptive matting size: pick it from the free device memory, and step it down on out-of-memory.

The official MatAnyone code dies of OOM at 4K even on 80 GB. MattePod instead

* at the first anchor, sizes the internal matting resolution with a memory model (``predict_bytes``):
  the largest scale in ``[runtime.min_scale, runtime.max_scale]`` of the size ``engine.max_size`` gives
  whose predicted peak stays under ``runtime.target_memory`` of the memory free on the device;
* on an out-of-memory error mid-run, frees what it can, steps the scale down by ``STEP`` per side, and
  re-anchors on the current frame with the last alpha as its mask (a keyframe of its own), until the
  frame fits or ``min_scale`` is reached (then a clear ``DeviceMemoryError``).

Every change is a ``ScaleChange`` the engine hands out through ``drain_events()``; the run stamps it with
the frame number and records it in metadata.json. The scale in force is part of the engine state, so a
resumed run continues at it.

The memory model's numbers come from ``bench/matanyone_memory.py`` (``--fit`` prints them from a results
file): CPU fp32 peak above the loaded model at 480p..4K and a 2048² VR eye, with the working memory
full (1 permanent + 4 FIFO frames). On CUDA fp16 the activations are taken as half of fp32 until
``bench/gpu_check.sh`` measures them (it reports predicted vs measured peak).

``MATTEPOD_TEST_OOM_AT_FRAME=N`` (tests only) raises ``torch.OutOfMemoryError`` inside the guarded step
when the engine is about to produce its N-th output (counted from 0 at the first anchor, kept in the
engine state), once per process: CPU tests prove the step-down without a GPU.
"""

from __future__ import annotations

import gc
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

log = logging.getLogger("mattepod.adaptive")

OOM_ERRORS: tuple[type[BaseException], ...] = (torch.OutOfMemoryError,)
STEP = 0.75  # scale factor per side at each out-of-memory step (area x 0.56)

# Fitted by ``python bench/matanyone_memory.py --fit bench/results/matanyone_memory_bench.json``:
# peak = FIXED + pixels * (ACTIVATION + memory_frames * PER_MEMORY_FRAME), pixels of the padded
# matting size. Working memory per token (stride 16): key 64 + shrinkage 1 + value 256 channels.
FIXED_BYTES = 128 << 20
ACTIVATION_BYTES_PER_PX = {"fp32": 890.0, "half": 445.0}  # fit: 912.6 B/px with 5 memory frames
PER_MEMORY_FRAME_BYTES_PER_PX = {"fp32": (64 + 1 + 256) * 4 / 256, "half": (64 + 1 + 256) * 2 / 256}
IN_FLIGHT_FRAME_BYTES_PER_PX = 3 + 4  # frames kept on the device for the encode stage: uint8 RGB + fp32 alpha


@dataclass
class ScaleChange:
    """One change of the matting size: what the run records (with the frame number) in metadata.json."""

    old: list[int] | None  # [h, w] before (None at the first anchor)
    new: list[int]
    scale: float
    reason: str

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class AdaptiveScale:
    """The ``runtime`` keys that govern it (``enabled`` False: the configured size, OOM is an error)."""

    enabled: bool = False
    min_scale: float = 0.25
    max_scale: float = 1.0
    target_memory: float = 0.85
    in_flight_frames: int = 0  # frames the run keeps on the device besides the engine (queues)

    @classmethod
    def from_runtime(cls, runtime) -> "AdaptiveScale":
        return cls(runtime.adaptive_scale, runtime.min_scale, runtime.max_scale, runtime.target_memory,
                   2 * runtime.queue_size + 2)


def padded(h: int, w: int) -> int:
    return (-(-h // 16) * 16) * (-(-w // 16) * 16)


def predict_bytes(hw: tuple[int, int], dtype: torch.dtype | None, memory_frames: int, streams: int = 1) -> int:
    """Predicted peak device bytes above the loaded weights for ``streams`` streams matting at ``hw``."""
    kind = "fp32" if dtype in (None, torch.float32) else "half"
    per_px = ACTIVATION_BYTES_PER_PX[kind] + memory_frames * PER_MEMORY_FRAME_BYTES_PER_PX[kind]
    return int(FIXED_BYTES + streams * padded(*hw) * per_px)


def free_bytes(device: torch.device) -> int:
    """Memory free for this process on ``device`` now (CUDA: the driver's count; CPU: MemAvailable)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62  # unknown: no limit from the model


def scaled_hw(base: tuple[int, int], scale: float) -> tuple[int, int]:
    if scale >= 1.0:
        return base
    return max(16, int(base[0] * scale)), max(16, int(base[1] * scale))


def choose_scale(policy: AdaptiveScale, base: tuple[int, int], frame_hw: tuple[int, int], dtype: torch.dtype | None,
                 memory_frames: int, device: torch.device, streams: int = 1,
                 free: int | None = None) -> tuple[float, str]:
    """(scale, reason): the largest scale in [min, max] whose predicted peak fits the memory target."""
    hi = min(1.0, policy.max_scale)
    if not policy.enabled:
        return 1.0, "configured size"
    free = free_bytes(device) if free is None else free
    budget = policy.target_memory * free - policy.in_flight_frames * frame_hw[0] * frame_hw[1] * (
        IN_FLIGHT_FRAME_BYTES_PER_PX if device.type == "cuda" else 0)
    need = predict_bytes(scaled_hw(base, hi), dtype, memory_frames, streams)
    if need <= budget:
        return hi, "max_scale" if hi < 1.0 else "fits"
    kind = "fp32" if dtype in (None, torch.float32) else "half"
    per_px = streams * (ACTIVATION_BYTES_PER_PX[kind] + memory_frames * PER_MEMORY_FRAME_BYTES_PER_PX[kind])
    px = max(0.0, budget - FIXED_BYTES) / per_px
    s = math.sqrt(px / padded(*base)) if px > 0 else 0.0
    s = max(policy.min_scale, min(hi, math.floor(s * 100) / 100))
    reason = (f"memory model: {predict_bytes(scaled_hw(base, hi), dtype, memory_frames, streams) / 2**30:.2f} GiB "
              f"predicted at {base[1]}x{base[0]}, target {policy.target_memory:.2f} x "
              f"{free / 2**30:.2f} GiB free on {device.type}")
    return s, reason


def free_device_memory(device: torch.device) -> None:
    """After an OOM: drop what Python still references and give cached blocks back to the driver."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class FaultInjection:
    """``MATTEPOD_TEST_OOM_AT_FRAME=N``: one injected ``torch.OutOfMemoryError`` at output N (tests only)."""

    def __init__(self) -> None:
        raw = os.environ.get("MATTEPOD_TEST_OOM_AT_FRAME", "")
        self.at = int(raw) if raw.strip().lstrip("-").isdigit() else None
        self.fired = False

    def check(self, output_index: int) -> None:
        if self.at is not None and not self.fired and output_index == self.at:
            self.fired = True
            log.warning("MATTEPOD_TEST_OOM_AT_FRAME: injecting an out-of-memory error at output %d", output_index)
            raise torch.OutOfMemoryError(f"injected out-of-memory at output {output_index} (MATTEPOD_TEST_OOM_AT_FRAME)")


_injection: FaultInjection | None = None


def injection() -> FaultInjection:
    """One per process (an injected OOM fires once, whichever engine reaches the frame first)."""
    global _injection
    if _injection is None:
        _injection = FaultInjection()
    return _injection
