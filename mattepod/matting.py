"""The pipeline's matting engines: ``build_engine`` picks one from ``EngineConfig``.

``MatAnyoneEngine`` adapts our MatAnyone core (``mattepod.matanyone``) to the ``Engine`` protocol:
uint8 RGB frames in, float32 alpha out at the frame's own size. It applies the official CLI's input
preparation (dilate-then-erode of the prompt mask, ``max_size`` area resize, ``warmup`` steps on the
prompt frame), runs in the configured precision and device, and keeps its memory serialisable.
A keyframe mask re-anchors it: the output of ``step(frame, mask)`` equals a fresh ``start`` there.

The MatAnyone weights are the authors' (NTU S-Lab License 1.0, non-commercial). MattePod never ships
them; users fetch them with ``scripts/download_models.py`` (see ``mattepod.weights``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mattepod.config import EngineConfig
from mattepod.engine import Engine, MaskFollowEngine
from mattepod.errors import ConfigError, DeviceMemoryError, InvalidMediaError, MaskError, WeightsError
from mattepod import adaptive as adaptive_mod
from mattepod import devframes
from mattepod import weights as weights_manifest
from mattepod.matanyone import prep
from mattepod.matanyone.core import CoreConfig, InferenceCore, pad_amounts
from mattepod.matanyone.loader import load_network
from mattepod.matanyone.network import MatAnyoneNet
from mattepod.matanyone import pair as core_pair

STATE_VERSION = 1
log = logging.getLogger("mattepod.matting")


def _cells(hw: tuple[int, int]) -> int:
    """16x16 cells of the padded matting size (the readout's top-k needs at least top_k of them)."""
    l, r, t, b = pad_amounts(*hw)
    return (hw[0] + t + b) // 16 * ((hw[1] + l + r) // 16)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def resolve_device(name: str) -> torch.device:
    from mattepod.device import resolve  # the one device resolver

    return torch.device(resolve(name))


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype (None = plain float32)."""
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else None
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cpu":
        raise ConfigError("engine.precision fp16 is not supported on the CPU", "use fp32 or bf16 on the CPU")
    return torch.float16


class MatAnyoneEngine:
    """MatAnyone behind the streaming ``Engine`` protocol (one subject)."""

    name = "matanyone"
    accepts_16bit = True  # uint16 RGB frames (10-bit sources) keep their precision into the network

    def __init__(self, net: MatAnyoneNet, cfg: EngineConfig | None = None, *, readout_block_mb: int = 64,
                 adaptive: adaptive_mod.AdaptiveScale | None = None):
        """``readout_block_mb``: memory of one block of the chunked top-k readout (the full affinity
        matrix is never built; larger blocks = fewer, bigger matmuls). ``adaptive``: the runtime's
        adaptive-scale policy (None: the configured size; an out-of-memory error is then fatal)."""
        self.cfg = cfg or EngineConfig()
        self.adaptive = adaptive or adaptive_mod.AdaptiveScale()
        self.scale: float | None = None  # of the max_size matting size; chosen at the first anchor
        self.streams = 1  # 2 when stepped as a pair (the memory model doubles the activations)
        self.frames_out = 0  # outputs since the first anchor (fault injection; kept in the state)
        self._events: list[adaptive_mod.ScaleChange] = []
        self.device = resolve_device(self.cfg.device)
        self.autocast_dtype = resolve_precision(self.cfg.precision, self.device)
        net = net.to(self.device).eval()
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.cfg.tf32
            torch.backends.cudnn.allow_tf32 = self.cfg.tf32
            torch.backends.cudnn.benchmark = True  # one frame size per stream: pick the fastest kernels once
            net = net.to(memory_format=torch.channels_last)
            if self.cfg.compile:
                for attr in ("pixel_encoder", "mask_encoder", "mask_decoder"):
                    setattr(net, attr, torch.compile(getattr(net, attr), dynamic=False))
        self.net = net
        self.frames = devframes.cache_for(self.device)
        self.readout_block_mb = readout_block_mb
        block = readout_block_mb * (1 << 20) // 4
        self.core = InferenceCore(net, CoreConfig(self.cfg.mem_every, self.cfg.max_mem_frames, self.cfg.top_k,
                                                  block_elements=block), autocast_dtype=self.autocast_dtype)
        self.frame_hw: tuple[int, int] | None = None
        self.internal_hw: tuple[int, int] | None = None
        self.last_internal_alpha: torch.Tensor | None = None  # at the internal size (tests, previews)

    # -------------------------------------------------------------- protocol
    def start(self, frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
        while True:
            try:
                img = self._frame(frame, starting=True)
                adaptive_mod.injection().check(self.frames_out)
                alpha = self.core.start(img, self._mask(mask), self.cfg.warmup)
                break
            except adaptive_mod.OOM_ERRORS as exc:
                error = _first_line(exc)
            self._step_down(error)  # outside the except block: the traceback's tensors are gone
        self.frames_out += 1
        return self._alpha(alpha)

    def step(self, frame: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        if mask is not None:
            return self.start(frame, mask)  # re-anchor: identical to a fresh start on the keyframe
        if self.frame_hw is None:
            raise RuntimeError("step() before start()")
        try:
            adaptive_mod.injection().check(self.frames_out)
            alpha = self.core.step(self._frame(frame))
        except adaptive_mod.OOM_ERRORS as exc:
            error = _first_line(exc)
        else:
            self.frames_out += 1
            return self._alpha(alpha)
        # Out of memory: a smaller size, re-anchored on this frame with the last alpha as its mask.
        last = self.reanchor_mask()
        self._step_down(error)
        return self.start(frame, last)

    # -------------------------------------------------------------- adaptive scale
    # the engine hook of the run: events out (kind "scale_change"), a metadata.json section back
    def drain_events(self) -> list[dict[str, Any]]:
        """Size changes since the last call (the run stamps the frame and records them)."""
        out, self._events = [{"kind": "scale_change", **e.to_json()} for e in self._events], []
        return out

    def report(self, events) -> dict[str, Any]:
        """metadata.json ``scale_changes`` (every change of the matting size: frame, old, new, reason) and
        ``matting_size``, the size in force at the end (also when the first choice was made on a backward
        pass, whose start the run does not record)."""
        out = scale_report(events)
        if self.internal_hw is not None:
            out["matting_size"] = {"frame": list(self.frame_hw), "internal": list(self.internal_hw),
                                   "scale": self.scale}
        return out

    def reanchor_mask(self) -> np.ndarray:
        """The last alpha at frame size (from the core's state, so also right after a resume)."""
        last = self.core.state.last_mask
        if last is None or self.frame_hw is None:
            raise RuntimeError("no alpha to re-anchor on before start()")
        with torch.inference_mode():
            return devframes.download(devframes.upsample_alpha(self.core._output(last.float()), self.frame_hw))

    def _step_down(self, error: str) -> None:
        """Free, then the next size down (or a clear error at min_scale / without adaptive scale)."""
        self.core.reset()
        adaptive_mod.free_device_memory(self.device)
        old = self.internal_hw
        scale = self.scale if self.scale is not None else 1.0
        new = round(scale * adaptive_mod.STEP, 4)
        if not self.adaptive.enabled or new < self.adaptive.min_scale:
            why = ("runtime.adaptive_scale is off" if not self.adaptive.enabled
                   else f"already at runtime.min_scale ({self.adaptive.min_scale})")
            raise DeviceMemoryError(f"out of {self.device.type} memory at matting size "
                                    f"{(old or (0, 0))[1]}x{(old or (0, 0))[0]} ({why}): {error}",
                                    "set runtime.adaptive_scale: true, lower runtime.min_scale or engine.max_size, "
                                    "or stereo.batch_eyes: false; then --resume the run")
        base = prep.max_size_hw(self.frame_hw[0], self.frame_hw[1], self.cfg.max_size)
        hw = adaptive_mod.scaled_hw(base, new)
        if _cells(hw) < self.cfg.top_k:
            raise DeviceMemoryError(f"out of {self.device.type} memory at matting size {old[1]}x{old[0]}, and "
                                    f"{hw[1]}x{hw[0]} is below what engine.top_k={self.cfg.top_k} needs: {error}",
                                    "lower engine.top_k or free device memory; then --resume the run")
        self.scale = new
        change = adaptive_mod.ScaleChange(list(old) if old else None, list(hw), new, f"out of memory: {error}")
        log.warning("matting size %s -> %s (scale %.3f): %s", old, hw, new, change.reason)
        self._events.append(change)

    def get_state(self) -> dict[str, Any]:
        if self.frame_hw is None:
            raise RuntimeError("get_state() before start()")
        return {"engine": self.name, "version": STATE_VERSION, "frame_hw": self.frame_hw,
                "internal_hw": self.internal_hw, "settings": self._settings(), "core": self.core.get_state(),
                "scale": self.scale, "frames_out": self.frames_out}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("engine") != self.name or state.get("version") != STATE_VERSION:
            raise ValueError(f"state of engine {state.get('engine')!r} v{state.get('version')} "
                             f"cannot be restored into {self.name} v{STATE_VERSION}")
        if state["settings"] != self._settings():
            diff = {k: (v, self._settings().get(k)) for k, v in state["settings"].items()
                    if self._settings().get(k) != v}
            raise ValueError(f"engine settings changed since the state was saved: {diff}")
        self.frame_hw = tuple(state["frame_hw"])
        self.internal_hw = tuple(state["internal_hw"])
        self.scale = state.get("scale", 1.0)  # the size in force when it was saved (resume keeps it)
        self.frames_out = state.get("frames_out", 0)
        self.core.set_state(state["core"])

    # -------------------------------------------------------------- pair (VR180 eyes)
    def twin(self) -> "MatAnyoneEngine":
        """A second engine on the same network (no second copy of the weights) with its own memory."""
        other = copy.copy(self)  # settings and the (possibly compiled) network shared; not __init__ again
        other.core = InferenceCore(self.net, dataclasses.replace(self.core.cfg), autocast_dtype=self.autocast_dtype)
        other.frame_hw = other.internal_hw = other.last_internal_alpha = other.scale = None
        other.frames_out, other._events = 0, []
        return other

    def make_pair(self) -> "MatAnyonePair":
        """This engine and its twin, stepped as one batch of two (``MatAnyonePair``)."""
        pair = MatAnyonePair(self, self.twin())
        for eye in pair.eyes:
            eye.streams = 2
        return pair

    # -------------------------------------------------------------- helpers
    def _settings(self) -> dict[str, Any]:
        c = self.cfg
        return {"model_layout": getattr(self.net, "layout", "single"), "warmup": c.warmup, "erode": c.erode,
                "dilate": c.dilate, "max_size": c.max_size, "mem_every": c.mem_every,
                "max_mem_frames": c.max_mem_frames, "top_k": c.top_k}

    def _frame(self, frame: np.ndarray, starting: bool = False) -> torch.Tensor:
        if frame.dtype not in (np.uint8, np.uint16) or frame.ndim != 3 or frame.shape[2] != 3:
            raise InvalidMediaError(f"frame must be uint8 or uint16 (H, W, 3) RGB, got {frame.dtype} {frame.shape}",
                                    "decode the video to rgb24 (or rgb48 for 16-bit)")
        hw = tuple(frame.shape[:2])
        if starting:
            self.frame_hw = hw
            base = prep.max_size_hw(hw[0], hw[1], self.cfg.max_size)
            if self.scale is None:  # first anchor: the largest size the memory model says fits
                self.scale, reason = adaptive_mod.choose_scale(
                    self.adaptive, base, hw, self.autocast_dtype, self.cfg.max_mem_frames, self.device, self.streams)
                while self.scale < 1.0 and _cells(adaptive_mod.scaled_hw(base, self.scale)) < self.cfg.top_k:
                    self.scale = min(1.0, round(self.scale / adaptive_mod.STEP, 4))  # never below top_k's need
                if self.scale < 1.0:
                    new = adaptive_mod.scaled_hw(base, self.scale)
                    log.info("matting size %s -> %s (scale %.3f): %s", base, new, self.scale, reason)
                    self._events.append(adaptive_mod.ScaleChange(list(base), list(new), self.scale, reason))
            self.internal_hw = adaptive_mod.scaled_hw(base, self.scale)
            self._check_size()
        elif hw != self.frame_hw:
            raise InvalidMediaError(f"frame size changed from {self.frame_hw} to {hw} mid-stream",
                                    "give frames of one size (re-encode the input)")
        # Uploaded once (pinned + non_blocking on CUDA) and remembered: the encode stage composites from it.
        return devframes.to_matting(self.frames.upload(frame), self.internal_hw)

    def _check_size(self) -> None:
        h, w = self.internal_hw
        cells = _cells(self.internal_hw)
        if cells < self.cfg.top_k:
            raise InvalidMediaError(
                f"matting size {w}x{h} gives {cells} cells of 16x16 px, fewer than engine.top_k={self.cfg.top_k}",
                "use a larger input or a larger engine.max_size (or a smaller engine.top_k)")

    def _mask(self, mask: np.ndarray) -> torch.Tensor:
        if mask.ndim != 2 or tuple(mask.shape) != self.frame_hw:
            raise MaskError(f"mask of shape {mask.shape} does not match the frame {self.frame_hw}",
                            "give a mask of the same width and height as the video")
        m = torch.from_numpy(np.array(mask, dtype=np.float32)).to(self.device)
        m255 = prep.dilate_erode(m, self.cfg.dilate, self.cfg.erode)
        if not bool((m255 > 0).any()):
            raise MaskError("the prompt mask is empty" + (" after dilate/erode" if bool((m > 0).any()) else ""),
                            "select the subject on the prompt frame (or lower engine.erode)")
        return prep.resize_mask(m255, self.internal_hw)

    def _alpha(self, alpha: torch.Tensor) -> np.ndarray:
        self.last_internal_alpha = alpha
        full = devframes.upsample_alpha(alpha, self.frame_hw)
        host = devframes.download(full)
        self.frames.remember(host, full)  # the encode stage composites on the device from this copy
        return host


class MatAnyonePair:
    """Two ``MatAnyoneEngine`` streams (the eyes of a VR180 frame) on one network, stepped together:
    the frames go through the network as one batch of two (``mattepod.matanyone.pair``), while each
    eye keeps its own memory. ``eyes`` are ordinary engines: they can still be stepped one by one
    (the stereo engine does so when it re-prompts one eye), and their ``get_state``/``set_state`` are
    those of separate engines, so a resumed run continues bit-identically on either path."""

    def __init__(self, a: MatAnyoneEngine, b: MatAnyoneEngine):
        if a.net is not b.net:
            raise ValueError("the two eyes of a MatAnyonePair must share one network (use engine.make_pair())")
        self.eyes = (a, b)

    def start_pair(self, frames: tuple[np.ndarray, np.ndarray],
                   masks: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.eyes
        if frames[0].shape != frames[1].shape:
            return a.start(frames[0], masks[0]), b.start(frames[1], masks[1])
        while True:
            try:
                imgs = a._frame(frames[0], starting=True), b._frame(frames[1], starting=True)
                if a.internal_hw != b.internal_hw:
                    return a.start(frames[0], masks[0]), b.start(frames[1], masks[1])
                adaptive_mod.injection().check(a.frames_out)
                m = a._mask(masks[0]), b._mask(masks[1])
                alpha = core_pair.start_pair(a.core, b.core, imgs, m, a.cfg.warmup)
                break
            except adaptive_mod.OOM_ERRORS as exc:
                error = _first_line(exc)
            a._step_down(error)
            b._step_down(error)
        a.frames_out += 1
        b.frames_out += 1
        return a._alpha(alpha[0]), b._alpha(alpha[1])

    def step_pair(self, frames: tuple[np.ndarray, np.ndarray],
                  masks: tuple[np.ndarray | None, np.ndarray | None] = (None, None)) -> tuple[np.ndarray, np.ndarray]:
        """Both eyes' alphas for one stereo frame; a mask on both eyes re-anchors both (a keyframe).
        Out of memory: both eyes step down and re-anchor on this frame with their last alphas."""
        a, b = self.eyes
        if masks[0] is not None and masks[1] is not None:
            return self.start_pair(frames, masks)  # re-anchor: identical to a fresh start on the keyframe
        if (masks[0] is not None or masks[1] is not None or frames[0].shape != frames[1].shape
                or a.internal_hw != b.internal_hw):
            return a.step(frames[0], masks[0]), b.step(frames[1], masks[1])
        if a.frame_hw is None or b.frame_hw is None:
            raise RuntimeError("step_pair() before start_pair()")
        try:
            adaptive_mod.injection().check(a.frames_out)
            alpha = core_pair.step_pair(a.core, b.core, (a._frame(frames[0]), b._frame(frames[1])))
        except adaptive_mod.OOM_ERRORS as exc:
            error = _first_line(exc)
        else:
            a.frames_out += 1
            b.frames_out += 1
            return a._alpha(alpha[0]), b._alpha(alpha[1])
        last = a.reanchor_mask(), b.reanchor_mask()
        a._step_down(error)
        b._step_down(error)
        return self.start_pair(frames, last)

    def drain_events(self) -> list[dict[str, Any]]:
        return [{**e, "eye": i} for i, eye in enumerate(self.eyes) for e in eye.drain_events()]

    def report(self, events) -> dict[str, Any]:
        return scale_report(events)


def scale_report(events) -> dict[str, Any]:
    """The run's ``scale_change`` records as the metadata.json section ``scale_changes`` (none: nothing)."""
    recs = events("scale_change")
    return {"scale_changes": recs} if recs else {}


def find_matanyone_weights(model: str, weights_dir: str | Path) -> Path:
    """A checkpoint for ``model`` (matanyone | matanyone2): a file given directly, the Hugging Face
    folder ``<weights_dir>/<model>/`` (config.json + model.safetensors), or a release ``<model>.pth``
    in that folder or in ``weights_dir``."""
    p = Path(weights_dir)
    if p.is_file():
        return p
    try:
        return weights_manifest.require(model, p)
    except WeightsError:
        for cand in (weights_manifest.model_dir(model, p) / f"{model}.pth", p / f"{model}.pth"):
            if cand.is_file():
                return cand
        raise


def build_engine(cfg: EngineConfig, weights_dir: str | Path | None,
                 adaptive: adaptive_mod.AdaptiveScale | None = None) -> Engine:
    """The engine named by ``cfg.name``; MatAnyone weights are read from ``weights_dir``;
    ``adaptive`` (from the ``runtime`` keys) sizes the matting resolution and steps it down on OOM."""
    if cfg.name == "mask":
        return MaskFollowEngine()
    if weights_dir is None:
        raise WeightsError("no weights folder given for the matanyone engine",
                           "pass --weights-dir or set weights_dir / MODEL_CACHE_DIR")
    device = resolve_device(cfg.device)
    net = load_network(find_matanyone_weights(cfg.model, weights_dir), "cpu")
    return MatAnyoneEngine(net.to(device), cfg, adaptive=adaptive)
