"""Frame work on the engine's device: upload once, prepare, upsample and composite in torch, download once.

On a GPU the per-pixel work around the network is as heavy as a small network at 8K (an 8K SBS frame
is 88 MB of uint8; its float alpha 118 MB), and numpy compositing on the CPU caps the whole run. So:

* a frame goes to the device **once** (``DeviceCache.upload``: through a pinned staging buffer and a
  ``non_blocking`` copy on CUDA, zero-copy ``from_numpy`` on the CPU) and the device tensor is kept
  beside the host array it came from, for as long as that array lives (a weak reference), so the
  encode stage finds it again (``DeviceCache.lookup``) instead of uploading the frame a second time;
* the engine's resize to the matting size and normalisation (``to_matting``), the alpha's bilinear
  upsampling back to frame size (``upsample_alpha``), and the outputs' compositing (``over``,
  ``alpha16``, ``rgba8``, ``rgba16``) are torch operations on that device;
* each output frame comes back with **one** device-to-host copy of its uint8/uint16 samples
  (``download``).

The same functions run on the CPU, where tests hold them to the numpy/OpenCV path they replace
(alphas within 1e-5 in fp32, composites within one code value: tests/test_devframes.py).
"""

from __future__ import annotations

import threading
import warnings
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------- upload


def host_tensor(arr: np.ndarray) -> torch.Tensor:
    """A CPU tensor over ``arr`` without a copy (decoder buffers are read-only; we never write to them)."""
    arr = arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "non-writable array": the tensor is only read
        return torch.from_numpy(arr)


@dataclass
class _Staging:
    """Pinned host buffers, reused round-robin; an event per buffer says when its copy has left."""

    buffers: list[torch.Tensor] = field(default_factory=list)
    events: list[torch.cuda.Event | None] = field(default_factory=list)
    next: int = 0


class DeviceCache:
    """Uploads host arrays to one device and remembers the device copy while the host array lives.

    Keys are host arrays (by identity, held weakly); a dead host array drops its device tensor at once,
    so device memory is bounded by the frames in flight (the run's bounded queues). ``max_entries`` is a
    second bound for callers that keep many arrays alive.
    """

    def __init__(self, device: torch.device | str, staging_buffers: int = 3, max_entries: int = 64):
        self.device = torch.device(device)
        self.max_entries = max_entries
        self._entries: dict[int, tuple[weakref.ref, torch.Tensor]] = {}
        self._lock = threading.Lock()
        self._upload_lock = threading.Lock()
        self._staging: dict[tuple[tuple[int, ...], np.dtype], _Staging] = {}
        self._n_staging = staging_buffers
        self.uploads = 0  # counters for tests and benches
        self.hits = 0

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def upload(self, arr: np.ndarray, remember: bool = True) -> torch.Tensor:
        """``arr`` on the device (the remembered copy when there is one)."""
        hit = self.lookup(arr)
        if hit is not None:
            return hit
        t = self._copy_to_device(arr)
        self.uploads += 1
        if remember:
            self.remember(arr, t)
        return t

    def remember(self, arr: np.ndarray, t: torch.Tensor) -> None:
        """Record ``t`` as the device copy of host array ``arr`` (e.g. an alpha made on the device)."""
        if self.device.type == "cpu":
            return  # nothing to save on the CPU (the "upload" is a view), and a view would pin the array
        key = id(arr)
        try:
            ref = weakref.ref(arr, lambda _r, k=key: self._drop(k, _r))
        except TypeError:
            return  # not weak-referenceable: never cached
        with self._lock:
            self._entries[key] = (ref, t)
            while len(self._entries) > self.max_entries:
                self._entries.pop(next(iter(self._entries)))

    def lookup(self, arr: np.ndarray) -> torch.Tensor | None:
        with self._lock:
            entry = self._entries.get(id(arr))
        if entry is not None and entry[0]() is arr:
            self.hits += 1
            return entry[1]
        return None

    def _drop(self, key: int, ref: weakref.ref) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] is ref:
                del self._entries[key]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._staging.clear()

    def _copy_to_device(self, arr: np.ndarray) -> torch.Tensor:
        src = host_tensor(arr)
        if not self.is_cuda:
            return src if self.device.type == "cpu" else src.to(self.device)
        # the engine thread and the encode thread (a cache miss) both upload; events on this device's stream
        with self._upload_lock, torch.cuda.device(self.device):
            return self._stage_and_copy(arr, src)

    def _stage_and_copy(self, arr: np.ndarray, src: torch.Tensor) -> torch.Tensor:
        st = self._staging.setdefault((tuple(arr.shape), arr.dtype), _Staging())
        if len(st.buffers) < self._n_staging:
            st.buffers.append(torch.empty(src.shape, dtype=src.dtype, pin_memory=True))
            st.events.append(None)
        i = st.next % len(st.buffers)
        st.next += 1
        if st.events[i] is not None:
            st.events[i].synchronize()  # the buffer's previous copy has left the host
        st.buffers[i].copy_(src)
        out = torch.empty(src.shape, dtype=src.dtype, device=self.device)
        out.copy_(st.buffers[i], non_blocking=True)
        ev = torch.cuda.Event()
        ev.record()
        st.events[i] = ev
        return out


_caches: dict[str, DeviceCache] = {}
_caches_lock = threading.Lock()


def cache_for(device: torch.device | str) -> DeviceCache:
    """The process-wide cache of one device: the engine uploads through it, the encode stage looks up."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    with _caches_lock:
        if str(dev) not in _caches:
            _caches[str(dev)] = DeviceCache(dev)
        return _caches[str(dev)]


def download(t: torch.Tensor) -> np.ndarray:
    """One device-to-host copy (nothing on the CPU); the array the writers take. int16 tensors are 16-bit
    samples held as int16 bit patterns (``to_u16``) and come back as the uint16 they are."""
    t = t.contiguous()
    arr = t.numpy() if t.device.type == "cpu" else t.to("cpu").numpy()
    return arr.view(np.uint16) if arr.dtype == np.int16 else arr


def to_u16(t: torch.Tensor, bit_pattern: bool | None = None) -> torch.Tensor:
    """Integer values 0..65535 -> 16-bit samples. On CUDA they are kept as int16 bit patterns (int16 is
    fully supported there; torch's uint16 is not everywhere), which ``download`` reads back as uint16."""
    if bit_pattern if bit_pattern is not None else t.is_cuda:
        return t.to(torch.int32).to(torch.int16)  # two's-complement wrap: the low 16 bits
    return t.to(torch.uint16)


# ---------------------------------------------------------------------------------------------- engine side


def to_matting(frame: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(H, W, 3) uint8 or uint16 on the device -> (3, h, w) float in [0, 1] at the matting size.

    Area averaging on the 0..255 scale, then /255: the order and the ops of the official CLI (and of
    ``matanyone.prep.resize_frame``), so fp32 results are the same to the bit. 16-bit frames are put
    on the same 0..255 scale first (x / 257), keeping their extra precision.
    """
    img = frame.permute(2, 0, 1).float()
    if frame.dtype != torch.uint8:
        img = img / 257.0
    if tuple(img.shape[-2:]) != tuple(hw):
        img = F.interpolate(img[None], size=hw, mode="area")[0]
    return img / 255.0


def upsample_alpha(alpha: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(h, w) alpha -> (H, W) float32 in [0, 1]: bilinear with half-pixel centres (OpenCV's INTER_LINEAR)."""
    alpha = alpha.float()
    if tuple(alpha.shape) != tuple(hw):
        alpha = F.interpolate(alpha[None, None], size=hw, mode="bilinear", align_corners=False)[0, 0]
    return alpha.clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------------------- outputs


def over(frame: torch.Tensor, alpha: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """frame*alpha + background*(1-alpha) -> uint8 (H, W, 3); background a colour (3,) or (H, W, 3).

    Computed on rows of W*3 interleaved samples (the alpha repeated per channel): broadcasting a last
    axis of 3 is several times slower in torch on the CPU than the numpy code this replaces.
    """
    h, w = alpha.shape[-2:]
    a = alpha.float()[..., None].expand(h, w, 3).reshape(h, w * 3)
    f = frame.reshape(h, w * 3).to(torch.float32, copy=True)
    if frame.dtype != torch.uint8:
        f = f / 257.0
    bg = background.float()
    bg = bg.repeat(w) if bg.dim() == 1 else bg.reshape(h, w * 3)
    out = f.mul_(a).add_(bg * (1.0 - a))
    return out.add_(0.5).clamp_(0, 255).to(torch.uint8).reshape(h, w, 3)


def alpha16(alpha: torch.Tensor) -> torch.Tensor:
    return to_u16((alpha.float() * 65535.0).round_())


def alpha8(alpha: torch.Tensor) -> torch.Tensor:
    return torch.round(alpha.float() * 255.0).to(torch.uint8)


def _rgb8(frame: torch.Tensor) -> torch.Tensor:
    if frame.dtype == torch.uint8:
        return frame
    return torch.round(frame.float() / 257.0).to(torch.uint8)


def rgba8(frame: torch.Tensor, alpha: torch.Tensor, bgra: bool = False) -> torch.Tensor:
    rgb = _rgb8(frame)
    if bgra:
        rgb = rgb.flip(-1)
    return torch.cat([rgb, alpha8(alpha)[..., None]], dim=-1)


def rgba16(frame: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    rgb = frame.to(torch.int32) * 257 if frame.dtype == torch.uint8 else frame.to(torch.int32)
    return torch.cat([to_u16(rgb), alpha16(alpha)[..., None]], dim=-1)


@dataclass
class FrameAlpha:
    """One output frame as the encode stage sees it: the host arrays, and their device copies found in
    (or added to) the device's cache on first use, so each is uploaded at most once."""

    frame: np.ndarray
    alpha: np.ndarray
    cache: DeviceCache
    _frame_t: torch.Tensor | None = None
    _alpha_t: torch.Tensor | None = None

    @property
    def frame_t(self) -> torch.Tensor:
        if self._frame_t is None:
            self._frame_t = self.cache.upload(self.frame, remember=False)
        return self._frame_t

    @property
    def alpha_t(self) -> torch.Tensor:
        if self._alpha_t is None:
            self._alpha_t = self.cache.upload(self.alpha, remember=False).float()
        return self._alpha_t
