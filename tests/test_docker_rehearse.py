"""docker/rehearse.sh refuses loudly or skips cleanly on a machine that cannot build (the build itself runs in
.ci/run: it takes many minutes and GBs, too much for the test suite)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "docker" / "rehearse.sh"


def rehearse(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "REHEARSE_DIR": str(tmp_path / "work"), "PODMAN": str(tmp_path / "no-podman-here"), **env}
    return subprocess.run(["bash", str(SCRIPT)], env=full, capture_output=True, text=True, timeout=60)


def test_without_podman_the_rehearsal_fails_loudly(tmp_path: Path) -> None:
    res = rehearse(tmp_path)
    assert res.returncode != 0
    assert "[rehearse] FAILED at step 'preflight'" in res.stderr and "podman" in res.stderr
    assert "REHEARSE_ALLOW_SKIP=1" in res.stderr  # says how to skip on purpose
    assert not (tmp_path / "work").exists()  # nothing started, nothing to clean


def test_allowed_skip_is_clean_and_says_why(tmp_path: Path) -> None:
    res = rehearse(tmp_path, REHEARSE_ALLOW_SKIP="1")
    assert res.returncode == 0, res.stderr
    last = json.loads(res.stdout.strip().splitlines()[-1])
    assert last["status"] == "skipped" and "podman" in last["reason"]
    assert "SKIPPED" in res.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("podman") or not shutil.which("debootstrap"),
                    reason="needs root, podman and debootstrap (as in .ci/run)")
def test_a_failed_step_is_named_and_the_work_folder_removed(tmp_path: Path) -> None:
    res = rehearse(tmp_path, PODMAN="podman", PYTHON=sys.executable, PYTHONPATH=str(ROOT),
                   DEBIAN_MIRROR="http://127.0.0.1:9/debian")  # nothing listens: debootstrap fails at once
    assert res.returncode == 1, res.stderr
    assert "[rehearse] FAILED at step 'bootstrap': debootstrap failed" in res.stderr
    assert "store removed" in res.stderr and not (tmp_path / "work").exists()
    assert not res.stdout.strip()  # no figures line for a failed rehearsal
