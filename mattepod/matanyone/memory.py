"""Bounded working memory and the memory-efficient top-k readout.

The official MatAnyone builds the full (N memory tokens x HW query tokens) affinity matrix and keeps
several copies of it alive; at 4K that is tens of GB. Here the queries are processed in chunks: for
each chunk the similarity block is computed, the top-k memory tokens are kept and their values are
gathered and weighted, so the peak is one (N x chunk) block instead of (N x HW). The result is the
same top-k softmax readout (up to float rounding).

Memory layout (one object bucket, batch 1): keys (B, 64, N), shrinkage (B, 1, N), values
(B, K, 256, N). The first ``perm_tokens`` tokens are the permanent frame; the rest is a FIFO capped at
``(max_mem_frames - 1) * h * w`` tokens, so the per-frame cost never grows with the frame index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from mattepod.matanyone.network import fp32_island

# elements of one similarity block (N x chunk); 2^24 float32 = 64 MiB
DEFAULT_BLOCK_ELEMENTS = 1 << 24


def similarity(mk: torch.Tensor, ms: torch.Tensor, qk: torch.Tensor, qe: torch.Tensor) -> torch.Tensor:
    """XMem anisotropic L2: mk (B,C,N), ms (B,1,N), qk/qe (B,C,M) -> (B,N,M), larger = closer."""
    ck = mk.shape[1]
    mk_t = mk.transpose(1, 2)
    a_sq = mk_t.pow(2) @ qe
    two_ab = 2 * (mk_t @ (qk * qe))
    b_sq = (qe * qk.pow(2)).sum(1, keepdim=True)
    return (-a_sq + two_ab - b_sq) * ms.transpose(1, 2) / math.sqrt(ck)


def dense_affinity(sim: torch.Tensor, top_k: int) -> torch.Tensor:
    """Top-k softmax over the memory axis scattered into a zero (B,N,M) tensor (tests, small sizes)."""
    values, idx = torch.topk(sim, k=top_k, dim=1)
    return torch.zeros_like(sim).scatter_(1, idx, torch.softmax(values, dim=1))


def topk_readout(mk: torch.Tensor, ms: torch.Tensor, mv: torch.Tensor, qk: torch.Tensor,
                 qe: torch.Tensor, top_k: int, block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> torch.Tensor:
    """Readout V @ affinity without the dense affinity.

    mk (B,Ck,N), ms (B,1,N), mv (B,Cv,N), qk/qe (B,Ck,M) -> (B,Cv,M). Computed in float32.
    """
    mk, ms, mv, qk, qe = (t.float() for t in (mk, ms, mv, qk, qe))
    b, cv, n = mv.shape
    m = qk.shape[-1]
    if n < top_k:
        raise ValueError(f"memory holds {n} tokens, fewer than top_k={top_k}: the frame is too small "
                         f"(needs at least {top_k} cells of 16x16 pixels)")
    chunk = max(1, min(m, block_elements // max(n, 1)))
    out = torch.empty((b, cv, m), device=mv.device, dtype=torch.float32)
    mv_t = mv.transpose(1, 2)  # (B, N, Cv): rows gathered by token index
    for s in range(0, m, chunk):
        e = min(m, s + chunk)
        sim = similarity(mk, ms, qk[:, :, s:e], qe[:, :, s:e])
        values, idx = torch.topk(sim, k=top_k, dim=1)  # (B, k, c)
        del sim
        weights = torch.softmax(values, dim=1)
        for bi in range(b):
            picked = mv_t[bi].index_select(0, idx[bi].reshape(-1)).view(top_k, e - s, cv)
            out[bi, :, s:e] = torch.einsum("kc,kcv->vc", weights[bi], picked)
    return out


@dataclass
class WorkingMemory:
    """Keys, shrinkage and values of the memory frames: a permanent head and a FIFO tail."""

    max_mem_frames: int = 5
    key: torch.Tensor | None = None        # (B, 64, N)
    shrinkage: torch.Tensor | None = None  # (B, 1, N)
    value: torch.Tensor | None = None      # (B, K, 256, N)
    perm_tokens: int = 0
    frame_tokens: int = 0

    @property
    def size(self) -> int:
        return 0 if self.key is None else self.key.shape[-1]

    def clear(self) -> None:
        self.key = self.shrinkage = self.value = None
        self.perm_tokens = 0

    def add(self, key: torch.Tensor, shrinkage: torch.Tensor, value: torch.Tensor) -> None:
        """Append one frame (key (B,64,h,w), shrinkage (B,1,h,w), value (B,K,256,h,w)).

        The first frame added to an empty memory becomes permanent; later ones go into the FIFO,
        which then drops its oldest tokens beyond (max_mem_frames - 1) frames.
        """
        key, shrinkage, value = key.flatten(2), shrinkage.flatten(2), value.flatten(3)
        self.frame_tokens = key.shape[-1]
        if self.key is None:
            self.key, self.shrinkage, self.value = key, shrinkage, value
            self.perm_tokens = key.shape[-1]
            return
        self.key = torch.cat([self.key, key], -1)
        self.shrinkage = torch.cat([self.shrinkage, shrinkage], -1)
        self.value = torch.cat([self.value, value], -1)
        max_work = (self.max_mem_frames - 1) * self.frame_tokens
        work = self.size - self.perm_tokens
        if work > max_work:
            p = self.perm_tokens
            keep = slice(self.size - max_work, self.size)
            self.key = torch.cat([self.key[..., :p], self.key[..., keep]], -1)
            self.shrinkage = torch.cat([self.shrinkage[..., :p], self.shrinkage[..., keep]], -1)
            self.value = torch.cat([self.value[..., :p], self.value[..., keep]], -1)

    def read(self, qk: torch.Tensor, qe: torch.Tensor, top_k: int,
             block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> torch.Tensor:
        """Visual readout for query key/selection (B,64,h,w) -> (B,K,256,h,w) float32."""
        assert self.key is not None and self.value is not None and self.shrinkage is not None
        b, _, h, w = qk.shape
        k, cv = self.value.shape[1:3]
        with fp32_island(qk):  # top-k picks from exact similarities, also under fp16/bf16 autocast
            out = topk_readout(self.key, self.shrinkage, self.value.flatten(1, 2), qk.flatten(2), qe.flatten(2),
                               top_k, block_elements)
        return out.view(b, k, cv, h, w)


@dataclass
class StreamState:
    """Everything the core carries from one step to the next (all tensors at padded resolution)."""

    memory: WorkingMemory = field(default_factory=WorkingMemory)
    sensory: torch.Tensor | None = None        # (B, K, 256, h, w)
    obj_mem: torch.Tensor | None = None        # (B, K, 16, 257) running sums of object summaries
    last_mask: torch.Tensor | None = None      # (B, K, H, W) previous alpha (padded)
    last_pix_feat: torch.Tensor | None = None  # (B, 256, h, w)
    last_msk_value: torch.Tensor | None = None  # (B, K, 256, h, w)
    curr_ti: int = -1
    last_mem_ti: int = 0

    def tensors(self) -> dict[str, torch.Tensor | None]:
        m = self.memory
        return {"mem_key": m.key, "mem_shrinkage": m.shrinkage, "mem_value": m.value, "sensory": self.sensory,
                "obj_mem": self.obj_mem, "last_mask": self.last_mask, "last_pix_feat": self.last_pix_feat,
                "last_msk_value": self.last_msk_value}
