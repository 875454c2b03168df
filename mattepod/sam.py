"""SAM 2.1 image predictor: loaded once per (size, weights folder, device), one cached image embedding.

Why a module of its own: ``sam2`` has three traps that every caller would otherwise meet.
- ``import sam2`` initialises Hydra globally (``initialize_config_module("sam2")``); a host that uses Hydra
  itself (or imports sam2 second) then fails with "GlobalHydra is already initialized". We import it lazily,
  undo that global initialisation, and compose the model config inside a private Hydra context.
- The builders default to ``device="cuda"``; we always pass the device explicitly.
- The image encoder is the slow part (a 1024x1024 forward); the UI asks for a mask on every click, so the
  embedding of the last frame is kept and reused while the frame is unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mattepod import weights
from mattepod.errors import MaskError, WeightsError

log = logging.getLogger(__name__)

SIZES = ("tiny", "small", "base_plus", "large")

_LOCK = threading.Lock()
_MODELS: dict[tuple[str, str, str], Any] = {}


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; others checked (``mattepod.device.resolve``)."""
    from mattepod.device import resolve

    return resolve(device)


def _import_sam2() -> None:
    """Import sam2 without leaving Hydra globally initialised behind us."""
    from hydra.core.global_hydra import GlobalHydra

    was_initialised = GlobalHydra.instance().is_initialized()
    with _quiet():
        import sam2  # noqa: F401  (its __init__ initialises Hydra when nobody has)
        import sam2.build_sam  # noqa: F401
        import sam2.sam2_image_predictor  # noqa: F401

    if not was_initialised and GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """sam2 scripts a few helpers with torch.jit.script, which torch now flags as deprecated on every load."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
        yield


@contextlib.contextmanager
def _sam2_hydra() -> Iterator[None]:
    """A Hydra context that finds sam2's configs, restoring whatever global Hydra state was there before."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("sam2", version_base="1.2"):
            yield
    finally:
        restore_gh_from_backup(backup)


def checkpoint_path(size: str, weights_dir: str | Path) -> tuple[Path, str]:
    """(checkpoint file, sam2 config name) for a model size; WeightsError naming the fetch command if missing."""
    if size not in SIZES:
        raise MaskError(f"unknown SAM 2 model size {size!r}", f"use one of {', '.join(SIZES)}")
    name = f"sam2.1_{size}"
    folder = weights.require(name, weights_dir)
    model = weights.MODELS[name]
    return folder / model.files[0].filename, model.extra["config"]


def load_model(size: str, weights_dir: str | Path, device: str = "cpu") -> Any:
    """The SAM 2.1 model for ``size``, built by sam2's own loader; cached so each is loaded once per process."""
    device = resolve_device(device)
    ckpt, config = checkpoint_path(size, weights_dir)
    key = (size, str(ckpt.resolve()), device)
    with _LOCK:
        if key in _MODELS:
            return _MODELS[key]
        _import_sam2()
        from sam2.build_sam import build_sam2

        log.info("loading SAM 2.1 %s from %s on %s", size, ckpt, device)
        try:
            with _sam2_hydra(), _quiet():
                model = build_sam2(config, str(ckpt), device=device, mode="eval")
        except Exception as exc:  # torch.load and load_state_dict fail in many ways on a bad file
            raise WeightsError(
                f"SAM 2.1 checkpoint {ckpt} could not be loaded ({type(exc).__name__}: {exc})".replace("\n", " "),
                "delete it and fetch it again with scripts/download_models.py") from None
        _MODELS[key] = model
        return model


def clear_cache() -> None:
    """Forget loaded models (tests; freeing GPU memory before a long matting run)."""
    with _LOCK:
        _MODELS.clear()
        _PROMPTERS.clear()


def _frame_key(frame: np.ndarray) -> tuple:
    digest = hashlib.blake2b(np.ascontiguousarray(frame).data, digest_size=16).hexdigest()
    return frame.shape, digest


class Sam2Prompter:
    """Clicks and boxes -> a binary mask at the frame's size, reusing the last frame's image embedding.

    Coordinates given to :meth:`mask_for` are pixels of the frame passed in (or 0..1 with ``normalized``);
    the sam2 predictor maps them to its 1024-pixel input itself.
    """

    def __init__(self, size: str = "base_plus", weights_dir: str | Path = "weights", device: str = "cpu"):
        _import_sam2()
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        self.size = size
        self.device = resolve_device(device)
        self.model = load_model(size, weights_dir, self.device)
        with _quiet():
            self.predictor = SAM2ImagePredictor(self.model)
        self._key: tuple | None = None
        self._lock = threading.RLock()  # the predictor holds one image: one caller at a time (UI callbacks)
        self.embed_count = 0  # how many times the image encoder ran (the cache is tested through it)

    def set_frame(self, frame: np.ndarray) -> None:
        """Embed ``frame`` unless it is the frame embedded last (compared by content, not identity)."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise MaskError(f"frame must be uint8 RGB (H, W, 3), got {frame.dtype} {frame.shape}",
                            "pass the decoded RGB frame")
        key = _frame_key(frame)
        with self._lock:
            if key == self._key:
                return
            import torch

            self._key = None
            with torch.inference_mode(), _quiet():
                self.predictor.set_image(frame)
            self._key = key
            self.embed_count += 1

    def mask_for(
        self,
        frame: np.ndarray,
        points: Sequence[tuple[float, float, int]] = (),
        box: Sequence[float] | Sequence[Sequence[float]] | None = None,
        normalized: bool = False,
    ) -> np.ndarray:
        """float32 (H, W) mask in {0, 1} for clicks (x, y, label 1/0) and/or a box [x0, y0, x1, y1].

        ``box`` may also be a list of boxes (automatic person prompt): each is segmented and the masks are
        united. A single positive click is ambiguous (shirt or person?), so SAM's three candidates are
        scored and the best one is kept, as the SAM authors recommend; with more prompts one mask is asked.
        """
        h, w = frame.shape[:2]
        scale = np.array([w, h], dtype=np.float32) if normalized else np.ones(2, dtype=np.float32)
        coords = labels = None
        if len(points):
            pts = np.asarray(points, dtype=np.float32).reshape(-1, 3)
            coords = pts[:, :2] * scale
            labels = pts[:, 2].astype(np.int32)
        boxes = None
        if box is not None:
            boxes = np.asarray(box, dtype=np.float32).reshape(-1, 4) * np.tile(scale, 2)
        if coords is None and boxes is None:
            raise MaskError("SAM 2 needs at least one click or a box", "add a click or draw a box")
        import torch

        union = np.zeros((h, w), dtype=bool)
        box_list: list[np.ndarray | None] = list(boxes) if boxes is not None else [None]
        with self._lock:  # embedding and prediction together: another thread must not swap the frame
            self.set_frame(frame)
            for one_box in box_list:
                multimask = one_box is None and labels is not None and len(labels) == 1
                with torch.inference_mode():
                    masks, scores, _ = self.predictor.predict(
                        point_coords=coords, point_labels=labels, box=one_box,
                        multimask_output=multimask, normalize_coords=True)
                best = masks[int(np.argmax(scores))] if multimask else masks[0]
                union |= best.astype(bool)
        return union.astype(np.float32)


_PROMPTERS: dict[tuple[str, str, str], Sam2Prompter] = {}


def get_prompter(size: str, weights_dir: str | Path, device: str = "cpu") -> Sam2Prompter:
    """One prompter per (size, folder, device) in the process: the UI and the pipeline share its embedding."""
    key = (size, str(Path(weights_dir).resolve()), resolve_device(device))
    if key not in _PROMPTERS:
        _PROMPTERS[key] = Sam2Prompter(size, weights_dir, device)
    return _PROMPTERS[key]
