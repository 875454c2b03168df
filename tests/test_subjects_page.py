"""The page's "Add subject" (#16) without a browser: the prompt state keeps each added subject's frames,
Run sends every subject (masks saved in the run folder, clicks to the job's SAM 2), and the job writes a
matte per subject. A real clip, real job folders, the mask engine."""

import time

import cv2
import numpy as np
import pytest

from app import handlers as h
from app import state as st
from app.server import AppState
from mattepod import config, jobs
from tests.app_harness import BOX, box_mask, make_clip

NO_SAM = "large"  # never generated here: clicks go to the job


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("subjects_page")
    a = AppState(jobs.Roots(root / "input", root / "output", root / "weights"))
    make_clip(a.roots.input / "clip.mp4", frames=12)
    yield a
    a.manager.close(cancel_running=True)


def test_add_subject_needs_a_prompt_and_starts_the_next(app, tmp_path):
    ps = h.load_video(app, st.PromptState(), str(app.roots.input / "clip.mp4"), NO_SAM)
    ps = h.update(app, ps, st.AddSubject(), NO_SAM)
    assert not ps.subjects and "cannot add this subject yet" in ps.message
    ps = h.click(app, ps, 30, 40, NO_SAM)
    ps = h.update(app, ps, st.AddSubject(), NO_SAM)
    assert [s.name for s in ps.subjects] == ["subject1"] and not ps.prompts and "subject1 added" in ps.message
    assert not st.problems(ps)  # Run may go with the one subject
    assert "subject1" in h.render(ps).prompt_md
    assert st.run_subjects(ps)[0].frames[0].points == [[30.0, 40.0, 1]]
    ps = h.update(app, ps, st.SetView("vr180", "left", "auto", ps.image, ps.view), NO_SAM)
    assert not ps.subjects  # a new view drops every subject's prompts too


def test_run_with_subjects_makes_a_matte_each(app, tmp_path):
    ps = h.load_video(app, st.PromptState(), str(app.roots.input / "clip.mp4"), NO_SAM)
    mpath = tmp_path / "square.png"
    cv2.imwrite(str(mpath), box_mask(0))
    ps = h.upload_mask(app, ps, str(mpath), NO_SAM)  # subject1: the square, a mask on frame 0
    ps = h.show_frame(app, ps, 6, NO_SAM)
    cv2.imwrite(str(mpath), box_mask(6))
    ps = h.upload_mask(app, ps, str(mpath), NO_SAM)  # ... and a keyframe on frame 6
    ps = h.update(app, ps, st.AddSubject(), NO_SAM)
    corner = np.zeros((96, 160), np.uint8)
    corner[60:90, 110:150] = 255
    cv2.imwrite(str(mpath), corner)
    ps = h.show_frame(app, ps, 3, NO_SAM)
    ps = h.upload_mask(app, ps, str(mpath), NO_SAM)  # subject2 (in progress): a mask on frame 3
    info = h.run(app, ps, {"engine.name": "mask", "outputs.formats": ["alpha", "idmap"], "engine.erode": 0,
                           "engine.dilate": 0})
    run = app.roots.output / info.id
    cfg = config.load(run / "config.yaml")
    subs = cfg.prompt.subjects
    assert [(s.name, s.frame, [k.frame for k in s.keyframes]) for s in subs] == [("subject1", 0, [6]),
                                                                                ("subject2", 3, [])]
    assert subs[0].color != subs[1].color
    assert np.array_equal(cv2.imread(subs[0].keyframes[0].mask, cv2.IMREAD_GRAYSCALE) > 127, box_mask(6) > 0)
    for _ in range(600):
        status = app.manager.status(info.id)
        if status.status not in ("queued", "running"):
            break
        time.sleep(0.2)
    assert status.status == "completed", status
    names = {p.name for p in run.iterdir()}
    assert {"clip_alpha.mp4", "clip_subject1_alpha.mp4", "clip_subject2_alpha.mp4", "clip_idmap_png"} <= names
    ids = cv2.imread(str(run / "clip_idmap_png" / "000006.png"), cv2.IMREAD_UNCHANGED)
    x = BOX["x0"] + 6 * BOX["speed"] + BOX["size"] // 2
    assert ids[BOX["y0"] + BOX["size"] // 2, x] == 1 and ids[75, 130] == 2 and ids[5, 5] == 0
