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


def _steps(wf: dict, job: str) -> list[dict]:
    return wf["jobs"][job]["steps"]


def test_image_is_built_smoke_tested_then_pushed():
    wf = load("image.yml")
    assert wf["on"]["push"]["tags"] == ["v*"]
    steps = _steps(wf, "image")
    builds = [(i, s["with"]) for i, s in enumerate(steps) if str(s.get("uses", "")).startswith("docker/build-push")]
    assert {b["target"] for _, b in builds} == {"ui", "serverless"}
    assert all(b["push"] is False and b["load"] is True for _, b in builds)  # nothing leaves before the smoke test
    smoke = next(i for i, s in enumerate(steps) if "docker/smoke_test.sh" in str(s.get("run", "")))
    pushes = [i for i, s in enumerate(steps) if "docker push" in str(s.get("run", ""))]
    assert pushes and min(pushes) > smoke > max(i for i, _ in builds)
    for i in pushes:
        run = steps[i]["run"]
        latest = [ln for ln in run.splitlines() if ":latest" in ln]
        assert latest and all('GITHUB_REF_TYPE" == "tag"' in ln for ln in latest)  # :latest only from tags
    names = next(s["run"] for s in steps if s.get("id") == "v")
    assert "GITHUB_REPOSITORY_OWNER,," in names and "DOCKERHUB_USERNAME,," in names  # lower-case image names
    hub = [s for s in steps if "DOCKERHUB" in str(s.get("if", ""))]
    assert len(hub) == 2  # login + push, both only when the secrets exist
    assert (ROOT / "docker" / "smoke_test.sh").is_file()


def test_release_attaches_wheel_and_sdist_after_the_image_passed():
    wf = load("image.yml")
    rel = wf["jobs"]["release"]
    assert rel["needs"] == "image" and "tag" in rel["if"]
    runs = " ".join(str(s.get("run", "")) for s in rel["steps"])
    assert "python -m build" in runs and "gh release upload" in runs and "dist/*" in runs


def test_ci_runs_the_image_rehearsal():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash docker/rehearse.sh" in ci and "debootstrap" in ci and "podman" in ci
    assert "REHEARSE_ALLOW_SKIP" not in ci  # in CI the rehearsal must really run
