"""MatAnyone network + loader: exact checkpoint layout, strict loading, per-module fidelity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from matanyone_common import REF, generated_weights, loaded_net, need_reference, write_weights
from matanyone_common import one_thread  # noqa: F401 (fixture)
from mattepod.errors import WeightsError
from mattepod.matanyone.core import InferenceCore
from mattepod.matanyone.loader import load_network
from mattepod.matanyone.network import MatAnyoneNet


@pytest.fixture(scope="module")
def weights_root(tmp_path_factory):
    need_reference()
    return write_weights(tmp_path_factory)


def _manifest() -> list[tuple[str, tuple[int, ...], str]]:
    need_reference()
    rows = []
    for line in (REF / "state_dict_manifest.tsv").read_text().splitlines()[1:]:
        key, shape, dtype = line.split("\t")[:3]
        rows.append((key, tuple(int(s) for s in shape.strip("[]").split(",") if s.strip()), dtype))
    return rows


def test_state_dict_layout_matches_the_official_manifest():
    """Key names, order-independent; shapes and dtypes: the checkpoint interface."""
    rows = _manifest()
    sd = MatAnyoneNet().state_dict()
    assert len(rows) == 562 and len(sd) == 562
    assert set(sd) == {k for k, _, _ in rows}
    for key, shape, dtype in rows:
        assert tuple(sd[key].shape) == shape, key
        assert str(sd[key].dtype) == f"torch.{dtype}", key
    assert sum(v.numel() for v in sd.values()) == 35_284_647


def test_construction_downloads_nothing(monkeypatch):
    def no_net(*a, **k):
        raise AssertionError("network access during construction")

    import socket

    import torch.utils.model_zoo

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_net)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_net)
    monkeypatch.setattr(torch.utils.model_zoo, "load_url", no_net)
    monkeypatch.setattr(socket.socket, "connect", no_net)
    net = MatAnyoneNet()
    assert not net.training  # inference-only: BatchNorm uses running statistics
    net.train()
    assert not net.pixel_encoder.bn1.training


def test_engine_modules_do_not_import_torchvision():
    code = ("import sys, mattepod.matting, mattepod.matanyone.core; "
            "sys.exit(1 if 'torchvision' in sys.modules else 0)")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=120).returncode == 0


@pytest.mark.parametrize("kind", ["hf", "pth"])
def test_module_refs(weights_root, kind, one_thread):
    """Steps A (mask), B (first-frame prediction), C (normal step with top-k readout) reproduce the
    official per-module tensors within 1e-4 * max(1, max|ref|), loading through the real loader."""
    path = weights_root / ("matanyone" if kind == "hf" else "pth/matanyone.pth")
    net = loaded_net(str(path))
    assert net.layout == "single"
    ref = np.load(REF / "module_refs.npz")
    core = InferenceCore(net)
    img0, img1 = (torch.from_numpy(ref[k]) for k in ("input_image0", "input_image1"))
    mask = torch.from_numpy(ref["input_mask0_255"])
    traces = {}
    for prefix, run in (("A", lambda: core.step_mask(img0, mask)), ("B", lambda: core.step_first_frame(img0)),
                        ("C", lambda: core.step(img1))):
        core.trace = {}
        run()
        traces[prefix] = core.trace
    core.trace = None
    checked = []
    for name in ref.files:
        if name.startswith("input"):
            continue
        prefix, rest = name.split("_", 1)
        want = ref[name]
        assert rest in traces[prefix], f"{name} not produced"
        got = traces[prefix][rest].numpy().reshape(want.shape)
        tol = 1e-4 * max(1.0, float(np.abs(want).max()))
        err = float(np.abs(got - want).max())
        assert err <= tol, f"{name}: max |diff| {err:.3g} > {tol:.3g}"
        checked.append(name)
    assert len(checked) == 75


def test_multi_object_layout_loads_and_matches(tmp_path_factory, weights_root):
    """The 5/258-channel checkpoint is converted (its 'others' channel dropped) and gives the same
    network as the single layout, bit for bit."""
    root = write_weights(tmp_path_factory, "multi")
    net = load_network(root / "matanyone", "cpu")
    assert net.layout == "multi"
    single = loaded_net(str(weights_root / "matanyone"))
    a, b = net.state_dict(), single.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _corrupt(tmp_path, sd: dict) -> str:
    p = tmp_path / "matanyone.pth"
    torch.save(sd, p)
    with pytest.raises(WeightsError) as err:
        load_network(p)
    return str(err.value)


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path):
    base = {k: torch.from_numpy(v) for k, v in generated_weights().items()}
    sd = dict(base)
    del sd["temp_sparity.conv3x3_out.weight"]
    sd["module.extra.weight"] = torch.zeros(3)
    msg = _corrupt(tmp_path, sd)
    assert "1 missing keys (temp_sparity.conv3x3_out.weight)" in msg
    assert "1 unexpected keys (module.extra.weight)" in msg
    sd = dict(base)
    sd["key_proj.key_proj.weight"] = torch.zeros(64, 256, 1, 1)
    assert "key_proj.key_proj.weight (64, 256, 1, 1) != (64, 256, 3, 3)" in _corrupt(tmp_path, sd)
    sd = dict(base)
    sd["mask_encoder.conv1.weight"] = torch.zeros(64, 5, 7, 7)  # only one of the two multi keys
    assert "mixes the single- and multi-object layouts" in _corrupt(tmp_path, sd)


def test_bad_files_and_folders(tmp_path, weights_root):
    with pytest.raises(WeightsError, match="not found"):
        load_network(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsError, match="no MatAnyone checkpoint"):
        load_network(empty)
    junk = tmp_path / "junk" / "model.safetensors"
    junk.parent.mkdir()
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        load_network(junk.parent)
    # a config.json for another architecture is refused before the weights are read
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"cfg": {"model": {"key_dim": 128}}}))
    (other / "model.safetensors").write_bytes(b"")
    with pytest.raises(WeightsError, match="key_dim=128"):
        load_network(other)
