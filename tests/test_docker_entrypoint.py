"""docker/entrypoint.sh + docker/runtime_setup.sh run on the host against the FAKE hub (tests/fake_hf_hub.py).

What a RunPod pod sees on its first start, on every restart, with a corrupt volume, with two pods sharing a
volume, and with the hub unreachable. STARTUP_COMMAND points at a tiny test app that records its PID, so the
tests also prove the entrypoint exec's the app (signals reach it) instead of running it as a child.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_hf_hub import FakeHub, FakeRepo, closed_endpoint

from mattepod.weights import Model, WeightFile, manifest_to_dict

ROOT = Path(__file__).resolve().parent.parent
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"

FILES = {
    "org/net": {"config.json": b'{"layers": 2}\n', "net.safetensors": os.urandom(300_000)},
    "org/sam": {"sam.pt": os.urandom(200_000)},
}
MODELS = {
    "net": Model("net", "org/net", (WeightFile("config.json"), WeightFile("net.safetensors")), kind="matanyone"),
    "sam": Model("sam", "org/sam", (WeightFile("sam.pt"),)),
}
APP = """import json, os, sys
with open(os.environ["APP_RECORD"], "a") as f:
    f.write(json.dumps({"pid": os.getpid(), "argv": sys.argv[1:]}) + "\\n")
print("APP STARTED", flush=True)
"""


@pytest.fixture
def hub():
    with FakeHub({repo: FakeRepo(dict(files)) for repo, files in FILES.items()}) as h:
        yield h


@pytest.fixture
def box(tmp_path: Path, hub: FakeHub) -> dict:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(manifest_to_dict(MODELS, ("net", "sam"))))
    app = tmp_path / "app.py"
    app.write_text(APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "RUNPOD_", "MODELS"))}
    env.update({
        "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "hf-home"),
        "MODEL_CACHE_DIR": str(tmp_path / "workspace" / "weights"), "OUTPUT_DIR": str(tmp_path / "workspace" / "output"),
        "MATTEPOD_WEIGHTS_MANIFEST": str(manifest), "HF_ENDPOINT": hub.endpoint, "ENCODER_PROBE": "0",
        "MATTEPOD_DOWNLOAD_RETRIES": "1", "MATTEPOD_DOWNLOAD_BACKOFF": "0.05", "APP_RECORD": str(tmp_path / "app.jsonl"),
        "STARTUP_COMMAND": f"{sys.executable} {app} --from-startup-command",
    })
    return {"env": env, "weights": Path(env["MODEL_CACHE_DIR"]), "record": tmp_path / "app.jsonl", "tmp": tmp_path}


def start(box: dict, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(ENTRYPOINT), *args], env={**box["env"], **env}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def run(box: dict, *args: str, **env: str) -> tuple[subprocess.Popen, str, str]:
    proc = start(box, *args, **env)
    out, err = proc.communicate(timeout=120)
    return proc, out, err


def app_runs(box: dict) -> list[dict]:
    path = box["record"]
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_first_start_downloads_verifies_and_execs_the_app(box, hub):
    proc, out, err = run(box)
    assert proc.returncode == 0, err
    assert "APP STARTED" in out
    runs = app_runs(box)
    assert runs == [{"pid": proc.pid, "argv": ["--from-startup-command"]}]  # exec: the app *is* the process
    for repo, name in (("org/net", "net"), ("org/sam", "sam")):
        for filename, data in FILES[repo].items():
            assert (box["weights"] / name / filename).read_bytes() == data
    assert hub.count("/cdn/", "GET") == 2
    assert "[weights] ready: 3 files, 3 downloaded" in err


def test_restart_makes_zero_requests(box, hub):
    assert run(box)[0].returncode == 0
    before = len(hub.requests)
    proc, out, err = run(box)
    assert proc.returncode == 0 and "APP STARTED" in out, err
    assert len(hub.requests) == before
    assert "0 downloaded" in err


def test_a_corrupted_file_is_replaced_on_the_next_start(box, hub):
    assert run(box)[0].returncode == 0
    target = box["weights"] / "sam" / "sam.pt"
    data = bytearray(target.read_bytes())
    data[100:110] = b"\0" * 10
    target.write_bytes(bytes(data))
    cdn_before = hub.count("/cdn/", "GET")
    proc, out, err = run(box)
    assert proc.returncode == 0, err
    assert target.read_bytes() == FILES["org/sam"]["sam.pt"]
    assert hub.count("/cdn/", "GET") == cdn_before + 1  # only the bad file came again
    assert "corrupt" in err and "1 downloaded" in err


def test_two_containers_sharing_a_volume_download_once(box, hub):
    hub.chunk_delay = 0.2  # ~1.8 s of downloading in all
    first = start(box)
    deadline = time.monotonic() + 60
    while not hub.requests and time.monotonic() < deadline:  # the second pod starts while the first downloads
        time.sleep(0.02)
    procs = [first, start(box)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert hub.count("/cdn/", "GET") == 2  # one GET per LFS file in total
    downloaded = [int(err.split("files, ")[1].split(" downloaded")[0]) for _, err in results]
    assert sorted(downloaded) == [0, 3]
    assert any("another process is fetching it" in err for _, err in results)
    assert len(app_runs(box)) == 2


def test_unreachable_hub_with_weights_present_starts(box, hub):
    assert run(box)[0].returncode == 0
    proc, out, err = run(box, HF_ENDPOINT=closed_endpoint())
    assert proc.returncode == 0 and "APP STARTED" in out, err
    proc, out, err = run(box, HF_ENDPOINT=closed_endpoint(), HF_HUB_OFFLINE="1")
    assert proc.returncode == 0 and "APP STARTED" in out, err


def test_unreachable_hub_without_weights_fails_loudly(box):
    proc, out, err = run(box, HF_ENDPOINT=closed_endpoint())
    assert proc.returncode == 6
    assert "APP STARTED" not in out and app_runs(box) == []
    assert "[weights] ERROR: cannot download org/net/config.json" in err
    assert "runtime setup failed (exit 6); not starting" in err


def test_offline_without_weights_fails_loudly(box, hub):
    proc, out, err = run(box, HF_HUB_OFFLINE="1")
    assert proc.returncode == 6 and app_runs(box) == []
    assert "HF_HUB_OFFLINE is set" in err and len(hub.requests) == 0


def test_a_given_command_replaces_the_startup_command(box, hub):
    app = str(box["tmp"] / "app.py")
    proc, out, err = run(box, sys.executable, app, "clip.mp4", "--two words")
    assert proc.returncode == 0, err
    assert app_runs(box) == [{"pid": proc.pid, "argv": ["clip.mp4", "--two words"]}]
    proc, _, _ = run(box, "bash", "-c", "exit 3")
    assert proc.returncode == 3  # the command's own exit status comes back


def test_models_selection_and_unknown_model(box, hub):
    proc, out, err = run(box, MODELS="sam")
    assert proc.returncode == 0, err
    assert not (box["weights"] / "net").exists() and (box["weights"] / "sam" / "sam.pt").is_file()
    proc, out, err = run(box, MODELS="none")
    assert proc.returncode == 0 and "MODELS=none" in err
    runs = len(app_runs(box))
    proc, out, err = run(box, MODELS="sam3")
    assert proc.returncode == 6 and "unknown model 'sam3'" in err
    assert len(app_runs(box)) == runs


def test_runpod_proxy_url_and_unwritable_volume(box, hub):
    proc, out, err = run(box, RUNPOD_POD_ID="abc123xyz", PORT="7860")
    assert proc.returncode == 0
    assert "https://abc123xyz-7860.proxy.runpod.net" in err
    proc, out, err = run(box, MODEL_CACHE_DIR="/dev/null/weights")
    assert proc.returncode == 6 and "/dev/null/weights is not writable" in err


def test_encoder_probe_runs_at_start_and_is_cached(box, hub):
    proc, out, err = run(box, ENCODER_PROBE="1", MODELS="none")
    assert proc.returncode == 0, err
    assert "[encoders] works here:" in err and "libx264" in err
    cache = json.loads((Path(box["env"]["OUTPUT_DIR"]) / ".mattepod-encoders.json").read_text())
    assert cache["encoders"]["libx264"] is True
