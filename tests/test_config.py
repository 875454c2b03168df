from pathlib import Path

import pytest
import yaml

from mattepod import config
from mattepod.errors import ConfigError
from tests.conftest import ROOT, run_cli


def test_shipped_generate_yaml_is_the_rendered_schema():
    assert (ROOT / "configs" / "generate.yaml").read_text() == config.render_yaml(), \
        "configs/generate.yaml is stale: python -c 'from mattepod import config; print(config.render_yaml(), end=\"\")' > configs/generate.yaml"


def test_every_key_is_documented_in_config_md():
    doc = (ROOT / "CONFIG.md").read_text()
    missing = [key for key, _ in config.iter_keys() if f"`{key}`" not in doc]
    assert not missing, f"keys missing from CONFIG.md: {missing}"


def test_defaults_round_trip(tmp_path: Path):
    p = tmp_path / "c.yaml"
    p.write_text(config.render_yaml())
    cfg = config.load(p)
    assert cfg == config.Config()
    again = config.validate(yaml.safe_load(config.dump(cfg)))
    assert again == cfg


@pytest.mark.parametrize("data, words", [
    ({"engine": {"bogus": 1}}, ["engine.bogus", "unknown key"]),
    ({"engine": {"precision": "fp8"}}, ["engine.precision", "'fp32'", "fp8"]),
    ({"scale": 2}, ["scale"]),
    ({"outputs": {"color": "green"}}, ["outputs.color", "#RRGGBB"]),
    ({"outputs": {"formats": ["gif"]}}, ["outputs.formats.0", "alpha"]),
    ({"outputs": {"formats": ["packed"]}}, ["stereo.mode"]),
])
def test_bad_values_name_the_key_and_the_allowed_values(data, words):
    with pytest.raises(ConfigError) as err:
        config.validate(data)
    for w in words:
        assert w in str(err.value)


def test_overrides_and_set_parsing(tmp_path: Path):
    key, value = config.parse_set("engine.warmup=3")
    cfg = config.load(None, {key: value, "outputs.formats": ["alpha"]})
    assert cfg.engine.warmup == 3 and cfg.outputs.formats == ["alpha"]
    with pytest.raises(ConfigError):
        config.parse_set("engine.warmup")


def test_cli_generate_config_writes_and_never_overwrites(tmp_path: Path):
    out = tmp_path / "my.yaml"
    res = run_cli("--generate-config", str(out))
    assert res.returncode == 0, res.stderr
    assert config.load(out) == config.Config()
    again = run_cli("--generate-config", str(out))
    assert again.returncode == ConfigError.exit_code and "exists" in again.stderr


def test_cli_bad_config_exits_2_naming_the_key(tmp_path: Path):
    p = tmp_path / "bad.yaml"
    p.write_text("engine:\n  warmpu: 3\n")
    res = run_cli("run", str(p), "--dry-run")
    assert res.returncode == 2
    assert "engine.warmpu: unknown key" in res.stderr
