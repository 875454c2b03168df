"""Two streams (the two eyes of a VR180 frame) through the network as one batch of two.

Each stream keeps its own ``InferenceCore`` and state, exactly as two separate engines would: the
pair path only changes how the network is called. Per step:

* the image encoder (ResNet-50 + key projection, the biggest cost) always runs on a batch of two;
* when the two states are *in phase* (same frame counters, same memory sizes: the normal case, as
  the stereo engine starts and keyframes both eyes together), the two states are concatenated along
  the batch axis and the core's own step runs once on the batch of two: memory readout, uncertainty
  gate, pixel fusion, object transformer, decoder and mask encoder all batched. The merged state is
  split back into the two cores after the step (slices along the batch axis), so ``get_state`` of
  either core is the same dict as that of a separate engine;
* out of phase (the slave eye was re-prompted alone after a drift, so its memory restarted), the rest
  of the step runs per stream on its half of the shared encoder output.

The batch rows never mix (every op is per sample), so results equal the separate path up to float
rounding of batched kernels. The cost is a copy of the two memories into one per step (small next to
the readout that reads them) and twice the per-step activation memory (the readout's similarity block is
halved per row, so that one stays the size of a single stream's): ``stereo.batch_eyes`` turns it off.
Under ``torch.compile`` (CUDA, ``engine.compile``) the encoder/decoder get a graph for batch 2 and, for
out-of-phase or single-eye steps, one for batch 1.
"""

from __future__ import annotations

import dataclasses

import torch

from mattepod.matanyone.core import InferenceCore, _Feats, pad_amounts
from mattepod.matanyone.memory import StreamState, WorkingMemory

_TENSORS = ("sensory", "obj_mem", "last_mask", "last_pix_feat", "last_msk_value")


def _check_pair(a: InferenceCore, b: InferenceCore) -> None:
    if a.net is not b.net:
        raise ValueError("a core pair must share one network")
    if vars(a.cfg) != vars(b.cfg) or a.autocast_dtype != b.autocast_dtype:
        raise ValueError("a core pair must share one configuration")


def in_phase(a: InferenceCore, b: InferenceCore) -> bool:
    """Whether the two states can be stepped as one batch: same counters, same memory layout."""
    sa, sb = a.state, b.state
    if (sa.curr_ti, sa.last_mem_ti) != (sb.curr_ti, sb.last_mem_ti) or a.pad != b.pad:
        return False
    ma, mb = sa.memory, sb.memory
    if (ma.size, ma.perm_tokens, ma.frame_tokens) != (mb.size, mb.perm_tokens, mb.frame_tokens):
        return False
    for ta, tb in [(getattr(sa, n), getattr(sb, n)) for n in _TENSORS] + [(ma.key, mb.key), (ma.value, mb.value)]:
        if (ta is None) != (tb is None) or (ta is not None and ta.shape != tb.shape):
            return False
    return True


def _cat(x: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else torch.cat([x, y], 0)


def merge_states(sa: StreamState, sb: StreamState, max_mem_frames: int) -> StreamState:
    """One batch-of-two state from two in-phase states (row 0 = a, row 1 = b)."""
    ma, mb = sa.memory, sb.memory
    mem = WorkingMemory(max_mem_frames, _cat(ma.key, mb.key), _cat(ma.shrinkage, mb.shrinkage),
                        _cat(ma.value, mb.value), ma.perm_tokens, ma.frame_tokens)
    return StreamState(mem, *(_cat(getattr(sa, n), getattr(sb, n)) for n in _TENSORS), sa.curr_ti, sa.last_mem_ti)


def split_state(st: StreamState, row: int, max_mem_frames: int) -> StreamState:
    """Row ``row`` of a batch-of-two state as a state of its own (views, no copies)."""
    def pick(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t[row:row + 1]

    m = st.memory
    mem = WorkingMemory(max_mem_frames, pick(m.key), pick(m.shrinkage), pick(m.value), m.perm_tokens, m.frame_tokens)
    return StreamState(mem, *(pick(getattr(st, n)) for n in _TENSORS), st.curr_ti, st.last_mem_ti)


def _merged_core(a: InferenceCore) -> InferenceCore:
    # half the readout block per row: the similarity block of the batch stays that of one stream
    cfg = dataclasses.replace(a.cfg, block_elements=max(1, a.cfg.block_elements // 2))
    core = InferenceCore(a.net, cfg, autocast_dtype=a.autocast_dtype)
    core.pad = a.pad
    return core


def _give_back(merged: InferenceCore, a: InferenceCore, b: InferenceCore) -> None:
    n = a.cfg.max_mem_frames
    a.state, b.state = split_state(merged.state, 0, n), split_state(merged.state, 1, n)
    a.pad = b.pad = merged.pad


def _split_feats(f: _Feats, row: int) -> _Feats:
    def pick(t: torch.Tensor) -> torch.Tensor:
        return t[row:row + 1]

    return _Feats(pick(f.image), tuple(pick(t) for t in f.ms), pick(f.pix_feat), pick(f.key),
                  pick(f.shrinkage), pick(f.selection))


def start_pair(a: InferenceCore, b: InferenceCore, images: tuple[torch.Tensor, torch.Tensor],
               masks255: tuple[torch.Tensor, torch.Tensor], warmup: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``start`` on both cores at once (images (3, H, W) of one size): the same as ``a.start`` and
    ``b.start`` up to float rounding. Both states restart, so they are in phase afterwards."""
    _check_pair(a, b)
    if images[0].shape != images[1].shape:
        raise ValueError(f"pair frames differ in size: {tuple(images[0].shape)} vs {tuple(images[1].shape)}")
    merged = _merged_core(a)
    alpha = merged.start(torch.stack(images), torch.stack(masks255), warmup)
    _give_back(merged, a, b)
    return alpha[0], alpha[1]


def step_pair(a: InferenceCore, b: InferenceCore,
              images: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A normal ``step`` of both cores with one batched encoder pass (and everything else batched
    when the states are in phase); see the module docstring."""
    _check_pair(a, b)
    if images[0].shape != images[1].shape:
        raise ValueError(f"pair frames differ in size: {tuple(images[0].shape)} vs {tuple(images[1].shape)}")
    h, w = images[0].shape[-2:]
    pad = pad_amounts(h, w)
    for core in (a, b):
        if core.pad is not None and core.pad != pad:
            raise ValueError("frame size changed mid-stream; call start() again")
    if in_phase(a, b):
        merged = _merged_core(a)
        merged.state = merge_states(a.state, b.state, a.cfg.max_mem_frames)
        with merged._ctx():
            alpha = merged._normal_step(merged._encode(torch.stack(images)))
        _give_back(merged, a, b)
        return alpha[0], alpha[1]
    with a._ctx():
        f = _merged_core(a)._encode(torch.stack(images))
        a.pad = b.pad = pad
        out_a = a._normal_step(_split_feats(f, 0))
        out_b = b._normal_step(_split_feats(f, 1))
    return out_a, out_b
