"""Streaming inference core: one frame in, one alpha out, bounded memory.

It follows the official ``InferenceCore.step`` call semantics (SPEC.md 1.3) for one object:

* ``step_mask(image, mask255)``: the mask (0..255 scale) is encoded with a deep sensory update and
  becomes the permanent memory frame; the output is the mask itself.
* ``step_first_frame(image)``: a warm-up step. Time counters restart at 0, the frame is segmented
  without attention (pixel fusion of the previous mask value), then working and object memory are
  cleared (sensory memory is kept) and this prediction becomes the new permanent memory frame.
* ``step(image)``: a normal step: top-k readout of the working memory, the uncertainty gate, pixel
  fusion, object transformer, decoder; a memory frame every ``mem_every`` frames (FIFO), otherwise
  the mask encoder still runs (no deep update) to give the next step its mask value.

``start(image, mask255, warmup)`` is the official CLI's warm-up chain on one frame: the mask step
followed by ``warmup + 1`` first-frame steps; the last output is the alpha of that frame. The image
features are computed once for the chain (the official code recomputes identical features).

Images are float tensors (3, H, W) in [0, 1] on the core's device; alphas come back (H, W) float32.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mattepod.matanyone.memory import DEFAULT_BLOCK_ELEMENTS, StreamState, WorkingMemory, dense_affinity, similarity
from mattepod.matanyone.network import MatAnyoneNet


@dataclass
class CoreConfig:
    mem_every: int = 5
    max_mem_frames: int = 5
    top_k: int = 30
    stagger_updates: int = 5
    block_elements: int = DEFAULT_BLOCK_ELEMENTS


def pad_amounts(h: int, w: int, d: int = 16) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding up to a multiple of d; the extra pixel goes right/bottom."""
    dh, dw = (-h) % d, (-w) % d
    return dw // 2, dw - dw // 2, dh // 2, dh - dh // 2


def stagger_steps(mem_every: int, stagger_updates: int) -> set[int]:
    """Frame offsets after a memory frame at which the sensory memory is updated."""
    if stagger_updates >= mem_every:
        return set(range(1, mem_every + 1))
    step = (mem_every - 1) / (stagger_updates - 1) if stagger_updates > 1 else 0.0
    return {int(round(1 + i * step)) for i in range(stagger_updates)}


@dataclass
class _Feats:
    image: torch.Tensor  # (1, 3, Hp, Wp) padded, [0, 1]
    ms: tuple[torch.Tensor, ...]
    pix_feat: torch.Tensor
    key: torch.Tensor
    shrinkage: torch.Tensor
    selection: torch.Tensor


class InferenceCore:
    """Holds the network and the stream state; see the module docstring for the step semantics."""

    def __init__(self, net: MatAnyoneNet, cfg: CoreConfig | None = None, *,
                 autocast_dtype: torch.dtype | None = None):
        self.net = net
        self.cfg = cfg or CoreConfig()
        self.autocast_dtype = autocast_dtype
        self.device = next(net.parameters()).device
        self.state = StreamState(memory=WorkingMemory(self.cfg.max_mem_frames))
        self.pad: tuple[int, int, int, int] | None = None
        self.trace: dict[str, torch.Tensor] | None = None  # set to {} to record intermediate tensors
        self._stagger = stagger_steps(self.cfg.mem_every, self.cfg.stagger_updates)

    # ------------------------------------------------------------------ public steps
    def reset(self) -> None:
        self.state = StreamState(memory=WorkingMemory(self.cfg.max_mem_frames))
        self.pad = None

    def start(self, image: torch.Tensor, mask255: torch.Tensor, warmup: int,
              keep_warmup: list | None = None) -> torch.Tensor:
        """Mask step + (warmup + 1) first-frame steps on one frame; returns the last alpha."""
        self.reset()
        with self._ctx():
            return self._start_chain(self._encode(image), mask255, warmup, keep_warmup)

    def step_mask(self, image: torch.Tensor, mask255: torch.Tensor) -> torch.Tensor:
        with self._ctx():
            return self._mask_step(self._encode(image), mask255)

    def step_first_frame(self, image: torch.Tensor) -> torch.Tensor:
        with self._ctx():
            return self._first_frame_step(self._encode(image))

    def step(self, image: torch.Tensor) -> torch.Tensor:
        with self._ctx():
            return self._normal_step(self._encode(image))

    # ------------------------------------------------------------------ state
    def get_state(self) -> dict[str, Any]:
        """Plain values and CPU tensors; ``set_state`` restores them bit-identically."""
        st = self.state
        tensors = {k: (None if v is None else v.detach().to("cpu", copy=True)) for k, v in st.tensors().items()}
        return {"tensors": tensors, "curr_ti": st.curr_ti, "last_mem_ti": st.last_mem_ti,
                "perm_tokens": st.memory.perm_tokens, "frame_tokens": st.memory.frame_tokens,
                "pad": self.pad, "cfg": vars(self.cfg).copy()}

    def set_state(self, saved: dict[str, Any]) -> None:
        t = {k: (None if v is None else v.to(self.device)) for k, v in saved["tensors"].items()}
        mem = WorkingMemory(self.cfg.max_mem_frames, t["mem_key"], t["mem_shrinkage"], t["mem_value"],
                            saved["perm_tokens"], saved["frame_tokens"])
        self.state = StreamState(mem, t["sensory"], t["obj_mem"], t["last_mask"], t["last_pix_feat"],
                                 t["last_msk_value"], saved["curr_ti"], saved["last_mem_ti"])
        self.pad = None if saved["pad"] is None else tuple(saved["pad"])

    # ------------------------------------------------------------------ internals
    def _ctx(self) -> ExitStack:
        stack = ExitStack()
        stack.enter_context(torch.inference_mode())
        if self.autocast_dtype is not None:
            stack.enter_context(torch.autocast(self.device.type, dtype=self.autocast_dtype))
        return stack

    def _rec(self, name: str, t: torch.Tensor) -> None:
        if self.trace is not None:
            self.trace[name] = t.detach().float().clone()

    def _encode(self, image: torch.Tensor) -> _Feats:
        h, w = image.shape[-2:]
        pad = pad_amounts(h, w)
        if self.pad is not None and self.pad != pad:
            raise ValueError("frame size changed mid-stream; call start() again")
        self.pad = pad
        img = F.pad(image.to(self.device, torch.float32), pad)
        if img.dim() == 3:
            img = img.unsqueeze(0)  # one stream; the pair path passes (2, 3, H, W)
        ms, pix_feat, key, shrinkage, selection = self.net.encode_image(img)
        for name, t in zip(("f16", "f8", "f4", "f2", "f1"), ms):
            self._rec(name, t)
        for name, t in (("pix_feat", pix_feat), ("key", key), ("shrinkage", shrinkage), ("selection", selection)):
            self._rec(name, t)
        return _Feats(img, ms, pix_feat, key, shrinkage, selection)

    def _unpad(self, prob: torch.Tensor) -> torch.Tensor:
        l, r, t, b = self.pad
        h, w = prob.shape[-2:]
        return prob[..., t:h - b, l:w - r]

    def _output(self, alpha_padded: torch.Tensor) -> torch.Tensor:
        alpha = self._unpad(alpha_padded[:, 0]).float()
        if alpha.shape[0] == 1:
            alpha = alpha[0]  # (H, W) for one stream, (B, H, W) for a merged pair
        if self.trace is not None:
            self._rec("step_output", torch.stack([1 - alpha, alpha]))
        return alpha

    def _add_memory(self, f: _Feats, mask: torch.Tensor, deep_update: bool = True) -> None:
        """Encode (frame, mask) and store it: working memory, object memory, sensory, mask value."""
        st = self.state
        if st.sensory is None:
            st.sensory = torch.zeros((f.key.shape[0], 1, _sensory_dim(self.net), *f.key.shape[-2:]),
                                     device=self.device)
        self._rec("mask_encoder_in_sensory", st.sensory)
        self._rec("mask_encoder_in_masks", mask)
        value, sensory, summaries = self.net.encode_mask(f.image, f.pix_feat, st.sensory, mask,
                                                         deep_update=deep_update)
        self._rec("mask_value", value)
        self._rec("mask_encoder_sensory_out", sensory)
        self._rec("obj_summaries", summaries)
        st.obj_mem = summaries.float() if st.obj_mem is None else st.obj_mem + summaries.float()
        st.memory.add(f.key, f.shrinkage, value)
        st.last_mem_ti = st.curr_ti
        if deep_update:
            st.sensory = sensory
        st.last_msk_value = value

    def _mask_step(self, f: _Feats, mask255: torch.Tensor) -> torch.Tensor:
        st = self.state
        st.curr_ti += 1
        m = F.pad(mask255.to(self.device, torch.float32), self.pad)
        m = (m.unsqueeze(0) if m.dim() == 2 else m).unsqueeze(1) / 255.0  # (B, 1, H, W)
        st.last_mask = m
        st.last_pix_feat = f.pix_feat
        self._add_memory(f, m)
        return self._output(m)

    def _decode(self, f: _Feats, readout: torch.Tensor, update_sensory: bool) -> torch.Tensor:
        st = self.state
        obj_mem = st.obj_mem.unsqueeze(2)
        self._rec("transformer_in_obj_memory", obj_mem)
        trace = {} if self.trace is not None else None
        out = self.net.object_transformer(readout, obj_mem, trace=trace)
        if trace is not None:
            for k, v in trace.items():
                self._rec(k, v)
        self._rec("transformer_out", out)
        self._rec("decoder_in_sensory", st.sensory)
        sensory, logits = self.net.segment(f.ms, out, st.sensory, update_sensory)
        self._rec("decoder_sensory_out", sensory)
        self._rec("decoder_logits_raw", logits)
        if update_sensory:
            st.sensory = sensory
        alpha = logits.clamp(0.0, 1.0)
        self._rec("decoder_logits_clamped", alpha)
        if self.trace is not None:
            self._rec("prob_with_bg", torch.cat([torch.prod(1 - alpha, dim=1, keepdim=True), alpha], 1))
        return alpha

    def _fuse(self, f: _Feats, pixel_memory: torch.Tensor) -> torch.Tensor:
        st = self.state
        self._rec("fuser_in_pixel_memory", pixel_memory)
        self._rec("fuser_in_sensory", st.sensory)
        if self.trace is not None:
            self._rec("fuser_in_last_mask", F.interpolate(st.last_mask, size=st.sensory.shape[-2:], mode="area"))
        fused = self.net.pixel_fusion(f.pix_feat, pixel_memory, st.sensory, st.last_mask)
        self._rec("pixel_fusion_out", fused)
        return fused

    def _first_frame_step(self, f: _Feats) -> torch.Tensor:
        st = self.state
        if st.last_msk_value is None:
            raise RuntimeError("first-frame step before a mask step")
        st.curr_ti = 0
        st.last_mem_ti = 0
        readout = self._fuse(f, st.last_msk_value)
        alpha = self._decode(f, readout, update_sensory=True)
        st.last_mask = alpha
        st.last_pix_feat = f.pix_feat
        st.memory.clear()
        st.obj_mem = None
        self._add_memory(f, alpha)
        return self._output(alpha)

    def _start_chain(self, f: _Feats, mask255: torch.Tensor, warmup: int,
                     keep_warmup: list | None = None) -> torch.Tensor:
        """The prompt chain of ``start`` on encoded features (the subjects engine shares one encoder pass)."""
        self._mask_step(f, mask255)
        alpha = None
        for i in range(warmup + 1):
            alpha = self._first_frame_step(f)
            if keep_warmup is not None and i < warmup:
                keep_warmup.append(alpha)
        assert alpha is not None
        return alpha

    def _normal_step(self, f: _Feats) -> torch.Tensor:
        alpha = self._predict(f)
        self._remember(f, alpha)
        return self._output(alpha)

    def _predict(self, f: _Feats) -> torch.Tensor:
        """First half of a normal step: readout, gate, fusion, decoder -> padded alpha (B, 1, Hp, Wp).
        Split from ``_remember`` so that several subjects' alphas can be adjusted (mutual exclusion)
        before they go into memory."""
        st = self.state
        if st.memory.key is None:
            raise RuntimeError("step() before start()")
        st.curr_ti += 1
        since = st.curr_ti - st.last_mem_ti
        update_sensory = since in self._stagger

        visual = st.memory.read(f.key, f.selection, self.cfg.top_k, self.cfg.block_elements)
        if self.trace is not None:
            qk, qe = f.key.flatten(2).float(), f.selection.flatten(2).float()
            sim = similarity(st.memory.key.float(), st.memory.shrinkage.float(), qk, qe)
            self._rec("similarity", sim)
            self._rec("affinity", dense_affinity(sim, self.cfg.top_k))
            self._rec("visual_readout", visual.flatten(3))
        diff = visual[:, 0] - st.last_msk_value[:, 0]
        self._rec("uncert_in_last_pix_feat", st.last_pix_feat)
        self._rec("uncert_in_last_mask", st.last_mask)
        self._rec("uncert_in_mem_val_diff", diff)
        logits = self.net.uncertainty(st.last_pix_feat, f.pix_feat, st.last_mask, diff)
        self._rec("uncert_logits", logits)
        u = torch.sigmoid(logits).unsqueeze(1)
        readout = visual * u + st.last_msk_value * (1 - u)
        return self._decode(f, self._fuse(f, readout), update_sensory=update_sensory)

    def _remember(self, f: _Feats, alpha: torch.Tensor) -> None:
        """Second half of a normal step: the alpha becomes the previous mask and is encoded (a memory
        frame every ``mem_every`` frames, otherwise only the mask value for the next step)."""
        st = self.state
        is_mem_frame = st.curr_ti - st.last_mem_ti >= self.cfg.mem_every
        st.last_mask = alpha
        st.last_pix_feat = f.pix_feat
        if is_mem_frame:
            self._add_memory(f, alpha)
        else:
            value, _, summaries = self.net.encode_mask(f.image, f.pix_feat, st.sensory, alpha, deep_update=False,
                                                       summarise=self.trace is not None)
            if self.trace is not None:
                self._rec("mask_encoder_in_sensory", st.sensory)
                self._rec("mask_encoder_in_masks", alpha)
                self._rec("mask_value", value)
                self._rec("mask_encoder_sensory_out", st.sensory)
                self._rec("obj_summaries", summaries)
            st.last_msk_value = value
        if self.trace is not None:
            self._rec("work_mem_key", st.memory.key)
            self._rec("work_mem_value", st.memory.value[:, 0])


def _sensory_dim(net: MatAnyoneNet) -> int:
    return net.mask_encoder.sensory_update.transform.out_channels // 3
