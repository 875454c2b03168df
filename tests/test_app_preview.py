"""Preview (issue 13): the matte on a few frames after the prompt from a short low-resolution run, without a
browser. A real clip, real frame seeks, the real job layer and CLI; the weight-free mask engine keeps these
fast (the browser test runs MatAnyone with generated weights)."""

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from app import handlers as h
from app import media as mediamod
from app import preview as pv
from app import state as st
from app.server import AppState
from mattepod import jobs
from tests.app_harness import BOX, box_mask, make_clip

NO_SAM = "large"  # no SAM 2 weights here: masks come from files
OPTS = h.ui_overrides(["alpha", "green"], "mask", 1.0, -1, 0, 0, 0, "#00B140", "mono", "left", "auto", 0, "tiny")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("preview")
    a = AppState(jobs.Roots(root / "input", root / "output", root / "weights"))
    make_clip(a.roots.input / "clip.mp4", frames=40, fps=10)  # 2.5 s at 10 fps: a 25-frame preview span
    yield a
    a.manager.close(cancel_running=True)
    pv.service(a.roots.output).manager.close(cancel_running=True)


def with_mask(app, ps, frame, tmp_path):
    ps = h.show_frame(app, ps, frame, NO_SAM)
    path = tmp_path / f"mask{frame}.png"
    cv2.imwrite(str(path), box_mask(frame))
    return h.upload_mask(app, ps, str(path), NO_SAM)


def wait_final(app, rec, key, opts=OPTS, timeout=90) -> h.PreviewView:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        view = h.preview_view(app, rec, key, opts)
        if view.final:
            return view
        assert "Previewing frames" in view.line or "waits" in view.line, view.line
        time.sleep(0.2)
    raise AssertionError(f"preview not finished: {view.line}")


def test_preview_runs_the_prompt_on_the_next_seconds_at_low_res_and_shows_the_right_frames(app, tmp_path):
    ps = h.load_video(app, st.PromptState(), str(app.roots.input / "clip.mp4"), NO_SAM)
    ps = with_mask(app, ps, 6, tmp_path)
    ps = with_mask(app, ps, 20, tmp_path)  # a keyframe inside the span
    ps = with_mask(app, ps, 35, tmp_path)  # and one after it
    key = h.preview_key(ps)
    rec = h.start_preview(app, ps, OPTS)
    assert (rec["start"], rec["count"], rec["shown"]) == (6, 25, [6, 14, 22, 30])
    assert rec["left_out"] == ["keyframe 35 is after the preview span (frames 6–30)"]
    view = wait_final(app, rec, key)
    assert not view.stale and view.line.startswith("Preview of frames 6–30 (mask, ≤384 px)")
    assert "keyframe 35" in view.line
    assert [c for _, c in view.items] == ["frame 6", "frame 14", "frame 22", "frame 30"]

    # a real run of the same prompt, shifted to the span: anchor at 0, the keyframe inside, nothing written but PNGs
    run = Path(view.items[0][0]).parent
    assert run.parent == app.roots.output / pv.PREVIEW_DIR
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert (cfg["start_frame"], cfg["max_frames"], cfg["engine"]["max_size"]) == (6, 25, 384)
    assert cfg["prompt"]["frame"] == 0 and [k["frame"] for k in cfg["prompt"]["keyframes"]] == [14]
    assert cfg["outputs"]["formats"] == [] and cfg["engine"]["name"] == "mask"
    assert not list(run.glob("*.mp4")) and not list(run.glob("*.mkv"))
    assert jobs.read_job(run).kind == "preview"
    # kept apart: no row in Jobs, nothing offered as an input
    assert not [j for j in app.manager.list_jobs() if j.id == run.name]
    assert not [p for _, p in mediamod.list_media(app.roots) if pv.PREVIEW_DIR in p]

    # each picture is that frame of the video with the matte over it: the mask engine carries the anchor's mask
    # (tinted) while the white square moves 2 px per frame; at frame 30 it has left the mask (white, untinted)
    # until the keyframe on 20 re-anchors it on that frame's mask
    cy = BOX["y0"] + BOX["size"] // 2
    for (path, caption) in view.items:
        k = int(caption.split()[-1])
        img = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
        matte_x = BOX["x0"] + (20 if k >= 20 else 6) * BOX["speed"] + BOX["size"] // 2
        r, g, b = img[cy, matte_x].astype(int)
        assert g > r + 60, (caption, img[cy, matte_x])  # tinted: the matte is there
        square_x = BOX["x0"] + k * BOX["speed"] + BOX["size"] - 3
        if k == 30:
            assert img[cy, square_x].min() > 240  # the square of frame 30, outside the matte
        assert img[5, 5].max() < 60  # the background is not tinted
    assert not h.preview_view(app, rec, key, OPTS).stale


def test_a_changed_prompt_or_option_makes_the_preview_stale_and_a_new_one_replaces_it(app, tmp_path):
    ps = h.load_video(app, st.PromptState(), str(app.roots.input / "clip.mp4"), NO_SAM)
    ps = with_mask(app, ps, 0, tmp_path)
    first = h.start_preview(app, ps, OPTS)
    key = h.preview_key(ps)
    assert h.preview_key(h.show_frame(app, ps, 3, NO_SAM)) == key  # only looking at another frame: still current
    wait_final(app, first, key)

    clicked = h.click(app, ps, 100, 50, NO_SAM)  # a click (SAM 2 absent: it goes to the job) changes the prompt
    view = h.preview_view(app, first, h.preview_key(clicked), OPTS)
    assert view.stale and view.line.startswith("**Stale:**") and view.items
    assert h.preview_view(app, first, key, {**OPTS, "engine.erode": 3}).stale  # an option that changes the matte
    assert not h.preview_view(app, first, key, {**OPTS, "outputs.formats": ["alpha"]}).stale  # one that does not

    # a new preview from this browser stops and deletes the one before
    second = h.start_preview(app, with_mask(app, ps, 2, tmp_path), OPTS, previous=first)
    old = app.roots.output / pv.PREVIEW_DIR / first["id"]
    end = time.monotonic() + 30
    while old.exists() and time.monotonic() < end:
        time.sleep(0.1)
    assert not old.exists()
    assert "gone" in h.preview_view(app, first, key, OPTS).line
    assert wait_final(app, second, second["prompt"]).items


def test_preview_refuses_what_run_refuses_in_one_line(app, tmp_path):
    ps = h.load_video(app, st.PromptState(), str(app.roots.input / "clip.mp4"), NO_SAM)
    with pytest.raises(h.PageError, match="no prompt yet"):
        h.start_preview(app, ps, OPTS)
    ps = with_mask(app, ps, 30, tmp_path)
    with pytest.raises(h.PageError, match="stops after 10 frames"):
        h.start_preview(app, ps, {**OPTS, "max_frames": 10})
    # MatAnyone without its weights: said before any job, one line, no server path
    with pytest.raises(h.PageError) as err:
        h.start_preview(app, ps, {**OPTS, "engine.name": "matanyone"})
    assert "matanyone" in str(err.value) and str(app.roots.weights) not in str(err.value)
    assert "\n" not in str(err.value)
    assert not [p for p in (app.roots.output / pv.PREVIEW_DIR).glob("*/job.json")
                if jobs.read_job(p.parent).status == jobs.FAILED]  # no preview job was started to fail


def test_plan_near_the_end_with_max_frames_and_subjects(app, tmp_path):
    ps = h.load_video(app, st.PromptState(), str(app.roots.input / "clip.mp4"), NO_SAM)
    ps = with_mask(app, ps, 30, tmp_path)
    p = pv.plan(ps, {**OPTS, "max_frames": 34, "engine.max_size": 200})
    assert (p.start, p.count, p.shown) == (30, 4, (30, 31, 32, 33))  # never past Max frames
    assert p.overrides["engine.max_size"] == 200  # a smaller size the user chose is kept
    p = pv.plan(h.show_frame(app, ps, 0, NO_SAM), OPTS, cpu=True)  # MatAnyone on a CPU: 1 s at <= 256 px
    assert (p.start, p.count, p.shown, p.overrides["engine.max_size"]) == (30, 10, (30, 33, 36, 39), 256)
    ps = h.update(app, ps, st.AddSubject(), NO_SAM)
    ps = with_mask(app, ps, 2, tmp_path)  # the second subject starts earlier: the span starts there
    p = pv.plan(ps, OPTS)
    assert (p.start, p.count) == (2, 25)
    assert [s.name for s in p.subjects] == ["subject2"] and p.left_out == (
        "subject1 starts on frame 30, after the preview span",)
    assert p.subjects[0].frames[0].frame == 0


def test_leftover_previews_are_removed_and_at_most_keep_are_kept(tmp_path, monkeypatch):
    out = tmp_path / "out"
    stale = out / pv.PREVIEW_DIR / "clip_20260101-000000"
    stale.mkdir(parents=True)
    (stale / "job.json").write_text('{"status": "completed", "kind": "preview"}')
    svc = pv.Previews(out)
    try:
        assert not stale.exists()
        for n in range(pv.KEEP + 3):
            d = svc.root / f"p{n:02d}"
            d.mkdir()
            (d / "job.json").write_text(f'{{"status": "completed", "kind": "preview", "created": {n}}}')
        svc.prune(keep="p00")
        left = sorted(p.name for p in svc.root.iterdir())
        assert len(left) == pv.KEEP and "p00" in left and f"p{pv.KEEP + 2:02d}" in left
    finally:
        svc.manager.close()


def test_the_gallery_overlay_follows_soft_alpha():
    img = np.full((8, 8, 3), 100, np.uint8)
    alpha = np.zeros((8, 8), np.float32)
    alpha[:, 5:] = 1.0
    alpha[:, 1:5] = 0.25
    out = pv.overlay_alpha(img, alpha).astype(int)
    assert (out[:, 0] == 100).all()  # no matte: the frame as it is
    assert out[4, 7, 1] > out[4, 2, 1] > 100  # full matte tints more than a quarter
    assert (out[4, 5] == 255).all() and (out[4, 4] == 255).all()  # the 0.5 contour is drawn white


def test_stop_a_preview_and_two_browsers_share_one_preview_slot(app, tmp_path):
    ps = h.load_video(app, st.PromptState(), str(app.roots.input / "clip.mp4"), NO_SAM)
    ps = with_mask(app, ps, 0, tmp_path)
    mine = h.start_preview(app, ps, OPTS)
    theirs = h.start_preview(app, ps, OPTS)  # another browser (no previous record): waits for the slot
    view = h.preview_view(app, theirs, theirs["prompt"], OPTS)
    assert view.running and "waits" in view.line
    h.stop_preview(app, theirs)
    view = h.preview_view(app, theirs, theirs["prompt"], OPTS)
    assert view.final and not view.running and view.line == "Preview stopped." and view.items is None
    assert wait_final(app, mine, mine["prompt"]).items  # the other browser's preview is not disturbed


def test_a_vr180_preview_of_two_subjects_shows_both_eyes_in_the_subject_colours(app, tmp_path):
    import subprocess

    clip = app.roots.input / "trip_LR_180.mp4"  # the name says VR180 side by side: the page switches mode
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=256x128:rate=10",
                    "-frames:v", "40", "-pix_fmt", "yuv420p", str(clip)], check=True)
    opts = {**OPTS, "stereo.mode": "vr180"}
    ps = h.load_video(app, st.PromptState(), str(clip), NO_SAM)
    assert ps.mode == "vr180" and (ps.view.w, ps.view.full_w) == (128, 256)
    for frame, (x0, x1) in ((4, (10, 50)), (0, (70, 120))):  # subject1 on frame 4, subject2 on frame 0
        m = np.zeros((128, 128), np.uint8)
        m[30:90, x0:x1] = 255
        cv2.imwrite(str(tmp_path / f"s{frame}.png"), m)
        ps = h.upload_mask(app, h.show_frame(app, ps, frame, NO_SAM), str(tmp_path / f"s{frame}.png"), NO_SAM)
        if frame == 4:
            ps = h.update(app, ps, st.AddSubject(), NO_SAM)
    rec = h.start_preview(app, ps, opts)
    assert (rec["start"], rec["count"], rec["subjects"]) == (0, 25, True)
    view = wait_final(app, rec, h.preview_key(ps), opts)
    assert [c for _, c in view.items] == ["frame 0", "frame 8", "frame 16", "frame 24"]
    pic = cv2.cvtColor(cv2.imread(view.items[0][0]), cv2.COLOR_BGR2RGB).astype(int)
    assert pic.shape[:2] == (128, 256)  # the whole frame: the master eye and the eye derived from it
    # subject1 (red, #FF4040, its anchor on frame 4 carried back to 0) and subject2 (blue, #40A0FF) in the master eye
    r, g, b = pic[60, 30]
    assert r > b + 60 and r > g + 60, pic[60, 30]
    r, g, b = pic[60, 95]
    assert b > r + 60, pic[60, 95]
    cfg = yaml.safe_load((Path(view.items[0][0]).parent / "config.yaml").read_text())
    assert cfg["stereo"]["mode"] == "vr180" and [s["frame"] for s in cfg["prompt"]["subjects"]] == [4, 0]
