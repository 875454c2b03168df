"""The page's one prompt state (app/state.py): every control sequence keeps the frame shown, its image, the
prompts and what Run sends in agreement. Pure: a FAKE segmenter stands in for SAM 2 (a disc around + clicks)."""

import random

import numpy as np
import pytest

from app import state as st

W, H, FRAMES = 64, 48, 30


def fake_segment(points, box):
    """FAKE SAM 2: a disc of radius 8 around every + click, the box filled; - clicks cut a disc of 4."""
    yy, xx = np.mgrid[:H, :W]
    m = np.zeros((H, W), bool)
    for x, y, lab in points:
        if lab == 1:
            m |= (xx - x) ** 2 + (yy - y) ** 2 <= 64
    for x, y, lab in points:
        if lab == 0:
            m &= ~((xx - x) ** 2 + (yy - y) ** 2 <= 16)
    if box:
        m[int(box[1]) : int(box[3]), int(box[0]) : int(box[2])] = True
    return m.astype(np.float32)


def image(k):
    return np.full((H, W, 3), k, np.uint8)  # the pixel value says which frame the image is


def loaded(frames=FRAMES):
    media = st.Media("/in/clip.mp4", "clip.mp4", W, H, frames, 25.0)
    return st.apply(st.PromptState(), st.LoadVideo(media, image(0), st.View(0, 0, W, H, W, H)), fake_segment)


def show(ps, k):
    k = st.clamp_frame(ps, k)
    return st.apply(ps, st.ShowFrame(k, image(k), ps.view), fake_segment)


def upload_mask(fraction=0.25):
    m = np.zeros((H, W), np.float32)
    m[: int(H * fraction * 4) // 4, : W // 1] = 0
    m[10:22, 40:60] = 1
    return m


def test_defect1_typed_home_and_clamped_frames_move_image_and_prompt_together():
    ps = loaded()
    ps = show(ps, 12)
    ps = st.apply(ps, st.ClickAt(20, 20), fake_segment)
    assert set(ps.prompts) == {12}
    for typed in (47, "500", -3, 0, "29.4"):  # out of range, text, Home, a clamped value
        ps = show(ps, typed)
        assert st.consistent(ps)
        assert int(ps.image[0, 0, 0]) == ps.frame  # the image shown is the frame the state names
    assert ps.frame == 29
    # the mask made on frame 12 stays on frame 12: Run sends frame 12 with it, never frame 0 or 29
    sent = st.run_prompt(ps)
    assert [f.frame for f in sent] == [12] and sent[0].mask is not None
    assert ps.here.edits == () and st.describe(ps).startswith("frame 29: 0 subject")


def test_defect2_a_failed_load_leaves_no_video_active():
    ps = st.apply(loaded(), st.ClickAt(20, 20), fake_segment)
    assert not st.problems(ps)
    ps = st.apply(ps, st.LoadFailed("broken.mp4 cannot be used: not a video"))
    assert ps.media is None and ps.image is None and not ps.prompts
    assert st.problems(ps) and "video" in st.problems(ps)[0]
    with pytest.raises(ValueError):
        st.run_prompt(ps)


def test_defect3_clicks_refine_an_uploaded_mask_and_undo_walks_one_history():
    ps = loaded()
    up = upload_mask()
    ps = st.apply(ps, st.AddUpload(up, "mask.png", "/cache/mask.png"), fake_segment)
    base = ps.here.mask.copy()
    ps = st.apply(ps, st.ClickAt(10, 10), fake_segment)  # + click elsewhere: added, upload kept
    assert (ps.here.mask[base > 0.5] > 0.5).all() and ps.here.mask.sum() > base.sum()
    ps = st.apply(ps, st.SetTool("remove"), fake_segment)
    ps = st.apply(ps, st.ClickAt(50, 15), fake_segment)  # - click on the uploaded region cuts it
    assert ps.here.mask[15, 50] == 0 and ps.here.mask[11, 41] == 1
    ps = st.apply(ps, st.Undo(), fake_segment)
    ps = st.apply(ps, st.Undo(), fake_segment)
    assert np.array_equal(ps.here.mask, base)  # undoing the clicks gives the uploaded mask back
    ps = st.apply(ps, st.RemoveUpload(), fake_segment)  # the x on the file box
    assert ps.here.upload is None and 0 not in ps.prompts and st.problems(ps)
    ps = st.apply(ps, st.AddUpload(up, "mask.png", "/cache/mask.png"), fake_segment)
    ps = st.apply(ps, st.AddUpload(None, "bad.png", reason="mask bad.png refused"), fake_segment)
    assert ps.here.upload is None and ps.message == "mask bad.png refused"  # a refused file drops the old one
    ps = st.apply(ps, st.AddUpload(up, "mask.png", "/cache/mask.png"), fake_segment)
    stroke_add = np.zeros((H, W), bool)
    stroke_add[40:45, 0:5] = True
    ps = st.apply(ps, st.AddStroke(stroke_add, np.zeros((H, W), bool)), fake_segment)
    ps = st.apply(ps, st.SetTool("add"), fake_segment)
    ps = st.apply(ps, st.ClickAt(10, 10), fake_segment)
    assert ps.here.mask[42, 2] == 1 and ps.here.mask[15, 50] == 1  # brush and upload survive a click
    media2 = st.Media("/in/other.mp4", "other.mp4", W, H, 5, 25.0)
    ps = st.apply(ps, st.LoadVideo(media2, image(0), ps.view), fake_segment)
    assert not ps.prompts and ps.here.upload is None  # a new video keeps nothing of the old mask


def test_box_and_keyframes_are_sent_with_their_frames():
    ps = loaded()
    ps = st.apply(ps, st.SetTool("box"), fake_segment)
    ps = st.apply(ps, st.ClickAt(5, 5), fake_segment)
    assert st.problems(ps)  # half a box: Run waits
    ps = st.apply(ps, st.ClickAt(25, 30), fake_segment)
    assert ps.here.box == st.Box(5, 5, 25, 30) and ps.here.mask[20, 20] == 1
    ps = show(ps, 20)
    ps = st.apply(ps, st.SetTool("add"), fake_segment)
    ps = st.apply(ps, st.ClickAt(40, 20), fake_segment)
    sent = st.run_prompt(ps)
    assert [f.frame for f in sent] == [0, 20]  # the anchor first, then the keyframe
    assert sent[0].mask[20, 20] == 1 and sent[1].mask[20, 40] == 1 and sent[1].mask[20, 20] == 0
    ps = st.apply(ps, st.SetMaxFrames(10), fake_segment)
    assert any("frame 20" in p for p in st.problems(ps))  # a prompt the run would never reach


def test_clicks_outside_the_frame_are_refused_in_the_page():
    ps = st.apply(loaded(), st.ClickAt(W + 5, 3), fake_segment)
    assert not ps.prompts and "outside the frame" in ps.message


def test_vr180_prompts_are_sent_in_full_frame_pixels():
    media = st.Media("/in/x_LR_180.mp4", "x_LR_180.mp4", 2 * W, H, 5, 25.0)
    ps = st.apply(st.PromptState(), st.LoadVideo(media, image(0), st.View(W, 0, W, H, 2 * W, H), "vr180"))
    ps = st.apply(ps, st.ClickAt(10, 10), None)  # no SAM 2 here: the clicks go to the job
    sent = st.run_prompt(ps)
    assert sent[0].mask is None and sent[0].points == [[W + 10, 10, 1]]
    ps = st.apply(replace_sam(ps), st.ClickAt(12, 12), fake_segment)
    sent = st.run_prompt(ps)
    assert sent[0].mask.shape == (H, 2 * W) and sent[0].mask[:, :W].max() == 0 and sent[0].mask[10, W + 10] == 1


def replace_sam(ps):
    from dataclasses import replace

    return replace(ps, sam=True)


def test_every_control_sequence_keeps_the_state_consistent():
    rng = random.Random(7)
    up = upload_mask()
    for trial in range(60):
        ps = loaded(frames=rng.choice([1, 5, 30]))
        for _ in range(25):
            kind = rng.randrange(10)
            if kind == 0:
                ps = show(ps, rng.choice([-5, 0, 3, 17, 29, 99, "12"]))
            elif kind == 1:
                ps = st.apply(ps, st.ClickAt(rng.uniform(-5, W + 5), rng.uniform(-5, H + 5)), fake_segment)
            elif kind == 2:
                ps = st.apply(ps, st.SetTool(rng.choice(["add", "remove", "box"])), fake_segment)
            elif kind == 3:
                ps = st.apply(ps, st.AddUpload(up if rng.random() < 0.7 else None, "m.png", reason="bad"),
                              fake_segment)
            elif kind == 4:
                ps = st.apply(ps, st.RemoveUpload(), fake_segment)
            elif kind == 5:
                ps = st.apply(ps, st.Undo(), fake_segment)
            elif kind == 6:
                ps = st.apply(ps, st.ClearFrame(), fake_segment)
            elif kind == 7:
                add = np.zeros((H, W), bool)
                add[rng.randrange(H), :] = True
                ps = st.apply(ps, st.AddStroke(add, np.zeros((H, W), bool)), fake_segment)
            elif kind == 8:
                ps = st.apply(ps, st.SetMaxFrames(rng.choice([0, 3, 10])), fake_segment)
            else:
                ps = st.apply(ps, st.SetView("mono", "left", "auto", image(ps.frame), ps.view), fake_segment)
            assert st.consistent(ps), (trial, ps)
            assert int(ps.image[0, 0, 0]) == ps.frame
            if not st.problems(ps):
                for req in st.run_prompt(ps):  # what Run sends is exactly what the page shows per frame
                    fp = ps.prompts[req.frame]
                    assert np.array_equal(req.mask >= 0.5, fp.mask >= 0.5)
