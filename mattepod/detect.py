"""Person detector for the automatic prompt: torchvision's Faster R-CNN ResNet-50 FPN (COCO), BSD-3-Clause.

Why this one (ARCHITECTURE.md has the longer story): the architecture ships with torchvision, which SAM 2
already needs, so there is no new dependency; the COCO weights are BSD-3-Clause (torchvision's licence), a
byte-identical copy lives on the Hugging Face hub (so setup fetches it like every other model, pinned by
sha256); it runs on CPU in a few seconds, and it is only run on prompt frames. Its boxes are handed to SAM 2,
which turns each into a mask.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mattepod import weights
from mattepod.errors import MaskError, WeightsError

log = logging.getLogger(__name__)

DETECTOR_NAME = "person_detector"
COCO_PERSON = 1  # torchvision's COCO category index of "person"
SELECT_MODES = ("largest", "all", "n_largest", "rank")


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the frame given to detect()
    score: float

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)


def build_model(min_size: int = 800, max_size: int = 1333) -> Any:
    """The torchvision architecture without any weights (no download is ever triggered)."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    return fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91,
                                   min_size=min_size, max_size=max_size)


class PersonDetector:
    """Boxes of the people on one RGB frame, in that frame's pixels, best score first."""

    def __init__(self, weights_dir: str | Path, device: str = "cpu", min_score: float = 0.5,
                 min_size: int = 800):
        import torch

        folder = weights.require(DETECTOR_NAME, weights_dir)
        path = folder / weights.MODELS[DETECTOR_NAME].files[0].filename
        self.device = device
        self.min_score = min_score
        self.model = build_model(min_size=min_size)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            self.model.load_state_dict(state)
        except Exception as exc:  # torch.load and load_state_dict fail in many ways on a bad file
            raise WeightsError(f"person detector weights {path} could not be loaded ({type(exc).__name__})",
                               "delete the file and fetch it again with scripts/download_models.py") from None
        self.model.eval().to(device)

    def detect(self, frame: np.ndarray) -> list[Detection]:
        import torch

        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise MaskError(f"frame must be uint8 RGB (H, W, 3), got {frame.dtype} {frame.shape}",
                            "pass the decoded RGB frame")
        image = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float().div_(255.0)
        with torch.inference_mode():
            out = self.model([image.to(self.device)])[0]
        h, w = frame.shape[:2]
        found = []
        for box, label, score in zip(out["boxes"].cpu().numpy(), out["labels"].cpu().numpy(),
                                     out["scores"].cpu().numpy()):
            if int(label) != COCO_PERSON or float(score) < self.min_score:
                continue
            x0, y0, x1, y1 = (float(v) for v in box)
            box_c = (max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1))
            if box_c[2] > box_c[0] and box_c[3] > box_c[1]:
                found.append(Detection(box_c, float(score)))
        found.sort(key=lambda d: d.score, reverse=True)
        return found


def select_people(found: Sequence[Detection], mode: str = "largest", count: int = 1) -> list[Detection]:
    """Which people become the subject: the largest box, all of them, or the ``count`` largest."""
    if mode not in SELECT_MODES:
        raise MaskError(f"prompt.person_select {mode!r} is not one of {', '.join(SELECT_MODES)}",
                        "set prompt.person_select to largest, all or n_largest")
    by_area = sorted(found, key=lambda d: d.area, reverse=True)
    if mode == "all":
        return by_area
    if mode == "largest":
        return by_area[:1]
    if mode == "rank":  # one subject per person (prompt.subjects): the count-th largest alone
        return by_area[count - 1:count]
    if count < 1:
        raise MaskError(f"prompt.person_count {count} must be at least 1", "set prompt.person_count: 1 or more")
    return by_area[:count]


_LOCK = threading.Lock()
_DETECTORS: dict[tuple[str, str, float, int], PersonDetector] = {}


def get_detector(weights_dir: str | Path, device: str = "cpu", min_score: float = 0.5,
                 min_size: int = 800) -> PersonDetector:
    """One detector per (folder, device, threshold, size) in the process."""
    key = (str(Path(weights_dir).resolve()), device, float(min_score), int(min_size))
    with _LOCK:
        if key not in _DETECTORS:
            _DETECTORS[key] = PersonDetector(weights_dir, device, min_score, min_size)
        return _DETECTORS[key]


def clear_cache() -> None:
    with _LOCK:
        _DETECTORS.clear()
