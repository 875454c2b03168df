""".env.example lists every variable the image's own code reads, and CONFIG.md documents each one."""

from __future__ import annotations

import re
from pathlib import Path

from mattepod.download import Settings

ROOT = Path(__file__).resolve().parent.parent
READERS = ["docker/entrypoint.sh", "docker/runtime_setup.sh", "docker/healthcheck.py", "mattepod/download.py",
           "mattepod/weights.py", "mattepod/media/encoders.py", "Dockerfile", "app/gradio_app.py", "mattepod/jobs.py",
           "mattepod/media/tools.py", "mattepod/cli.py", "mattepod/config.py", "mattepod/gpuhealth.py"]
NOT_SETTINGS = {"BASH_SOURCE", "LINENO", "VIRTUAL_ENV", "PATH", "PIP_NO_CACHE_DIR", "PIP_DISABLE_PIP_VERSION_CHECK",
                "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "SAM2_BUILD_CUDA", "VERSION", "VCS_REF",
                "CUDA_VISIBLE_DEVICES", "PYTHONPATH", "HOME", "HUGGING_FACE_HUB_TOKEN", "MANIFEST_ENV", "GITHUB_OUTPUT"}


def example_names() -> set[str]:
    return set(re.findall(r"^(?:# )?([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))


def read_names() -> set[str]:
    names: set[str] = set()
    for rel in READERS:
        text = (ROOT / rel).read_text()
        names |= set(re.findall(r'(?:environ\.get|env\.get|getenv|num)\(\s*"([A-Z][A-Z0-9_]+)"', text))
        names |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)[:}\-]", text))
        names |= set(re.findall(r'environ\["([A-Z][A-Z0-9_]+)"\]', text))
        if rel == "Dockerfile":
            names |= set(re.findall(r"^\s+([A-Z][A-Z0-9_]+)=", text, re.M))
        loop = re.search(r"for name in ([A-Z0-9_ \\\n]+);", text)  # entrypoint's list of variables it reads
        if loop:
            names |= set(re.findall(r"[A-Z][A-Z0-9_]+", loop[1]))
    names.add("MATTEPOD_WEIGHTS_MANIFEST")  # weights.MANIFEST_ENV
    return names - NOT_SETTINGS


def test_every_variable_read_is_in_env_example():
    missing = read_names() - example_names()
    assert not missing, f"add to .env.example (and CONFIG.md): {sorted(missing)}"


def test_every_example_variable_is_documented():
    doc = (ROOT / "CONFIG.md").read_text()
    undocumented = sorted(n for n in example_names() if f"`{n}`" not in doc)
    assert not undocumented, f"document in CONFIG.md: {undocumented}"


def test_env_example_holds_no_secret():
    text = (ROOT / ".env.example").read_text()
    assert not re.search(r"^HF_TOKEN=\S", text, re.M) and "hf_" not in text.replace("hf_token", "")


def test_empty_hf_endpoint_means_the_public_hub():
    assert Settings.from_env(env={"HF_ENDPOINT": ""}).endpoint == "https://huggingface.co"
    assert Settings.from_env(env={}).endpoint == "https://huggingface.co"


def test_env_example_does_not_override_what_differs_between_the_images():
    """One .env for both images: the UI's STARTUP_COMMAND or /workspace paths would break a serverless worker."""
    text = (ROOT / ".env.example").read_text()
    for name in ("STARTUP_COMMAND", "MODEL_CACHE_DIR", "OUTPUT_DIR", "HF_HOME", "GRADIO_TEMP_DIR"):
        assert not re.search(rf"^{name}=", text, re.M), f"{name} is set in .env.example; comment it out"
