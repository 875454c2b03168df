"""Shared helpers of the MatAnyone tests: the reference data and weights generated from it.

The weights are synthetic (``make_reference_weights.py``, numpy only, about 1 s) and are written once
per test session as a Hugging Face-style folder (config.json + model.safetensors) and as a plain
``matanyone.pth``; the tests then load them through the real loader. Nothing is downloaded.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REF = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference" / "matanyone"
REF = REF.resolve()
GENERATOR = REF / "make_reference_weights.py"
MANIFEST = REF / "state_dict_manifest.tsv"

# the config.json of the Hugging Face repo is {"cfg": <eval config incl. model>, "single_object": bool}
HF_CONFIG = {
    "cfg": {
        "mem_every": 5, "max_mem_frames": 5, "top_k": 30, "stagger_updates": 5, "chunk_size": -1,
        "max_internal_size": -1, "use_long_term": False, "flip_aug": False,
        "model": {
            "pixel_mean": [0.485, 0.456, 0.406], "pixel_std": [0.229, 0.224, 0.225],
            "pixel_dim": 256, "key_dim": 64, "value_dim": 256, "sensory_dim": 256, "embed_dim": 256,
            "pixel_encoder": {"type": "resnet50", "ms_dims": [1024, 512, 256, 64, 3]},
            "mask_encoder": {"type": "resnet18", "final_dim": 256},
            "pixel_pe_scale": 32, "pixel_pe_temperature": 128,
            "object_transformer": {"embed_dim": 256, "ff_dim": 2048, "num_heads": 8, "num_blocks": 3,
                                   "num_queries": 16},
            "mask_decoder": {"up_dims": [256, 128, 128, 64, 16]},
            "pretrained_resnet": False,
        },
    },
    "single_object": True,
}

_written: dict[str, Path] = {}


def need_reference() -> None:
    if not (GENERATOR.is_file() and MANIFEST.is_file()):
        pytest.skip(f"MatAnyone reference data not found at {REF} (../shared/reference/matanyone "
                    "relative to the repo root); the fidelity tests need it")


@functools.lru_cache(maxsize=2)
def generated_weights(layout: str = "single") -> dict[str, np.ndarray]:
    need_reference()
    spec = importlib.util.spec_from_file_location("make_reference_weights", GENERATOR)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_reference_weights", mod)
    spec.loader.exec_module(mod)
    return mod.make_weights(str(MANIFEST), layout)


def write_weights(tmp_path_factory, layout: str = "single") -> Path:
    """<tmp>/weights/matanyone/{config.json, model.safetensors} and <tmp>/weights/pth/matanyone.pth,
    written once per session (pytest's basetemp is shared by all modules)."""
    if layout in _written:
        return _written[layout]
    from safetensors.numpy import save_file

    w = generated_weights(layout)
    root = tmp_path_factory.mktemp(f"weights-{layout}")
    hf = root / "matanyone"
    hf.mkdir()
    cfg = dict(HF_CONFIG, single_object=(layout == "single"))
    (hf / "config.json").write_text(json.dumps(cfg))
    save_file(w, str(hf / "model.safetensors"))
    pth = root / "pth"
    pth.mkdir()
    torch.save({k: torch.from_numpy(v) for k, v in w.items()}, pth / "matanyone.pth")
    _written[layout] = root
    return root


@functools.lru_cache(maxsize=4)
def loaded_net(path: str):
    from mattepod.matanyone.loader import load_network

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return load_network(path, "cpu")


@pytest.fixture
def one_thread():
    """Tiny inputs: one intra-op thread costs the least CPU time (and avoids spinning on a busy CI box)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    return np.array(Image.open(path).convert("RGB"))


def read_grey(path: Path) -> np.ndarray:
    from PIL import Image

    return np.array(Image.open(path).convert("L"))


def case_dir(name: str) -> Path:
    d = REF / "cases" / name
    if not (d / "golden.npz").is_file():
        pytest.skip(f"golden case {name} missing in {REF}")
    return d
