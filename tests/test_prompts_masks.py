"""Prompt paths that need no model: mask files of every flavour, edits, validation, config -> specs, previews."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from mattepod import config
from mattepod.errors import ConfigError, InputNotFoundError, MaskError
from mattepod.prompts import (PromptSpec, check_coverage, draw_preview, edit_mask, load_mask_file, resolve_prompt,
                              specs_from_config)

W, H = 64, 40


def _subject() -> np.ndarray:
    """A 0/1 subject: a rectangle in the left half plus a soft ramp on its right edge."""
    m = np.zeros((H, W), np.float32)
    m[8:32, 10:30] = 1.0
    m[8:32, 30:34] = np.linspace(0.8, 0.2, 4, dtype=np.float32)
    return m


def _save(tmp_path, name: str, arr: np.ndarray):
    p = tmp_path / name
    Image.fromarray(arr).save(p)
    return p


@pytest.fixture
def frame() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------- mask files


def test_grey_0_255_and_0_1_and_soft_read_to_the_same_mask(tmp_path):
    subject = _subject()
    binary = (subject >= 0.5).astype(np.float32)
    p255 = _save(tmp_path, "a.png", (binary * 255).astype(np.uint8))
    p01 = _save(tmp_path, "b.png", binary.astype(np.uint8))
    psoft = _save(tmp_path, "c.png", np.round(subject * 255).astype(np.uint8))
    assert np.array_equal(load_mask_file(p255, (W, H)), binary)
    assert np.array_equal(load_mask_file(p01, (W, H)), binary)
    soft = load_mask_file(psoft, (W, H))
    assert soft.dtype == np.float32 and soft.shape == (H, W)
    np.testing.assert_allclose(soft, subject, atol=1 / 255)


@pytest.mark.parametrize("layout", ["LA_cutout", "LA_opaque", "RGB_red", "RGBA_cutout", "RGBA_opaque", "P", "I16"])
def test_every_channel_layout_gives_the_subject(tmp_path, layout):
    binary = (_subject() >= 0.5)
    grey = binary.astype(np.uint8) * 255
    noise = np.random.default_rng(0).integers(0, 256, (H, W), dtype=np.uint8)
    if layout == "LA_cutout":  # a cut-out: colour is anything, alpha is the subject
        arr, mode = np.dstack([noise, grey]), "LA"
    elif layout == "LA_opaque":
        arr, mode = np.dstack([grey, np.full_like(grey, 255)]), "LA"
    elif layout == "RGB_red":  # red on black must count as fully on, not as luma 0.3
        arr, mode = np.dstack([grey, np.zeros_like(grey), np.zeros_like(grey)]), "RGB"
    elif layout == "RGBA_cutout":
        arr, mode = np.dstack([noise, noise, noise, grey]), "RGBA"
    elif layout == "RGBA_opaque":
        arr, mode = np.dstack([grey, grey, grey, np.full_like(grey, 255)]), "RGBA"
    elif layout == "P":
        img = Image.fromarray(grey).convert("P")
        img.save(tmp_path / "m.png")
        arr = None
    else:
        arr, mode = (binary.astype(np.uint16) * 65535), "I;16"
    if arr is not None:
        Image.fromarray(arr).save(tmp_path / "m.png")  # Pillow infers the mode from the array
        with Image.open(tmp_path / "m.png") as check:
            assert check.mode == mode
    m = load_mask_file(tmp_path / "m.png", (W, H))
    assert m.shape == (H, W) and m.dtype == np.float32
    assert np.array_equal(m >= 0.5, binary)
    assert m.max() == 1.0 and m.min() == 0.0


def test_same_aspect_is_resized_with_a_warning(tmp_path, caplog):
    big = np.zeros((2 * H, 2 * W), np.uint8)
    big[16:64, 20:60] = 255
    p = _save(tmp_path, "big.png", big)
    with caplog.at_level(logging.WARNING, logger="mattepod.prompts"):
        m = load_mask_file(p, (W, H))
    assert m.shape == (H, W)
    assert "resizing" in caplog.text and f"{2 * W}x{2 * H}" in caplog.text
    assert m[20, 20] == 1.0 and m[2, 2] == 0.0
    assert abs(float((m >= 0.5).sum()) - 24 * 20) <= 2 * (24 + 20)


def test_aspect_within_one_percent_is_accepted_beyond_is_refused(tmp_path):
    ok = _save(tmp_path, "ok.png", np.full((101, 160), 255, np.uint8))  # 1.584 vs 1.6: 1.0% off
    assert load_mask_file(ok, (W, H)).shape == (H, W)
    bad = _save(tmp_path, "bad.png", np.full((48, 64), 255, np.uint8))
    with pytest.raises(MaskError, match=r"64x48 but the frame is 64x40"):
        load_mask_file(bad, (W, H))


def test_missing_and_unreadable_mask_files(tmp_path):
    with pytest.raises(InputNotFoundError, match="nope.png"):
        load_mask_file(tmp_path / "nope.png", (W, H))
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png at all")
    with pytest.raises(MaskError, match="junk.png is not a readable image"):
        load_mask_file(junk, (W, H))


# -------------------------------------------------------------------------------------------------- edits


def test_edit_add_subtract_dilate_erode():
    base = np.zeros((H, W), np.float32)
    base[10:20, 10:20] = 1
    other = np.zeros_like(base)
    other[25:30, 40:50] = 1
    hole = np.zeros_like(base)
    hole[10:20, 10:13] = 1

    added = edit_mask(base, add=[other])
    assert added.sum() == base.sum() + other.sum()
    cut = edit_mask(base, subtract=[hole])
    assert cut.sum() == base.sum() - hole.sum() and cut[15, 11] == 0

    grown = edit_mask(base, dilate=3)
    assert grown[15, 7] == 1 and grown[15, 6] == 0 and grown[7, 15] == 1  # 3 px on every side
    shrunk = edit_mask(base, erode=2)
    assert shrunk[15, 12] == 1 and shrunk[15, 11] == 0 and shrunk.sum() == 36  # 10x10 -> 6x6

    # subtraction comes after dilation: what the user cut out is not grown back
    both = edit_mask(base, subtract=[hole], dilate=3)
    assert both[15, 11] == 0 and both[15, 22] == 1


def test_edit_shapes_must_match():
    with pytest.raises(MaskError, match="mask_add mask is 3x2"):
        edit_mask(np.zeros((H, W), np.float32), add=[np.zeros((2, 3), np.float32)])


def test_soft_mask_stays_soft_under_edits():
    soft = np.zeros((H, W), np.float32)
    soft[10:20, 10:20] = 0.4
    out = edit_mask(soft, dilate=1)
    assert set(np.unique(out)) == {0.0, np.float32(0.4)}


# --------------------------------------------------------------------------------------- resolve: mask path


def test_mask_path_with_edits_and_preview(tmp_path, frame):
    binary = (_subject() >= 0.5).astype(np.uint8) * 255
    main = _save(tmp_path, "main.png", binary)
    extra = np.zeros((H, W), np.uint8)
    extra[30:38, 50:60] = 255
    add = _save(tmp_path, "add.png", extra)
    res = resolve_prompt(PromptSpec(mask=str(main), mask_add=[str(add)]), frame, tmp_path / "no-weights")
    assert res.mask.shape == (H, W)
    assert res.mask[35, 55] == 1 and res.mask[20, 20] == 1 and res.mask[2, 2] == 0
    assert res.preview_rgb.shape == (H, W, 3) and res.preview_rgb.dtype == np.uint8
    assert res.preview is res.preview_rgb
    # outside the mask the preview is the frame dimmed, inside it is not dimmed that much
    assert res.preview_rgb[2, 2].astype(int).sum() <= frame[2, 2].astype(int).sum() * 0.5 + 3


def test_empty_and_full_masks_are_refused(tmp_path, frame):
    empty = _save(tmp_path, "empty.png", np.zeros((H, W), np.uint8))
    full = _save(tmp_path, "full.png", np.full((H, W), 255, np.uint8))
    with pytest.raises(MaskError, match=r"frame 7 .*empty\.png.* is empty \(0 of 2560 pixels"):
        resolve_prompt(PromptSpec(frame=7, mask=str(empty)), frame, tmp_path)
    with pytest.raises(MaskError, match=r"covers 100\.0% of the frame"):
        resolve_prompt(PromptSpec(mask=str(full)), frame, tmp_path)
    # a subtraction that removes everything is also caught
    with pytest.raises(MaskError, match="is empty"):
        resolve_prompt(PromptSpec(mask=str(full), mask_subtract=[str(full)]), frame, tmp_path)
    assert 0 < check_coverage(_subject(), 0, "x") < 1


# ------------------------------------------------------------------------------------ resolve: validation


@pytest.mark.parametrize("spec, message", [
    (PromptSpec(points=[(64.5, 10, 1)]), r"click 1 at \(64\.5, 10\) is outside the frame \(frame is 64x40\)"),
    (PromptSpec(points=[(5, 5, 1), (3, -1, 0)]), r"click 2 at \(3, -1\) is outside"),
    (PromptSpec(points=[(0.5, 1.2, 1)], normalized=True), r"click 1 at \(0\.5, 1\.2\) is outside the frame \(normalized\)"),
    (PromptSpec(points=[(5, 5, 2)]), r"has label 2"),
    (PromptSpec(box=(10, 10, 5, 20)), r"box \(10, 10, 5, 20\) is empty or reversed"),
    (PromptSpec(box=(10, 10, 70, 20)), r"box \(10, 10, 70, 20\) reaches outside the frame"),
    (PromptSpec(), r"no prompt for frame 0"),
    (PromptSpec(mask="m.png", points=[(1, 1, 1)]), r"both a mask file"),
    (PromptSpec(auto_person=True, box=(1, 1, 5, 5)), r"both auto_person and clicks/box"),
])
def test_bad_prompts_name_the_value(tmp_path, frame, spec, message):
    with pytest.raises(MaskError, match=message) as info:
        resolve_prompt(spec, frame, tmp_path / "no-weights")
    assert info.value.exit_code == 5


def test_bad_frame_is_refused(tmp_path):
    with pytest.raises(MaskError, match="uint8 RGB"):
        resolve_prompt(PromptSpec(mask="x.png"), np.zeros((H, W), np.float32), tmp_path)


# ------------------------------------------------------------------------------------------ config -> specs


def test_specs_from_config_main_and_keyframes():
    cfg = config.validate({"prompt": {
        "frame": 12, "points": [{"x": 0.5, "y": 0.4, "label": 1}, {"x": 0.1, "y": 0.1, "label": 0}],
        "normalized": True, "mask_dilate": 3, "person_select": "n_largest", "person_count": 2,
        "keyframes": [{"frame": 40, "box": [0.1, 0.1, 0.6, 0.9]}, {"frame": 3, "mask": "k3.png"},
                      {"frame": 20, "auto_person": True}]}}).prompt
    specs = specs_from_config(cfg)
    assert [s.frame for s in specs] == [12, 3, 20, 40]  # the main prompt first, keyframes in frame order
    main = specs[0]
    assert main.points == [(0.5, 0.4, 1), (0.1, 0.1, 0)] and main.normalized and main.dilate == 3
    assert main.kind == "clicks"
    assert specs[1].kind == "mask" and specs[1].mask == "k3.png" and specs[1].dilate == 0
    assert specs[2].kind == "auto_person" and specs[2].person_select == "n_largest" and specs[2].person_count == 2
    assert specs[3].box == (0.1, 0.1, 0.6, 0.9) and specs[3].normalized
    assert [s.keyframe for s in specs] == [False, True, True, True]


def test_keyframe_config_errors():
    with pytest.raises(ConfigError, match="keyframe 5 has no prompt"):
        config.validate({"prompt": {"keyframes": [{"frame": 5}]}})
    cfg = config.validate({"prompt": {"frame": 5, "mask": "a.png", "keyframes": [{"frame": 5, "mask": "b.png"}]}})
    with pytest.raises(MaskError, match="frame 5 is given twice"):
        specs_from_config(cfg.prompt)


def test_preview_draws_clicks_and_box(tmp_path):
    frame = np.full((H, W, 3), 128, np.uint8)
    mask = np.zeros((H, W), np.float32)
    mask[5:35, 5:40] = 1
    pts = [(15.0, 20.0, 1), (50.0, 10.0, 0)]
    pv = draw_preview(frame, mask, pts, [(2.0, 3.0, 45.0, 38.0)])
    g = pv[20, 15].astype(int)
    r = pv[10, 50].astype(int)
    assert g[1] > 150 and g[0] < 60 and g[2] < 60  # positive click: green
    assert r[0] > 150 and r[1] < 60 and r[2] < 60  # negative click: red
    assert tuple(pv[3, 25]) == (255, 200, 0)  # top edge of the box
    assert pv[30, 60].sum() < frame[30, 60].sum()  # outside the mask: dimmed
