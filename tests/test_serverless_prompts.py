"""Worker jobs with real prompt models on generated weights (SAM 2.1 tiny, the person detector): clicks and the
automatic person prompt, the models loaded once for all jobs of the worker, and a split whose ranges each find
the person on their own first frame. Engine ``mask`` (the matting network is not under test here)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from mattepod import detect, sam
from mattepod import serverless as sv
from mattepod import split as splitmod
from tests.batch_media import make_clip
from tests.weightgen import make_detector_weights, make_sam2_weights

pytestmark = pytest.mark.slow


@pytest.fixture
def volume(tmp_path: Path, monkeypatch) -> Path:
    vol = tmp_path / "volume"
    make_clip(vol / "in" / "clip.mp4", frames=10)
    make_sam2_weights(vol / "weights", "tiny")
    make_detector_weights(vol / "weights", person_logit=8.0)  # every proposal is a "person"
    for key, value in {"RUNPOD_VOLUME_PATH": vol, "MATTEPOD_ALLOWED_ROOTS": vol, "OUTPUT_DIR": vol / "output",
                       "MODEL_CACHE_DIR": vol / "weights"}.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.delenv("RUNPOD_WEBHOOK_POST_OUTPUT", raising=False)
    sam.clear_cache()
    detect.clear_cache()
    yield vol
    sam.clear_cache()
    detect.clear_cache()


BASE = {"video": "in/clip.mp4", "outputs": ["alpha"],
        "config": {"engine": {"name": "mask"}, "prompt": {"sam2_model": "tiny"}}}


def test_clicks_and_auto_person_jobs_share_the_loaded_models(volume: Path) -> None:
    clicks = sv.handler({"id": "c", "input": {**BASE, "prompt": {"points": [[32, 24, 1], [2, 2, 0]]}}})
    assert clicks["status"] == "completed", clicks
    person = sv.handler({"id": "p", "input": {**BASE, "prompt": {"auto_person": True, "frame": 3}}})
    assert person["status"] == "completed", person
    assert len(sam._MODELS) == 1 and len(detect._DETECTORS) == 1  # one SAM 2 for both jobs
    assert Path(person["outputs"]["alpha"]).is_file()
    bad = sv.handler({"id": "b", "input": {**BASE, "prompt": {"points": [[640, 24, 1]]}}})
    assert bad["error_type"] == "MaskError" and "640" in bad["error"]


def test_split_with_auto_person_prompts_every_range(volume: Path) -> None:
    ids = itertools.count()

    def submit(inp: dict) -> dict:  # what a RunPod endpoint does with each job, in-process
        return sv.handler({"id": f"job{next(ids)}", "input": inp})

    out = splitmod.run_split(submit, {**BASE, "prompt": {"auto_person": True}, "split": {"ranges": 2}}, parallel=1)
    plan = out["plan"]
    assert plan["prompts"] == {"method": "auto_person"}
    assert [(r["start_frame"], r["frames"]) for r in plan["ranges"]] == [(0, 5), (5, 5)]
    assert all(j["config"]["prompt"]["auto_person"] and j["config"]["prompt"]["frame"] == 0 for j in plan["jobs"])
    assert not (Path(plan["plan_dir"]) / "quick_pass").exists()  # no quick pass needed
    assert out["join"]["status"] == "completed" and out["join"]["metadata"]["frames"]["total"] == 10
