"""Prompt -> mask. (Interim: mask files only; the SAM 2 clicks/boxes/auto-person version replaces this.)"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from mattepod.config import PromptConfig
from mattepod.errors import MaskError

log = logging.getLogger("mattepod.prompts")


@dataclass
class PromptSpec:
    frame: int
    points: list[tuple[float, float, int]] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None
    mask: str | None = None
    normalized: bool = False
    mask_add: list[str] = field(default_factory=list)
    mask_subtract: list[str] = field(default_factory=list)
    dilate: int = 0
    erode: int = 0
    auto_person: bool = False


@dataclass
class PromptResult:
    mask: np.ndarray
    preview: np.ndarray


def specs_from_config(cfg: PromptConfig) -> list[PromptSpec]:
    main = PromptSpec(cfg.frame, [(p.x, p.y, p.label) for p in cfg.points], cfg.box, cfg.mask, cfg.normalized,
                      list(cfg.mask_add), list(cfg.mask_subtract), cfg.mask_dilate, cfg.mask_erode, cfg.auto_person)
    keys = [PromptSpec(k.frame, [(p.x, p.y, p.label) for p in k.points], k.box, k.mask, cfg.normalized)
            for k in cfg.keyframes]
    return [main, *keys]


def load_mask_file(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise MaskError(f"mask file {p} not found", "check the path of --mask")
    img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise MaskError(f"mask file {p} is not a readable image", "give a PNG")
    if img.ndim == 3:
        img = img[..., 3] if img.shape[2] == 4 else img.max(axis=2)
    m = img.astype(np.float32)
    m = m / (65535.0 if img.dtype == np.uint16 else 255.0 if m.max() > 1 else 1.0)
    w, h = size
    if m.shape != (h, w):
        mh, mw = m.shape
        if abs((mw / mh) / (w / h) - 1) > 0.01:
            raise MaskError(f"mask {p.name} is {mw}x{mh} but the video is {w}x{h} (different aspect ratio)",
                            "make the mask from a frame of this video")
        log.warning("mask %s is %dx%d, resized to %dx%d", p.name, mw, mh, w, h)
        m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
    return m


def resolve_prompt(spec: PromptSpec, frame: np.ndarray, weights_dir, prompter=None, sam2_model: str = "base_plus",
                   device: str = "cpu") -> PromptResult:
    h, w = frame.shape[:2]
    if not spec.mask:
        raise MaskError("no prompt given", "give --mask")
    m = load_mask_file(spec.mask, (w, h))
    if (m >= 0.5).sum() == 0:
        raise MaskError(f"mask {spec.mask} is empty", "draw the subject in white on black")
    if (m >= 0.5).all():
        raise MaskError(f"mask {spec.mask} covers the whole frame", "draw only the subject in white")
    preview = frame.copy()
    preview[m >= 0.5] = (0.5 * preview[m >= 0.5] + [0, 127, 0]).astype(np.uint8)
    return PromptResult(m, preview)
