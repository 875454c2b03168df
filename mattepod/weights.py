"""The one manifest of model weights: names, Hugging Face repo ids, files, pins, checksums.

Setup (scripts/download_models.py), the CLI's errors, the UI and the serverless worker all read this table.
Layout on disk: ``<weights_dir>/<model name>/<filename>`` (CONFIG.md). A sha256 is recorded only when it
was verified against the hub's own LFS object id; ``None`` means "take the hub's reported sha256 and verify
the download against it" (never an invented hash).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mattepod.errors import WeightsError


@dataclass(frozen=True)
class WeightFile:
    filename: str
    sha256: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class Model:
    name: str
    repo_id: str
    files: tuple[WeightFile, ...]
    revision: str = "main"
    kind: str = "sam2"  # sam2 | matanyone | detector
    licence: str = ""
    extra: dict = field(default_factory=dict)


MODELS: dict[str, Model] = {
    m.name: m
    for m in [
        Model("sam2.1_tiny", "facebook/sam2.1-hiera-tiny", (WeightFile("sam2.1_hiera_tiny.pt"),),
              licence="Apache-2.0", extra={"config": "configs/sam2.1/sam2.1_hiera_t.yaml"}),
        Model("sam2.1_small", "facebook/sam2.1-hiera-small", (WeightFile("sam2.1_hiera_small.pt"),),
              licence="Apache-2.0", extra={"config": "configs/sam2.1/sam2.1_hiera_s.yaml"}),
        Model("sam2.1_base_plus", "facebook/sam2.1-hiera-base-plus", (WeightFile("sam2.1_hiera_base_plus.pt"),),
              licence="Apache-2.0", extra={"config": "configs/sam2.1/sam2.1_hiera_b+.yaml"}),
        Model("sam2.1_large", "facebook/sam2.1-hiera-large", (WeightFile("sam2.1_hiera_large.pt"),),
              licence="Apache-2.0", extra={"config": "configs/sam2.1/sam2.1_hiera_l.yaml"}),
        Model("matanyone", "PeiqingYang/MatAnyone", (WeightFile("config.json"), WeightFile("model.safetensors")),
              kind="matanyone", licence="NTU S-Lab License 1.0 (non-commercial)"),
        Model("matanyone2", "PeiqingYang/MatAnyone2", (WeightFile("config.json"), WeightFile("model.safetensors")),
              kind="matanyone", licence="NTU S-Lab License 1.0 (non-commercial)"),
        # torchvision's COCO Faster R-CNN (fasterrcnn_resnet50_fpn_coco-258fb6c6.pth, BSD-3-Clause), a
        # byte-identical hub copy: the hub LFS oid equals the sha256 whose prefix torchvision's file name carries.
        Model("person_detector", "zeyuzy/vision_model-base_model",
              (WeightFile("fasterrcnn_resnet50_fpn_coco.pth",
                          sha256="258fb6c638b15964ddcdd1ae0748c5eef1be9e732750120cc857feed3faac384",
                          size=167502836),),
              revision="b481c366c6b4ffa9cdc3bc241cfe73edfcbc6e48", kind="detector", licence="BSD-3-Clause",
              extra={"arch": "torchvision.models.detection.fasterrcnn_resnet50_fpn (COCO_V1)"}),
    ]
}


def model_dir(name: str, weights_dir: str | Path) -> Path:
    return Path(weights_dir) / name


def require(name: str, weights_dir: str | Path) -> Path:
    """The folder holding every file of ``name``; a WeightsError saying how to fetch it otherwise."""
    if name not in MODELS:
        raise WeightsError(f"unknown model {name!r}", f"choose one of {', '.join(MODELS)}")
    folder = model_dir(name, weights_dir)
    missing = [f.filename for f in MODELS[name].files if not (folder / f.filename).is_file()]
    if missing:
        raise WeightsError(
            f"weights for {name} missing in {folder} ({', '.join(missing)})",
            f"run: python scripts/download_models.py --models {name} --weights-dir {weights_dir}"
            " (inside the container: MODELS=" + name + " docker/runtime_setup.sh)")
    return folder
