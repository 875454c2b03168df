"""The weights manifest: built-in table, MODELS selection, the env override, require()'s message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mattepod import weights
from mattepod.errors import WeightsError


def test_builtin_manifest_has_every_model_and_no_invented_hash(monkeypatch):
    monkeypatch.delenv(weights.MANIFEST_ENV, raising=False)
    models, default = weights.load_manifest()
    assert {"sam2.1_tiny", "sam2.1_small", "sam2.1_base_plus", "sam2.1_large", "matanyone", "matanyone2",
            "person_detector"} <= set(models)
    assert set(default) <= set(models)
    for m in models.values():
        assert "/" in m.repo_id and m.revision and m.files
        for f in m.files:
            # a pin is only ever a real 64-hex sha256 copied from the hub (see weights.py); else None
            assert f.sha256 is None or len(f.sha256) == 64


def test_select_groups_all_none_and_defaults():
    models, default = weights.MODELS, weights.DEFAULT_MODELS
    assert weights.select("", models, default) == list(default)
    assert weights.select("none", models, default) == []
    assert weights.select("all", models, default) == list(models)
    assert weights.select("sam2, matanyone", models, default) == [*weights.GROUPS["sam2"], "matanyone"]
    assert weights.select("matanyone matanyone", models, default) == ["matanyone"]
    with pytest.raises(WeightsError, match="unknown model 'sam3'"):
        weights.select("sam3", models, default)


def test_env_manifest_override(tmp_path: Path, monkeypatch):
    table = {"only": weights.Model("only", "org/only", (weights.WeightFile("a.bin", "ab" * 32, 10),), "main")}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(weights.manifest_to_dict(table, ("only",))))
    monkeypatch.setenv(weights.MANIFEST_ENV, str(path))
    models, default = weights.load_manifest()
    assert list(models) == ["only"] and default == ("only",)
    assert models["only"].files[0] == weights.WeightFile("a.bin", "ab" * 32, 10)
    with pytest.raises(WeightsError, match="weights for only missing"):
        weights.require("only", tmp_path / "w")
    (tmp_path / "w" / "only").mkdir(parents=True)
    (tmp_path / "w" / "only" / "a.bin").write_bytes(b"x")
    assert weights.require("only", tmp_path / "w") == tmp_path / "w" / "only"


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not valid JSON"),
    ('{"models": [{"name": "x"}]}', "lacks"),
    ('{"models": [{"name": "x", "repo_id": "o/x", "files": [{"filename": "a", "sha256": "123"}]}]}', "not 64"),
])
def test_bad_manifest_is_a_weights_error(tmp_path: Path, monkeypatch, content: str, message: str):
    path = tmp_path / "m.json"
    path.write_text(content)
    monkeypatch.setenv(weights.MANIFEST_ENV, str(path))
    with pytest.raises(WeightsError, match=message) as info:
        weights.load_manifest()
    assert info.value.exit_code == 6


def test_missing_manifest_file(tmp_path: Path, monkeypatch):
    monkeypatch.setenv(weights.MANIFEST_ENV, str(tmp_path / "nope.json"))
    with pytest.raises(WeightsError, match="cannot be read"):
        weights.load_manifest()


def test_require_message_names_the_fix(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(weights.MANIFEST_ENV, raising=False)
    with pytest.raises(WeightsError) as info:
        weights.require("sam2.1_tiny", tmp_path)
    assert "download_models.py --models sam2.1_tiny" in str(info.value)


def test_models_for_config_and_the_script_flag(tmp_path: Path, monkeypatch):
    import subprocess
    import sys

    from mattepod.config import Config

    cfg = Config()
    assert weights.models_for_config(cfg) == ["sam2.1_base_plus", "matanyone"]
    cfg = Config.model_validate({"prompt": {"sam2_model": "tiny"}, "engine": {"name": "mask"}})
    assert weights.models_for_config(cfg) == ["sam2.1_tiny"]
    cfg = Config.model_validate({"prompt": {"auto_person": True}})
    assert weights.models_for_config(cfg) == ["sam2.1_base_plus", "person_detector", "matanyone"]
    conf = tmp_path / "run.yaml"
    conf.write_text("prompt: {sam2_model: large}\nengine: {model: matanyone2}\n")
    root = Path(__file__).resolve().parent.parent
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, str(root / "scripts" / "download_models.py"), "--config", str(conf),
                          "--weights-dir", str(tmp_path / "w")], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 6  # offline and nothing there: the error names the first model the config needs
    assert "models: sam2.1_large, matanyone2" in res.stderr and "HF_HUB_OFFLINE" in res.stderr
    conf.write_text("engine: {warmup: -1}\n")
    res = subprocess.run([sys.executable, str(root / "scripts" / "download_models.py"), "--config", str(conf)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 2 and "engine.warmup" in res.stderr  # a bad config is a ConfigError
