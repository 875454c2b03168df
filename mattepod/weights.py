"""The one manifest of model weights: names, Hugging Face repo ids, files, pins, checksums.

Setup (scripts/download_models.py -> mattepod.download), the CLI's errors, the UI and the serverless worker all
read this table. Layout on disk: ``<weights_dir>/<model name>/<filename>`` (CONFIG.md).

Checksums: a ``sha256`` (and ``size``) is written here only once it was read from the hub's own LFS object id
for that file at that revision (``python scripts/download_models.py --print-pins`` prints them after a real
download). ``None`` means "ask the hub for the file's sha256 (its LFS etag), verify the download against it and
record the verified value next to the file" -- never an invented hash. ``revision`` is a branch until a commit
id is recorded the same way; the commit actually downloaded is recorded next to the files.

Tests (and air-gapped mirrors) replace the whole table with a JSON file named by ``MATTEPOD_WEIGHTS_MANIFEST``:
``{"models": [{"name": ..., "repo_id": ..., "revision": ..., "kind": ..., "files": [{"filename": ...,
"sha256": ..., "size": ...}]}], "default": ["name", ...]}``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mattepod.errors import WeightsError

MANIFEST_ENV = "MATTEPOD_WEIGHTS_MANIFEST"
_SHA256 = re.compile(r"[0-9a-f]{64}")


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

# What setup fetches when MODELS is not set: what the default config (configs/generate.yaml) needs.
DEFAULT_MODELS: tuple[str, ...] = ("sam2.1_base_plus", "matanyone")

# Names accepted by MODELS= / --models besides model names.
GROUPS: dict[str, tuple[str, ...]] = {
    "sam2": ("sam2.1_tiny", "sam2.1_small", "sam2.1_base_plus", "sam2.1_large"),
    "matanyone_all": ("matanyone", "matanyone2"),
    "detector": ("person_detector",),
}


def _model_from_dict(d: dict[str, Any], source: str) -> Model:
    try:
        files = tuple(WeightFile(f["filename"], f.get("sha256"), f.get("size")) for f in d["files"])
        model = Model(d["name"], d["repo_id"], files, d.get("revision", "main"), d.get("kind", "sam2"),
                      d.get("licence", ""), dict(d.get("extra", {})))
    except (KeyError, TypeError) as exc:
        raise WeightsError(f"{source}: model entry {d!r} lacks {exc}",
                           "each model needs name, repo_id and files[{filename}]") from None
    for f in model.files:
        if f.sha256 is not None and not _SHA256.fullmatch(f.sha256):
            raise WeightsError(f"{source}: {model.name}/{f.filename} sha256 {f.sha256!r} is not 64 lowercase hex",
                               "copy the hub's LFS sha256, or leave it null")
    return model


def manifest_path() -> Path | None:
    value = os.environ.get(MANIFEST_ENV, "").strip()
    return Path(value) if value else None


def load_manifest(path: str | Path | None = None) -> tuple[dict[str, Model], tuple[str, ...]]:
    """(models by name, default selection): the built-in table, or the JSON file ``path``/$MATTEPOD_WEIGHTS_MANIFEST."""
    path = Path(path) if path is not None else manifest_path()
    if path is None:
        return dict(MODELS), DEFAULT_MODELS
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise WeightsError(f"weights manifest {path} cannot be read ({exc.strerror})",
                           f"fix or unset {MANIFEST_ENV}") from None
    except json.JSONDecodeError as exc:
        raise WeightsError(f"weights manifest {path} is not valid JSON ({exc.msg}, line {exc.lineno})",
                           f"fix the file or unset {MANIFEST_ENV}") from None
    models = {m.name: m for m in (_model_from_dict(d, str(path)) for d in data.get("models", []))}
    default = tuple(data.get("default", list(models)))
    return models, default


def manifest_to_dict(models: dict[str, Model], default: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON form read by ``load_manifest`` (tests write their manifests with it)."""
    out = []
    for m in models.values():
        d = asdict(m)
        d["files"] = [asdict(f) for f in m.files]
        out.append(d)
    return {"models": out, "default": list(default)}


def select(spec: str | None, models: dict[str, Model] | None = None,
           default: tuple[str, ...] | None = None) -> list[str]:
    """Parse a MODELS= value: comma/space separated names or groups; 'all'; 'none'; empty = the defaults."""
    if models is None or default is None:
        loaded, loaded_default = load_manifest()
        models = loaded if models is None else models
        default = loaded_default if default is None else default
    words = [w for w in re.split(r"[,\s]+", spec or "") if w]
    if not words:
        words = list(default)
    chosen: list[str] = []
    for word in words:
        if word == "none":
            continue
        names = list(models) if word == "all" else GROUPS.get(word, (word,))
        for name in names:
            if name not in models:
                raise WeightsError(f"unknown model {name!r} in MODELS",
                                   f"choose from {', '.join(models)} (or all, none, {', '.join(GROUPS)})")
            if name not in chosen:
                chosen.append(name)
    return chosen


def models_for_config(cfg: Any) -> list[str]:
    """The manifest names a run configuration (mattepod.config.Config) can need: its SAM 2.1 size for clicks,
    boxes and auto_person prompts, the person detector for automatic prompts, and its MatAnyone weights unless
    the weight-free mask engine is chosen."""
    names = [f"sam2.1_{cfg.prompt.sam2_model}"]
    automatic = cfg.prompt.auto_person or cfg.prompt.reprompt_every > 0 or any(
        getattr(k, "auto_person", False) for k in cfg.prompt.keyframes)
    if automatic:
        names.append("person_detector")
    if cfg.engine.name == "matanyone":
        names.append(cfg.engine.model)
    return names


def model_dir(name: str, weights_dir: str | Path) -> Path:
    return Path(weights_dir) / name


def require(name: str, weights_dir: str | Path, models: dict[str, Model] | None = None) -> Path:
    """The folder holding every file of ``name``; a WeightsError saying how to fetch it otherwise."""
    if models is None:
        models = load_manifest()[0]
    if name not in models:
        raise WeightsError(f"unknown model {name!r}", f"choose one of {', '.join(models)}")
    folder = model_dir(name, weights_dir)
    missing = [f.filename for f in models[name].files if not (folder / f.filename).is_file()]
    if missing:
        raise WeightsError(
            f"weights for {name} missing in {folder} ({', '.join(missing)})",
            f"run: python scripts/download_models.py --models {name} --weights-dir {weights_dir}"
            " (inside the container: MODELS=" + name + " docker/runtime_setup.sh)")
    return folder
