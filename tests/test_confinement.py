"""One confinement rule, pushed through every face: every path-typed config key (and the run folder, the join's
segments and plan, the paths read from a plan or a segment's metadata), in every escaping form -- ``..``,
absolute elsewhere, a symlink inside the root that leads out, a NUL byte -- is refused by the CLI, the batch
runner, the app's API (the real app through gradio_client), a serverless run and a serverless join.

Each face also gets one allowed request, so the table cannot pass by refusing everything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mattepod import batch, cli
from mattepod import config as cfgmod
from mattepod import serverless as sv
from tests.batch_media import make_clip, make_mask

# every path-typed key of the schema, and how a single path value goes into it
KEYS = {
    "input": lambda v: v,
    "output_dir": lambda v: v,
    "weights_dir": lambda v: v,
    "prompt.mask": lambda v: v,
    "prompt.mask_add": lambda v: [v],
    "prompt.mask_subtract": lambda v: [v],
    "prompt.keyframes": lambda v: [{"frame": 1, "mask": v}],
    "outputs.background": lambda v: v,
    "quality.gt": lambda v: v,
    "prompt.subjects": lambda v: [{"name": "a", "mask": "mask.png", "keyframes": [{"frame": 2, "mask": v}]},
                                  {"name": "b", "mask": v}],
}
DIR_KEYS = {"output_dir", "weights_dir"}
FORMS = ["dotdot", "dotdot_abs", "absolute", "symlink", "nul"]


def test_the_table_covers_every_path_key_of_the_schema() -> None:
    listed = {k.split("[]")[0] for k, _ in cfgmod.path_keys()}
    assert listed == set(KEYS), "a new path-typed key must join this table"


def make_world(base: Path) -> Path:
    """``base`` (the allowed root: in/clip.mp4, mask.png, link -> ../outside) and ``outside`` beside it."""
    outside = base.parent / "outside"
    make_clip(base / "in" / "clip.mp4", frames=4)
    make_mask(base / "mask.png")
    make_mask(outside / "secret.png")
    make_clip(outside / "secret.mp4", frames=3)
    (outside / "dir").mkdir(parents=True, exist_ok=True)
    (base / "link").symlink_to(outside)
    return outside


def form(name: str, base: Path, target: str) -> str:
    """``target`` (a name inside ``outside``) reached from ``base`` in the escaping form ``name``."""
    return {"dotdot": f"../outside/{target}", "dotdot_abs": f"{base}/in/../../outside/{target}",
            "absolute": f"{base.parent}/outside/{target}", "symlink": f"link/{target}",
            "nul": f"{base}/mask.png\x00{target}"}[name]


def value_for(key: str, name: str, base: Path) -> object:
    return KEYS[key](form(name, base, "dir" if key in DIR_KEYS else "secret.png"))


CASES = [(k, f) for k in KEYS for f in FORMS]


# --------------------------------------------------------------------------- CLI and batch


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """One allowed root for the module (made once: the faces below only read it or are refused)."""
    base = tmp_path_factory.mktemp("world") / "root"
    make_world(base)
    (base / "out").mkdir()
    (base / "out" / "link").symlink_to(base.parent / "outside")
    return base


@pytest.fixture
def local(world: Path, monkeypatch) -> Path:
    base = world
    monkeypatch.chdir(base)
    monkeypatch.setenv("MATTEPOD_ALLOWED_ROOTS", str(base))
    monkeypatch.setenv("OUTPUT_DIR", str(base / "out"))
    monkeypatch.setenv("MODEL_CACHE_DIR", str(base / "weights"))
    return base


@pytest.mark.parametrize("key, name", CASES)
def test_cli_refuses(local: Path, key: str, name: str, capsys) -> None:
    value = json.dumps(value_for(key, name, local))
    rc = cli.main(["run", "--input", "in/clip.mp4", "--mask", "mask.png", "--engine", "mask", "--dry-run",
                   "--set", f"{key}={value}"])
    err = capsys.readouterr().err
    assert rc in (2, 3), err
    assert key in err and "\n" not in err.strip(), err


@pytest.mark.parametrize("flag, name", [(f, n) for f in ("--input", "--mask", "--output-dir", "--weights-dir",
                                                         "--run-dir") for n in FORMS if n != "nul"])
def test_cli_flags_refuse(local: Path, flag: str, name: str, capsys) -> None:
    args = {"--input": "in/clip.mp4", "--mask": "mask.png"}
    args[flag] = form(name, local, "dir" if flag in ("--output-dir", "--weights-dir", "--run-dir") else "secret.png")
    argv = ["run", "--engine", "mask", "--dry-run"] + [x for kv in args.items() for x in kv]
    assert cli.main(argv) in (2, 3), capsys.readouterr().err
    assert not (local.parent / "outside" / "dir" / "metadata.json").exists()


def test_cli_allows_what_lies_inside(local: Path, capsys) -> None:
    rc = cli.main(["run", "--input", "in/clip.mp4", "--mask", "mask.png", "--engine", "mask", "--dry-run",
                   "--set", f"prompt.mask_add=[{local}/mask.png]", "--run-dir", "out/r1"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    cfg = json.loads(out.out)["config"]
    assert cfg["input"] == str(local / "in" / "clip.mp4") and cfg["prompt"]["mask_add"] == [str(local / "mask.png")]


def test_cli_dry_run_and_config_errors_never_import_torch(local: Path) -> None:
    import subprocess
    import sys

    code = ("import sys; from mattepod import cli; rc = cli.main(sys.argv[1:]); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', rc)")
    for argv in (["run", "--input", "in/clip.mp4", "--mask", "mask.png", "--engine", "mask", "--dry-run"],
                 ["run", "--input", "in/clip.mp4", "--set", "engine.warmup=-1"]):
        res = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=local,
                             env={**os.environ}, timeout=120)
        assert "NO-TORCH" in res.stdout, (res.stdout, res.stderr[-2000:])


@pytest.mark.parametrize("key, name", CASES)
def test_batch_refuses(local: Path, key: str, name: str, capsys) -> None:
    value = json.dumps(value_for(key, name, local))
    rc = batch.main(["--input", "in/clip.mp4", "--mask", "mask.png", "--dry-run", "--set", f"{key}={value}"])
    err = capsys.readouterr().err
    assert rc in (2, 3), err
    assert key in err, err


@pytest.mark.parametrize("flag, name", [(f, n) for f in ("--input", "--mask", "--output-dir") for n in FORMS
                                        if n != "nul"])
def test_batch_flags_refuse(local: Path, flag: str, name: str, capsys) -> None:
    args = {"--input": "in/clip.mp4", "--mask": "mask.png"}
    args[flag] = form(name, local, "dir" if flag == "--output-dir" else "secret.png")
    rc = batch.main(["--dry-run"] + [x for kv in args.items() for x in kv])
    assert rc in (2, 3), capsys.readouterr().err


def test_batch_allows_what_lies_inside(local: Path, capsys) -> None:
    rc = batch.main(["--input", "in/clip.mp4", "--mask", "mask.png", "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0 and f"{local}/out/clip" in out, out


# --------------------------------------------------------------------------- serverless


@pytest.fixture
def volume(world: Path, monkeypatch) -> Path:
    vol = world
    for k, v in {"RUNPOD_VOLUME_PATH": vol, "MATTEPOD_ALLOWED_ROOTS": vol, "OUTPUT_DIR": vol / "out",
                 "MODEL_CACHE_DIR": vol / "weights"}.items():
        monkeypatch.setenv(k, str(v))
    monkeypatch.delenv("RUNPOD_WEBHOOK_POST_OUTPUT", raising=False)
    return vol


RUN = {"video": "in/clip.mp4", "prompt": {"mask": "mask.png"}, "outputs": ["alpha"], "max_frames": 2}


@pytest.mark.parametrize("route", ["set", "config"])
@pytest.mark.parametrize("key, name", CASES)
def test_serverless_run_refuses(volume: Path, key: str, name: str, route: str) -> None:
    value = value_for(key, name, volume)
    run = {**RUN, "prompt": {"auto_person": True}}  # the job's own prompt must not hide config.prompt.mask
    if route == "set":
        inp = {**run, "set": {"engine.name": "mask", key: value}}
    else:
        data: dict = {"engine": {"name": "mask"}}
        cfgmod.set_dotted(data, key, value)
        inp = {**run, "config": data}
    out = sv.handler({"id": "c1", "input": inp})
    assert out.get("error_type") in ("ConfigError", "InputNotFoundError"), out
    assert key in out["error"], out
    assert not (volume / "out" / "clip_c1").exists()


@pytest.mark.parametrize("name", FORMS)
def test_serverless_run_refuses_video_mask_and_run_name(volume: Path, name: str) -> None:
    for inp in ({**RUN, "video": form(name, volume, "secret.mp4")},
                {**RUN, "prompt": {"mask": form(name, volume, "secret.png")}},
                {**RUN, "run_name": form(name, volume, "dir")}):
        out = sv.handler({"id": "c2", "input": {**inp, "set": {"engine.name": "mask"}}})
        assert out.get("error_type") in ("ConfigError", "InputNotFoundError"), (inp, out)
    assert not (volume.parent / "outside" / "dir" / "metadata.json").exists()


def test_serverless_run_allows_what_lies_inside(volume: Path) -> None:
    out = sv.handler({"id": "ok", "input": {**RUN, "set": {"engine.name": "mask", "prompt.mask_add": ["mask.png"]}}})
    assert out.get("status") == "completed", out


def _segment(where: Path, outputs: dict) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    (where / "metadata.json").write_text(json.dumps({"status": "completed", "outputs": outputs,
                                                     "frames": {"total": 3, "done": 3}}))
    return where


@pytest.mark.parametrize("name", FORMS)
def test_serverless_join_refuses(volume: Path, name: str) -> None:
    outside = volume.parent / "outside"
    _segment(outside / "planted", {"alpha": "../secret.mp4"})
    good = _segment(volume / "out" / f"seg_{name}", {"alpha": f"{outside}/secret.mp4"})
    bad_dir = form(name, volume, "planted")
    plan = volume / "out" / f"plan_{name}"
    plan.mkdir()
    attempts = [
        {"join": {"segments": [bad_dir]}},
        {"join": {"plan": bad_dir}},
        {"join": {"segments": [str(good)]}},  # a segment's metadata names a file outside its folder
        {"join": {"segments": [str(good)]}, "video": form(name, volume, "secret.mp4")},
    ]
    for plan_data in ({"segments": [bad_dir], "video": "in/clip.mp4", "audio": False},
                      {"segments": [str(good)], "video": form(name, volume, "secret.mp4"), "audio": True}):
        attempts.append({"join": {"plan": str(plan)}, "plan_data": plan_data})
    for i, att in enumerate(attempts):
        plan_data = att.pop("plan_data", None)
        if plan_data is not None:
            (plan / "plan.json").write_text(json.dumps(plan_data))
        out = sv.handler({"id": f"j{i}{name}", "input": {"action": "join", **att}})
        assert out.get("error_type") in ("ConfigError", "InputNotFoundError", "RunStateError"), (att, out)
    assert not list(volume.rglob("secret.mp4"))
    assert not (outside / "planted" / "joined").exists()


# --------------------------------------------------------------------------- the app's API (real app process)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from tests.app_harness import RunningApp
    from tests.app_harness import make_clip as app_clip
    from tests.app_harness import write_mask

    root = tmp_path_factory.mktemp("confine")
    (root / "input").mkdir()
    app_clip(root / "input" / "clip.mp4", frames=6)
    write_mask(root / "input" / "mask.png")
    make_mask(root / "outside" / "secret.png")
    (root / "outside" / "dir").mkdir()
    app_clip(root / "outside" / "secret.mp4", frames=3)
    (root / "input" / "link").symlink_to(root / "outside")
    with RunningApp(root) as running:
        yield running


def test_app_api_refuses_every_path_key_and_form(app) -> None:
    from gradio_client import Client

    client = Client(app.url, verbose=False)
    base = app.input

    def submit(input_path: str, options: dict) -> dict:
        return client.predict(video=None, input_path=input_path, points="[[60, 50, 1]]", box="", prompt_frame=0,
                              mask=None, options=json.dumps(options), api_name="/submit_job")

    before = set(p.name for p in app.output.iterdir())
    refused = []
    for key, name in CASES:
        try:
            submit("clip.mp4", {"engine.name": "mask", key: value_for(key, name, base)})
        except Exception as exc:  # gradio_client raises AppError with the server's one-line message
            refused.append((key, name))
            assert key in str(exc) or "chosen by the server" in str(exc), (key, name, str(exc))
    assert refused == CASES
    for name in FORMS:  # the input itself
        with pytest.raises(Exception, match="outside the allowed folders|NUL"):
            submit(form(name, base, "secret.mp4"), {"engine.name": "mask"})
    assert set(p.name for p in app.output.iterdir()) == before  # no run folder was made
    # defect 7: a relative input_path names a file in the input folder (not in the app's working folder)
    info = submit("clip.mp4", {"engine.name": "mask", "outputs.formats": ["alpha"], "prompt.mask_add": ["mask.png"]})
    assert info["input"] == str(base / "clip.mp4"), info
