"""Load official MatAnyone / MatAnyone 2 weights into ``MatAnyoneNet``, strictly.

Accepted sources (all hold the same flat 562-key state dict, no prefix):

* a Hugging Face snapshot folder (``PeiqingYang/MatAnyone`` or ``PeiqingYang/MatAnyone2``):
  ``config.json`` + ``model.safetensors``;
* the GitHub release file ``matanyone.pth`` / ``matanyone2.pth`` (a plain ``torch.save`` state dict),
  given directly or lying in the folder;
* a ``.safetensors`` file given directly.

Both checkpoint layouts load: the single-object one (``mask_encoder.conv1`` with 4 input channels,
``pixel_fuser.sensory_compress`` with 257) and the multi-object one (5 / 258). Our network is
single-object, so a multi-object checkpoint loses its last input channel of those two tensors: that
channel only ever sees "other objects" = 0 with one object (README section 6: bit-identical).

Unlike upstream (``strict=False``, which silently keeps random weights for missing keys), any
missing, unexpected or mis-shaped key is a ``WeightsError`` that names the keys.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mattepod.errors import WeightsError
from mattepod.matanyone.network import MatAnyoneNet, SinePE, layout_extra_keys

# config.json values that must agree with the architecture we build
_EXPECTED_MODEL_CFG = {
    "pixel_dim": 256, "key_dim": 64, "value_dim": 256, "sensory_dim": 256, "embed_dim": 256,
    "pixel_encoder.type": "resnet50", "mask_encoder.type": "resnet18", "mask_encoder.final_dim": 256,
    "object_transformer.num_blocks": 3, "object_transformer.num_queries": 16,
    "object_transformer.num_heads": 8, "object_transformer.ff_dim": 2048,
    "pixel_pe_scale": 32, "pixel_pe_temperature": 128,
}
_FILE_NAMES = ("model.safetensors", "matanyone.pth", "matanyone2.pth", "model.pth")


def _fix() -> str:
    return ("point engine weights to the official MatAnyone checkpoint (python scripts/download_models.py "
            "--models matanyone), unmodified")


def find_weight_file(path: str | Path) -> Path:
    """The checkpoint file inside a weights folder (or the file itself)."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_dir():
        raise WeightsError(f"MatAnyone weights not found: {p}", _fix())
    for name in _FILE_NAMES:
        if (p / name).is_file():
            return p / name
    found = sorted(x.name for x in p.iterdir() if x.suffix in (".pth", ".pt", ".safetensors"))
    if len(found) == 1:
        return p / found[0]
    raise WeightsError(f"no MatAnyone checkpoint in {p} (looked for {', '.join(_FILE_NAMES)}"
                       + (f"; found several: {', '.join(found)}" if found else "") + ")", _fix())


def check_config_json(folder: Path) -> dict | None:
    """Validate a Hugging Face ``config.json`` ({"cfg": {...}, "single_object": bool}) if there is one."""
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        return None
    try:
        data = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{cfg_path} is not valid JSON ({exc})", _fix()) from None
    model = (data.get("cfg") or {}).get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict):
        raise WeightsError(f"{cfg_path} has no cfg.model section: not a MatAnyone config", _fix())
    wrong = []
    for dotted, want in _EXPECTED_MODEL_CFG.items():
        node: object = model
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None and node != want:
            wrong.append(f"{dotted}={node!r} (expected {want!r})")
    if wrong:
        raise WeightsError(f"{cfg_path} describes a different architecture: {', '.join(wrong)}", _fix())
    return data


def read_state_dict(file: Path) -> dict[str, torch.Tensor]:
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(file), device="cpu")
        else:
            sd = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated or foreign file
        raise WeightsError(f"cannot read {file}: {type(exc).__name__}: {exc}".splitlines()[0], _fix()) from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{file} is not a plain state dict of tensors", _fix())
    return dict(sd)


def to_single_layout(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Drop the "others" input channel of a multi-object checkpoint; report which layout it was."""
    extra = layout_extra_keys()
    multi = {k: k in sd and sd[k].ndim > 1 and sd[k].shape[1] == c + 1 for k, c in extra.items()}
    if not any(multi.values()):
        return sd, "single"
    if not all(multi.values()):
        raise WeightsError("checkpoint mixes the single- and multi-object layouts ("
                           + ", ".join(f"{k} {tuple(sd[k].shape)}" for k in extra if k in sd) + ")", _fix())
    out = dict(sd)
    for k in extra:
        out[k] = sd[k][:, :-1].contiguous()
    return out, "multi"


def _summarise(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def load_into(net: MatAnyoneNet, sd: dict[str, torch.Tensor], source: str = "checkpoint") -> str:
    """Strict load; returns the layout name ("single" or "multi")."""
    sd, layout = to_single_layout(sd)
    own = net.state_dict()
    # scalars saved as 1-element vectors (numpy writers do this; torch accepts it too)
    sd = {k: (v.reshape(()) if k in own and own[k].ndim == 0 and v.shape == (1,) else v) for k, v in sd.items()}
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_summarise(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_summarise(unexpected)})")
    shapes = [f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
              if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if shapes:
        problems.append(f"{len(shapes)} keys with the wrong shape ({_summarise(shapes, 3)})")
    if problems:
        raise WeightsError(f"{source} does not match the MatAnyone network: " + "; ".join(problems), _fix())
    net.load_state_dict(sd, strict=True)
    for m in net.modules():
        if isinstance(m, SinePE):
            m._cache = None
    return layout


def load_network(path: str | Path, device: str | torch.device = "cpu") -> MatAnyoneNet:
    """Build the network and load a checkpoint (folder or file); see the module docstring."""
    file = find_weight_file(path)
    check_config_json(file.parent)
    sd = read_state_dict(file)
    net = MatAnyoneNet()
    net.layout = load_into(net, sd, str(file))  # type: ignore[attr-defined]
    net.source = str(file)  # type: ignore[attr-defined]
    return net.to(device).eval()
