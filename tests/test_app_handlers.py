"""The page's handlers without a browser: a real clip, real frame seeks, real job folders; SAM 2.1 tiny with
generated weights in the slow tests (NO_SAM names a size whose weights are absent: the page without SAM 2).
Each numbered defect of issue 13 that lives below the page is reproduced here."""

import time

import cv2
import numpy as np
import pytest

from app import handlers as h
from app import state as st
from app.server import AppState
from mattepod import jobs, sam
from mattepod.errors import ConfigError, MaskError
from tests.app_harness import BOX, box_mask, make_clip
from tests.weightgen import make_sam2_weights


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("handlers")
    a = AppState(jobs.Roots(root / "input", root / "output", root / "weights"))
    make_clip(a.roots.input / "clip.mp4", frames=30)
    yield a
    a.manager.close(cancel_running=True)


NO_SAM = "large"  # never generated here: the page runs without SAM 2 (clicks would go to the job)


@pytest.fixture(scope="module")
def sam_app(app):
    make_sam2_weights(app.roots.weights, "tiny")
    return app


@pytest.fixture(scope="module")
def clip(app):
    return str(app.roots.input / "clip.mp4")


def test_defect1_the_frame_box_reloads_the_frame_and_run_sends_the_prompts_frame(app, clip):
    ps = h.load_video(app, st.PromptState(), clip, NO_SAM)
    ps = h.show_frame(app, ps, 12, NO_SAM)
    x = BOX["x0"] + 12 * BOX["speed"] + 20
    ps = h.click(app, ps, x, BOX["y0"] + 20, NO_SAM)
    for typed in ("47", 0, -1, 29):  # typed past the end, Home, below zero, the last frame
        ps = h.show_frame(app, ps, typed, NO_SAM)
        page = h.render(ps)
        assert page.frame == ps.frame == st.clamp_frame(ps, typed)
        # the image shown is that frame: the square's left edge moves 2 px per frame
        edge = BOX["x0"] + min(ps.frame * BOX["speed"], 160 - BOX["size"])
        assert ps.image[50, edge + 1].min() > 200 and ps.image[50, edge - 2].max() < 80
    sent = st.run_prompt(ps)
    assert [f.frame for f in sent] == [12]  # the click made on frame 12 runs on frame 12


def test_defect2_a_failed_upload_deactivates_the_previous_video(app, clip, tmp_path):
    ps = h.load_video(app, st.PromptState(), clip, NO_SAM)
    ps = h.click(app, ps, BOX["x0"] + 20, BOX["y0"] + 20, NO_SAM)
    bad = app.roots.input / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    ps = h.load_video(app, ps, str(bad), NO_SAM)
    assert ps.media is None and not ps.prompts
    page = h.render(ps)
    assert not page.run_enabled and "broken.mp4 cannot be used" in page.message
    assert str(app.roots.input) not in page.message  # no server path in the line
    with pytest.raises(h.PageError):
        h.run(app, ps, {})


@pytest.mark.slow
def test_defect3_a_click_refines_the_uploaded_mask_and_undo_keeps_it(sam_app, clip, tmp_path):
    app = sam_app
    ps = h.load_video(app, st.PromptState(), clip, "tiny")
    mpath = tmp_path / "mask.png"
    cv2.imwrite(str(mpath), box_mask(0))
    ps = h.upload_mask(app, ps, str(mpath), "tiny")
    uploaded = (ps.here.mask > 0.5).mean()
    assert uploaded == pytest.approx((box_mask(0) > 0).mean())
    ps = h.click(app, ps, 120, 80, "tiny")  # SAM 2 (random tiny weights) answers whatever it answers...
    assert (ps.here.mask[box_mask(0) > 0] == 1).all()  # ...but the uploaded mask is never thrown away
    ps = h.update(app, ps, st.Undo(), "tiny")
    assert (ps.here.mask > 0.5).mean() == uploaded  # Undo removes the click, not the mask
    ps = h.remove_mask(app, ps, "tiny")  # the x on the file box
    assert ps.here.upload is None and h.render(ps).mask_file is None and not h.render(ps).run_enabled
    bad = tmp_path / "wrong.png"
    cv2.imwrite(str(bad), np.zeros((10, 33), np.uint8) + 255)  # another aspect: refused
    ps = h.upload_mask(app, ps, str(mpath), "tiny")
    ps = h.upload_mask(app, ps, str(bad), "tiny")
    assert ps.here.upload is None and "wrong.png refused" in ps.message and str(tmp_path) not in ps.message
    ps = h.upload_mask(app, ps, str(mpath), "tiny")
    ps = h.load_video(app, ps, clip, "tiny")  # a new video: no mask name left behind
    assert h.render(ps).mask_file is None and not ps.prompts


def test_keyframes_and_masks_reach_the_job_folder(app, clip, tmp_path):
    ps = h.load_video(app, st.PromptState(), clip, NO_SAM)
    mpath = tmp_path / "mask.png"
    cv2.imwrite(str(mpath), box_mask(0))
    ps = h.upload_mask(app, ps, str(mpath), NO_SAM)
    ps = h.show_frame(app, ps, 20, NO_SAM)
    cv2.imwrite(str(mpath), box_mask(20))
    ps = h.upload_mask(app, ps, str(mpath), NO_SAM)
    info = h.run(app, ps, {"engine.name": "mask", "outputs.formats": ["alpha"]})
    app.manager.cancel(info.id)
    run = app.roots.output / info.id
    cfg = (run / "config.yaml").read_text()
    assert "frame: 0" in cfg and "keyframe_000020.png" in cfg
    saved = cv2.imread(str(run / "keyframe_000020.png"), cv2.IMREAD_GRAYSCALE)
    assert np.array_equal(saved > 127, box_mask(20) > 0)


def test_out_of_range_prompts_are_caught_before_a_job(app, clip):
    ps = h.load_video(app, st.PromptState(), clip, NO_SAM)
    ps = h.show_frame(app, ps, 25, NO_SAM)
    ps = h.click(app, ps, 5000, 10, NO_SAM)
    assert not ps.prompts and "outside the frame" in ps.message
    ps = h.click(app, ps, BOX["x0"] + 60, BOX["y0"] + 20, NO_SAM)
    before = len(app.manager.list_jobs())
    with pytest.raises(h.PageError, match="stops after 10 frames"):
        h.run(app, ps, {"max_frames": 10, "engine.name": "mask"})
    assert len(app.manager.list_jobs()) == before  # no failed row in Jobs


@pytest.mark.slow
def test_defect4_embedding_in_the_background_and_stale_frames_dropped(sam_app, clip):
    app = sam_app
    prompter = app.prompter("tiny")
    frames = [h.load_video(app, st.PromptState(), clip, "tiny").image]
    ps = h.load_video(app, st.PromptState(), clip, "tiny")
    for k in (3, 6, 9, 12):
        ps = h.show_frame(app, ps, k, "tiny")
        frames.append(ps.image)
    deadline = time.monotonic() + 120
    while prompter.state(frames[-1]) != "ready":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert h.sam_status(app, ps, "tiny").startswith("SAM 2 ready")
    assert prompter.dropped >= 1  # frames passed quickly were never embedded
    n = prompter.embed_count
    ps = h.click(app, ps, 60, 50, "tiny")
    assert prompter.embed_count == n  # the click used the embedding made in the background
    prompter.request(frames[-1])  # already embedded: nothing queued
    assert prompter.state(frames[-1]) == "ready"


def test_default_sam_size_by_device_and_a_device_error_names_the_device(app):
    assert sam.default_size("cpu") == "tiny"
    assert sam.default_size("cuda:0") == "base_plus"
    assert app.default_sam_model() == ("tiny" if sam.resolve_device("auto") == "cpu" else "base_plus")
    with pytest.raises((MaskError, ConfigError), match="cuda:7") as err:
        sam.check_device("cuda:7")
    assert "download" not in str(err.value) and "engine.device" in str(err.value)


def test_a_bad_device_is_named_in_the_page_not_blamed_on_the_weights(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("engine: {device: 'cuda:7'}\n")
    a = AppState(jobs.Roots(tmp_path / "in", tmp_path / "out", tmp_path / "w"), str(base))
    try:
        make_sam2_weights(a.roots.weights, "tiny")
        ps = h.load_video(a, st.PromptState(), str(make_clip(a.roots.input / "c.mp4", frames=2)), "tiny")
        assert a.prompter("tiny") is None
        line = h.sam_status(a, ps, "tiny")
        assert "cuda:7" in line and "download" not in line and str(tmp_path) not in line, line
    finally:
        a.manager.close()
