"""Test weights: real architectures, seeded random parameters, saved where and how the real loaders read them.

No weights can be downloaded in tests, so the SAM 2.1 checkpoint is built from the sam2 package's own shipped
config (the tiny one) and saved as ``{"model": state_dict}`` (the layout ``sam2.build_sam._load_checkpoint``
reads); the person detector is torchvision's architecture saved as a plain state dict (torchvision's layout).
What the models then predict is meaningless; tests check the plumbing around them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mattepod import weights


def make_sam2_weights(weights_dir: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a random SAM 2.1 checkpoint for ``size`` into ``<weights_dir>/sam2.1_<size>/``; return its path."""
    from mattepod.sam import _import_sam2, _quiet, _sam2_hydra

    _import_sam2()
    from sam2.build_sam import build_sam2

    model_entry = weights.MODELS[f"sam2.1_{size}"]
    folder = weights.model_dir(model_entry.name, weights_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / model_entry.files[0].filename
    torch.manual_seed(seed)
    with _sam2_hydra(), _quiet():
        model = build_sam2(model_entry.extra["config"], None, device="cpu", mode="eval")
    torch.save({"model": model.state_dict()}, path)
    return path


def make_detector_weights(weights_dir: str | Path, seed: int = 0, person_logit: float | None = None) -> Path:
    """Write random person-detector weights; return the file.

    With ``person_logit`` the box classifier is made deterministic: every region scores ``person_logit`` for
    "person" and ``-person_logit`` for every other class, and the box regression is zero, so the detector
    returns its region proposals (all as people for a positive value, no people for a negative one). That
    lets tests check label filtering, box mapping and selection without a trained model.
    """
    from mattepod.detect import DETECTOR_NAME, COCO_PERSON, build_model

    entry = weights.MODELS[DETECTOR_NAME]
    folder = weights.model_dir(entry.name, weights_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / entry.files[0].filename
    torch.manual_seed(seed)
    model = build_model()
    if person_logit is not None:
        pred = model.roi_heads.box_predictor
        with torch.no_grad():
            pred.cls_score.weight.zero_()
            pred.cls_score.bias.fill_(-person_logit)
            pred.cls_score.bias[COCO_PERSON] = person_logit
            pred.bbox_pred.weight.zero_()
            pred.bbox_pred.bias.zero_()
    torch.save(model.state_dict(), path)
    return path
