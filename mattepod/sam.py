"""SAM 2.1 image predictor: loaded once per (size, weights folder, device), one cached image embedding.

Why a module of its own: ``sam2`` has three traps that every caller would otherwise meet.
- ``import sam2`` initialises Hydra globally (``initialize_config_module("sam2")``); a host that uses Hydra
  itself (or imports sam2 second) then fails with "GlobalHydra is already initialized". We import it lazily,
  undo that global initialisation, and compose the model config inside a private Hydra context.
- The builders default to ``device="cuda"``; we always pass the device explicitly.
- The image encoder is the slow part (a 1024x1024 forward: ~1 s for tiny, ~30 s for base_plus on a CPU); the
  UI asks for a mask on every click, so the embeddings of the last few frames are kept and reused, frames are
  embedded in the background as soon as they are shown (:meth:`Sam2Prompter.request`), and a frame the user
  has already left is never embedded (only the latest request waits). A click on an embedded frame only runs
  the mask decoder (bench/sam_click.py).
- The default size depends on the device (:func:`default_size`): tiny on a CPU, base_plus on a GPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import warnings
from collections import OrderedDict
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


def default_size(device: str) -> str:
    """The SAM 2 size the page starts with: tiny on a CPU (a click must feel instant), base_plus on a GPU."""
    if device in ("auto", "", None):
        try:
            device = resolve_device("auto")
        except Exception:  # noqa: BLE001 - an unusable device is reported where it is used
            return "tiny"
    return "base_plus" if str(device).startswith("cuda") else "tiny"


def check_device(device: str) -> str:
    """The torch device for ``device``; an error naming the device (never the weights) when it is absent."""
    dev = resolve_device(device)  # ConfigError for a malformed name or no CUDA at all
    if dev.startswith("cuda"):
        import torch

        n = torch.cuda.device_count()
        idx = int(dev.split(":")[1]) if ":" in dev and dev.split(":")[1].isdigit() else 0
        if idx >= n:
            raise MaskError(f"engine.device {device} is not available (this machine has {n} CUDA device(s))",
                            "set engine.device to auto, cpu" + (f" or cuda:0..cuda:{n - 1}" if n else ""))
    return dev


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
    device = check_device(device)
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
    """Clicks and boxes -> a binary mask at the frame's size, reusing the embeddings of recent frames.

    Coordinates given to :meth:`mask_for` are pixels of the frame passed in (or 0..1 with ``normalized``);
    the sam2 predictor maps them to its 1024-pixel input itself.
    """

    def __init__(self, size: str = "base_plus", weights_dir: str | Path = "weights", device: str = "cpu",
                 keep: int = 4):
        _import_sam2()
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        self.size = size
        self.device = resolve_device(device)
        self.model = load_model(size, weights_dir, self.device)
        with _quiet():
            self.predictor = SAM2ImagePredictor(self.model)
        self._key: tuple | None = None
        self._lock = threading.RLock()  # the predictor holds one image: one caller at a time (UI callbacks)
        self._keep = keep
        self._cache: OrderedDict[tuple, tuple[Any, Any]] = OrderedDict()  # key -> (features, orig_hw)
        self._wanted: tuple[tuple, np.ndarray] | None = None  # the latest background request (older: dropped)
        self._busy: tuple | None = None  # the key being embedded right now
        self._wake = threading.Condition()
        self._worker: threading.Thread | None = None
        self.embed_count = 0  # how many times the image encoder ran (the cache is tested through it)
        self.dropped = 0  # background requests replaced before they started (stale frames never embedded)

    @staticmethod
    def _check(frame: np.ndarray) -> None:
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise MaskError(f"frame must be uint8 RGB (H, W, 3), got {frame.dtype} {frame.shape}",
                            "pass the decoded RGB frame")

    def set_frame(self, frame: np.ndarray) -> None:
        """Make ``frame`` the predictor's image: from the cache when it was embedded (compared by content)."""
        self._check(frame)
        key = _frame_key(frame)
        with self._lock:
            if key == self._key:
                return
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                p = self.predictor
                p._features, p._orig_hw = cached
                p._is_image_set, p._is_batch = True, False
                self._key = key
                return
            import torch

            self._key = None
            with self._wake:
                self._busy = key
            try:
                with torch.inference_mode(), _quiet():
                    self.predictor.set_image(np.ascontiguousarray(frame))
            finally:
                with self._wake:
                    self._busy = None
                    self._wake.notify_all()
            self._key = key
            self._cache[key] = (self.predictor._features, self.predictor._orig_hw)
            while len(self._cache) > self._keep:
                self._cache.popitem(last=False)
            self.embed_count += 1

    def state(self, frame: np.ndarray) -> str:
        """'ready' (embedded: a click costs only the decoder), 'embedding' (the encoder runs on it now),
        'waiting' (asked for, not started) or 'idle' (never asked for)."""
        key = _frame_key(frame)
        with self._wake:
            if key in self._cache:
                return "ready"
            if self._busy == key:
                return "embedding"
            if self._wanted is not None and self._wanted[0] == key:
                return "waiting"
        return "idle"

    def request(self, frame: np.ndarray) -> None:
        """Embed ``frame`` in the background. Only the latest request is kept: a frame the user has already
        left is dropped before it starts (one running embedding cannot be interrupted, so it finishes)."""
        self._check(frame)
        key = _frame_key(frame)
        with self._wake:
            if key in self._cache or self._busy == key:
                return
            if self._wanted is not None and self._wanted[0] != key:
                self.dropped += 1
            self._wanted = (key, np.array(frame, dtype=np.uint8, order="C"))
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name=f"sam2-embed-{self.size}", daemon=True)
                self._worker.start()
            self._wake.notify_all()

    def _work(self) -> None:
        while True:
            with self._wake:
                if self._wanted is None:
                    self._wake.wait(timeout=30)
                    if self._wanted is None:
                        self._worker = None
                        return
                    continue
                _key, frame = self._wanted
                self._wanted = None
            try:
                with self._lock:
                    self.set_frame(frame)
            except Exception as exc:  # noqa: BLE001 - a failed prefetch only costs the click its speed
                log.warning("SAM 2 background embedding failed: %s", exc)

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
        with self._wake:
            if self._wanted is not None and self._wanted[0] == _frame_key(frame):
                self._wanted = None  # embedded right here, not again by the worker
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
    with _PROMPTERS_LOCK:
        if key not in _PROMPTERS:
            _PROMPTERS[key] = Sam2Prompter(size, weights_dir, device)
        return _PROMPTERS[key]


_PROMPTERS_LOCK = threading.Lock()
