"""Issue 12's numbered defects, reproduced against the real faces (serverless handler, CLI, jobs), and the one
request model / points parser / settings they now share.

1. ``set.input`` skipped confinement; 2. ``join`` read any file (planted metadata.json / plan.json);
3. a job id ``..`` escaped ``.jobs/`` (and the clean-up wiped the volume); 4. ``run_name`` through a symlink
wrote outside; 6. the "interrupted" resume hint did not work (it is executed here). (5, SSRF: test_netfetch.py;
7, the app's relative input path: test_confinement.py, through the real app.)
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from mattepod import config as cfgmod
from mattepod import jobs
from mattepod import request as rq
from mattepod import serverless as sv
from mattepod import settings
from mattepod.errors import ConfigError
from mattepod.paths import Roots, confine, safe_name
from tests.batch_media import make_clip, make_mask
from tests.conftest import ROOT


@pytest.fixture
def volume(tmp_path: Path, monkeypatch) -> Path:
    vol = tmp_path / "volume"
    make_clip(vol / "in" / "clip.mp4", frames=6)
    make_mask(vol / "mask.png")
    make_clip(tmp_path / "outside" / "secret.mp4", frames=3)
    for name in ("RUNPOD_WEBHOOK_POST_OUTPUT", "MATTEPOD_ALLOW_PRIVATE_URLS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RUNPOD_VOLUME_PATH", str(vol))
    monkeypatch.setenv("MATTEPOD_ALLOWED_ROOTS", str(vol))
    monkeypatch.setenv("OUTPUT_DIR", str(vol / "out"))
    return vol


MASKED = {"video": "in/clip.mp4", "prompt": {"mask": "mask.png"}, "outputs": ["png"],
          "set": {"engine.name": "mask"}, "max_frames": 2}


def job(inp: dict, jid: str = "t1") -> dict:
    return {"id": jid, "input": inp}


def test_1_set_input_is_confined(volume: Path) -> None:
    secret = volume.parent / "outside" / "secret.mp4"
    out = sv.handler(job({**MASKED, "set": {"engine.name": "mask", "input": str(secret)}}))
    assert "error" in out, out
    assert "input" in out["error"]
    assert not list((volume / "out").rglob("*.png"))


def test_1_set_output_dir_is_refused_not_ignored(volume: Path) -> None:
    out = sv.handler(job({**MASKED, "set": {"engine.name": "mask", "output_dir": str(volume / "elsewhere")}}))
    assert out.get("error_type") == "ConfigError" and "output_dir" in out["error"], out


def _plant_segment(root: Path, name: str, outputs: dict) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "metadata.json").write_text(json.dumps({"status": "completed", "outputs": outputs,
                                                 "frames": {"total": 3, "done": 3}}))
    return d


def test_2_join_never_reads_a_file_named_by_planted_metadata(volume: Path) -> None:
    secret = volume.parent / "outside" / "secret.mp4"
    seg = _plant_segment(volume / "out" / ".jobs" / "x", "input", {"alpha": str(secret)})
    out = sv.handler(job({"action": "join", "join": {"segments": [str(seg)]}}, "j1"))
    assert "error" in out, out
    seg2 = _plant_segment(volume / "out", "planted", {"alpha": str(secret)})
    out = sv.handler(job({"action": "join", "join": {"segments": [str(seg2)]}}, "j2"))
    assert "error" in out and "outside" in out["error"], out
    assert not list((volume / "out").rglob("secret.mp4"))


def test_2_join_never_follows_a_planted_plan(volume: Path) -> None:
    secret = volume.parent / "outside" / "secret.mp4"
    plan_dir = volume / "out" / "fake_split"
    seg = _plant_segment(volume.parent / "outside", "seg", {"alpha": "secret.mp4"})
    plan_dir.mkdir(parents=True)
    (plan_dir / "plan.json").write_text(json.dumps({"video": str(secret), "segments": [str(seg)], "audio": True}))
    out = sv.handler(job({"action": "join", "join": {"plan": str(plan_dir)}}, "j3"))
    assert "error" in out and "outside" in out["error"], out
    (plan_dir / "plan.json").write_text(json.dumps({"video": str(secret), "segments": [], "audio": True}))
    out = sv.handler(job({"action": "join", "join": {"plan": str(plan_dir)}}, "j4"))
    assert "error" in out, out


def test_2_a_downloaded_file_is_never_named_after_the_url(volume: Path, monkeypatch) -> None:
    """A URL ending in /metadata.json must not leave a file called metadata.json on the volume."""
    from tests.test_netfetch import serve

    monkeypatch.setenv("MATTEPOD_ALLOW_PRIVATE_URLS", "1")
    with serve({"/x/metadata.json": b'{"status": "completed"}'}) as base:
        out = sv.handler(job({**MASKED, "video": f"{base}/x/metadata.json"}, "dl"))
    assert "error" in out, out
    assert not list((volume / "out").rglob("metadata.json"))


@pytest.mark.parametrize("jid", ["..", ".", "../x", "a/b", "", "x\x00y"])
def test_3_job_ids_are_one_safe_name(volume: Path, jid: str) -> None:
    keep = volume / "out" / "keep.txt"
    keep.parent.mkdir(parents=True, exist_ok=True)
    keep.write_text("finished work")
    out = sv.handler(job(MASKED, jid))
    assert out.get("error_type") == "ConfigError" and "job id" in out["error"], out
    assert keep.read_text() == "finished work"


def test_4_run_name_through_a_symlink_is_refused(volume: Path) -> None:
    (volume / "out").mkdir(parents=True, exist_ok=True)
    (volume / "out" / "link").symlink_to(volume.parent / "outside")
    for name in ("link", "link/run", "../x", "a/../../x"):
        out = sv.handler(job({**MASKED, "run_name": name}, "r4"))
        assert "error" in out and "run_name" in out["error"], (name, out)
    assert not (volume.parent / "outside" / "metadata.json").exists()


def test_6_the_interrupted_hint_resumes_the_run(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.mp4", frames=8)
    mask = make_mask(tmp_path / "mask.png")
    run = tmp_path / "out" / "clip_run"
    env = {"PYTHONPATH": str(ROOT), "MATTEPOD_TEST_KILL_AT_FRAME": "3", "PATH": "/usr/bin:/bin"}
    killed = subprocess.run([sys.executable, "-m", "mattepod", "run", "--input", str(clip), "--mask", str(mask),
                             "--engine", "mask", "--outputs", "alpha", "--run-dir", str(run), "--set",
                             "recovery.segment_frames=2", "-q"], capture_output=True, text=True, env=env,
                            timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    info = jobs.read_job(run)
    assert info.status == "interrupted"
    hint = info.error["message"].split("resume it: ", 1)[1]
    argv = shlex.split(hint)
    assert argv[:3] == ["python", "-m", "mattepod"], hint
    env.pop("MATTEPOD_TEST_KILL_AT_FRAME")
    done = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((run / "metadata.json").read_text())["status"] == "completed"


# --------------------------------------------------------------------------- the shared parts


@pytest.mark.parametrize("text, want", [
    ("640,360,1;100,80,0", [(640, 360, 1), (100, 80, 0)]),
    ("5,6", [(5, 6, 1)]),
    ("[[1, 2, 0], [3, 4]]", [(1, 2, 0), (3, 4, 1)]),
    ([{"x": 1, "y": 2}], [(1, 2, 1)]),
    ([[1.5, 2.5, 1]], [(1.5, 2.5, 1)]),
    ("", []),
])
def test_one_points_parser_reads_every_face_form(text, want) -> None:
    got = [(p["x"], p["y"], p["label"]) for p in rq.parse_points(text)]
    assert got == want


@pytest.mark.parametrize("bad", ["1,2,3,4", "a,b", "1,2,7", "[[1]]", [{"x": 1}], "[nope"])
def test_points_parser_refuses_with_one_line(bad) -> None:
    with pytest.raises(ConfigError) as err:
        rq.parse_points(bad)
    assert "->" in str(err.value) and "\n" not in str(err.value)


def test_box_parser() -> None:
    assert rq.parse_box("1,2,3,4") == rq.parse_box([1, 2, 3, 4]) == rq.parse_box("[1;2;3;4]") == [1, 2, 3, 4]
    with pytest.raises(ConfigError, match="x0,y0,x1,y1"):
        rq.parse_box("1,2,3")


def test_request_order_and_fixed_keys(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OUTPUT_DIR", str(tmp_path / "env-out"))
    req = {"input": "a.mp4", "config": {"engine": {"warmup": 3}, "scale": 0.5}, "scale": 0.75,
           "prompt": {"points": "1,2;3,4,0", "frame": 2}, "overrides": {"engine.warmup": 4}}
    cfg = rq.to_config(req)
    assert (cfg.scale, cfg.engine.warmup, cfg.prompt.frame) == (0.75, 4, 2)
    assert [(p.x, p.label) for p in cfg.prompt.points] == [(1, 1), (3, 0)]
    assert cfg.output_dir == str(tmp_path / "env-out")  # the one OUTPUT_DIR rule
    assert rq.to_config({**req, "output_dir": "mine"}).output_dir == "mine"
    with pytest.raises(ConfigError, match="input is chosen by the server"):
        rq.to_config(req, fixed={"input": "b.mp4"})
    assert rq.to_config(req, fixed={"input": "a.mp4"}).input == "a.mp4"
    with pytest.raises(ConfigError, match="prompt.points: .*click 1"):
        rq.to_config({"prompt": {"points": "x"}})


def test_confine_resolves_every_path_key(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "w").mkdir(parents=True)
    roots = Roots.of(read=[root], write=[root / "out"], weights=[root / "w"], base=root)
    cfg = cfgmod.Config(input="in/a.mp4", output_dir="out", weights_dir="w",
                        prompt={"mask": "m.png", "mask_add": ["a.png"], "keyframes": [{"frame": 2, "mask": "k.png"}]})
    got = confine(cfg, roots)
    assert got.input == str(root / "in" / "a.mp4") and got.prompt.keyframes[0].mask == str(root / "k.png")
    assert got.weights_dir == str(root / "w") and got.output_dir == str(root / "out")
    with pytest.raises(Exception, match="weights_dir"):
        confine(cfg.model_copy(update={"weights_dir": "out"}), roots)
    keys = dict(cfgmod.path_keys())
    assert {"input", "output_dir", "weights_dir", "prompt.mask", "prompt.mask_add", "prompt.mask_subtract",
            "prompt.keyframes[].mask", "outputs.background"} <= set(keys)


@pytest.mark.parametrize("bad", ["..", ".", "", "a/b", ".hidden", "x\x00", "a" * 300, "é"])
def test_safe_name(bad: str) -> None:
    with pytest.raises(ConfigError):
        safe_name(bad, "run_name")
    assert safe_name("clip_2026-01.v2") == "clip_2026-01.v2"


def test_settings_name_the_variable(monkeypatch) -> None:
    monkeypatch.setenv("MATTEPOD_MAX_JOBS", "lots")
    with pytest.raises(ConfigError, match="MATTEPOD_MAX_JOBS"):
        settings.get()
    monkeypatch.setenv("MATTEPOD_MAX_JOBS", "3")
    assert settings.get().max_jobs == 3


def test_every_setting_is_documented() -> None:
    doc = (ROOT / "CONFIG.md").read_text()
    missing = [f.alias for f in settings.Settings.model_fields.values() if f"`{f.alias}`" not in doc]
    assert not missing, missing


def test_a_planted_run_folder_cannot_be_resumed_into_outside_files(volume: Path, monkeypatch, capsys) -> None:
    """A run folder whose own config.yaml names files outside the roots is refused on resume (worker and CLI)."""
    from mattepod import cli

    secret = volume.parent / "outside" / "secret.mp4"
    run = volume / "out" / "planted"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(cfgmod.dump(cfgmod.Config(input=str(secret), engine={"name": "mask"},
                                                               prompt={"mask": str(volume / "mask.png")})))
    (run / "metadata.json").write_text(json.dumps({"status": "running"}))
    out = sv.handler(job({**MASKED, "run_name": "planted"}, "p1"))
    assert out.get("error_type") == "InputNotFoundError" and "input" in out["error"], out
    monkeypatch.chdir(volume)
    assert cli.main(["run", "--resume", str(run)]) == 3
    assert "outside the allowed folders" in capsys.readouterr().err
    assert json.loads((run / "metadata.json").read_text())["status"] == "running"
