"""The GitHub workflows parse and do what BUILD.md says: checks on push, image build + push on a tag."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
WF = ROOT / ".github" / "workflows"


def load(name: str) -> dict:
    data = yaml.safe_load((WF / name).read_text())
    data["on"] = data.get("on", data.get(True))  # YAML 1.1 reads the key `on` as True
    return data


def test_checks_run_lint_and_tests_on_push():
    wf = load("checks.yml")
    assert "push" in wf["on"]
    steps = " ".join(str(s.get("run", "")) for job in wf["jobs"].values() for s in job["steps"])
    assert "hadolint Dockerfile" in steps and "shellcheck" in steps and "python -m pytest" in steps


def test_image_builds_and_pushes_both_targets_on_a_tag():
    wf = load("image.yml")
    assert wf["on"]["push"]["tags"] == ["v*"]
    builds = [s["with"] for job in wf["jobs"].values() for s in job["steps"]
              if str(s.get("uses", "")).startswith("docker/build-push-action")]
    assert {b["target"] for b in builds} == {"ui", "serverless"}
    assert all(b["push"] is True for b in builds)
