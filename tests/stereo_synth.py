"""Synthetic stereo clips for the stereo tests: a textured shape rendered into both eyes with a
known disparity over a textured background with its own (smaller) disparity."""

from __future__ import annotations

import numpy as np
import cv2


def texture(h: int, w: int, seed: int, cell: int = 4) -> np.ndarray:
    """Smooth random RGB texture (uint8), the same for a given seed."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, h // cell), max(2, w // cell), 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def shape_mask(h: int, w: int, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    cv2.ellipse(m, (int(round(cx)), int(round(cy))), (int(rx), int(ry)), 0, 0, 360, 1, -1)
    return m.astype(bool)


def eye_pair(h: int, w: int, t: int = 0, *, disparity: int = -12, dy: int = 0, bg_disparity: int = 2,
             seed: int = 0, speed: int = 2):
    """(left eye, right eye, left mask, right mask) at frame ``t``: the shape moves right by ``speed``
    px a frame; in the right eye it sits ``disparity`` px to the side and ``dy`` px lower."""
    pad = 64
    bg = texture(h + 2 * pad, w + 2 * pad, seed)
    obj = texture(h + 2 * pad, w + 2 * pad, seed + 1, cell=3)
    cx, cy = w * 0.45 + speed * t, h * 0.5
    rx, ry = w * 0.12, h * 0.2
    left_bg = bg[pad:pad + h, pad:pad + w]
    right_bg = bg[pad:pad + h, pad - bg_disparity:pad - bg_disparity + w]
    ml = shape_mask(h, w, cx, cy, rx, ry)
    mr = shape_mask(h, w, cx + disparity, cy + dy, rx, ry)
    left = left_bg.copy()
    right = right_bg.copy()
    left[ml] = obj[pad:pad + h, pad:pad + w][ml]
    obj_r = obj[pad - dy:pad - dy + h, pad - disparity:pad - disparity + w]
    right[mr] = obj_r[mr]
    return left, right, ml.astype(np.float32), mr.astype(np.float32)


def sbs_frame(h: int, w: int, t: int = 0, **kw):
    """Full SBS frame (h, 2w, 3) and full-frame mask of both eyes."""
    left, right, ml, mr = eye_pair(h, w, t, **kw)
    return np.concatenate([left, right], axis=1), np.concatenate([ml, mr], axis=1)
