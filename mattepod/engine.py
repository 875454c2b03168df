"""The streaming engine protocol the pipeline drives, and the small engines that need no weights.

A matting engine sees one frame at a time and keeps all of its memory inside itself (Cutie's
``InferenceCore`` pattern): ``start`` anchors it on a frame and a mask, ``step`` carries the matte on,
and ``step(frame, mask=...)`` re-anchors on a keyframe. ``get_state``/``set_state`` make that memory
serialisable so a resumed run continues bit-identically.

Frames are ``uint8`` RGB arrays ``(H, W, 3)``; masks and alphas are ``float32`` ``(H, W)`` in ``[0, 1]``
at the frame's own size. Engines must not keep references to the frames they were given.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Engine(Protocol):
    name: str

    def start(self, frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Forget everything, anchor on ``mask`` at ``frame``; return the alpha of ``frame``."""

    def step(self, frame: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Alpha of the next frame; with ``mask`` the frame is a keyframe and the state re-anchors on it."""

    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue: tensors/arrays and plain values (saved with ``torch.save``)."""

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore what ``get_state`` returned (after ``start`` was never called in this process)."""


def check_alpha(alpha: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """Guard the protocol at the pipeline boundary: float32 (H, W) in [0, 1], same size as the frame."""
    if alpha.shape != frame.shape[:2]:
        raise RuntimeError(f"engine returned alpha of shape {alpha.shape} for a frame of {frame.shape[:2]}")
    alpha = alpha.astype(np.float32, copy=False)
    if alpha.size and 0.0 <= float(alpha.min()) and float(alpha.max()) <= 1.0:
        return alpha  # the same array: its device copy (mattepod.devframes) is found again by the outputs
    return np.clip(alpha, 0.0, 1.0)


class MaskFollowEngine:
    """Weight-free engine: each alpha blends the anchor mask with the previous alpha weighted by the frame's
    brightness, then softens it vertically (a box filter of ``soften`` rows). It does not follow motion.

    Used for benchmarks of the plumbing, for tests, and as ``engine.name: mask`` when a user only wants the
    prompt mask carried through (for example to check a prompt before a long GPU run). It is stateful in the
    same way as a real engine, so resume and keyframe logic are exercised for real.
    """

    name = "mask"

    def __init__(self, soften: int = 2):
        self.soften = soften
        self._mask: np.ndarray | None = None
        self._prev: np.ndarray | None = None
        self._index = 0

    def start(self, frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
        self._mask = (mask >= 0.5).astype(np.float32)
        self._prev = self._mask
        self._index = 0
        return self._render(frame)

    def step(self, frame: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        if self._mask is None:
            raise RuntimeError("step() before start()")
        if mask is not None:
            return self.start(frame, mask)
        self._index += 1
        return self._render(frame)

    def _render(self, frame: np.ndarray) -> np.ndarray:
        assert self._mask is not None and self._prev is not None
        grey = frame.mean(axis=2, dtype=np.float32) / 255.0
        # A running blend of the anchor mask with the previous alpha, modulated by the frame: the output
        # depends on every earlier frame, which is what makes state save/restore worth testing.
        alpha = 0.7 * self._mask + 0.3 * self._prev * (0.5 + 0.5 * grey)
        if self.soften:
            k = self.soften
            padded = np.pad(alpha, k, mode="edge")
            acc = np.zeros_like(alpha)
            for dy in range(-k, k + 1):
                acc += padded[k + dy : k + dy + alpha.shape[0], k : k + alpha.shape[1]]
            alpha = acc / (2 * k + 1)
        self._prev = alpha.astype(np.float32)
        return self._prev

    def get_state(self) -> dict[str, Any]:
        return {"mask": self._mask, "prev": self._prev, "index": self._index}

    def set_state(self, state: dict[str, Any]) -> None:
        self._mask, self._prev, self._index = state["mask"], state["prev"], state["index"]
