"""The app's small pieces: one-frame seeks, the master eye, overlays, the brush, parsing, the volume listing."""

import subprocess

import numpy as np
import pytest

from app import api, handlers, media
from app.server import AppState
from app.state import Box, Click, FramePrompt, View
from mattepod import jobs
from mattepod.errors import InputNotFoundError
from tests.app_harness import BOX, make_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", frames=30)


def decode_all(path) -> np.ndarray:
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, 96, 160, 3)


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    root = tmp_path_factory.mktemp("state")
    st = AppState(jobs.Roots(root / "input", root / "output", root / "weights"))
    yield st
    st.manager.close()


def test_load_view_is_the_same_frame_the_pipeline_decodes(state, clip):
    every = decode_all(clip)
    for k in (0, 1, 13, 29):
        img, view = media.load_view(state.base.stereo, str(clip), k, "mono", "auto", "left")
        assert np.array_equal(img, every[k]), k
        assert view == View(0, 0, 160, 96, 160, 96)
    img, _ = media.load_view(state.base.stereo, str(clip), 13, "mono", "auto", "left")
    x = BOX["x0"] + 13 * BOX["speed"]
    assert img[50, x + 1].min() > 200 and img[50, x - 3].max() < 80
    assert media.probe_media(str(clip)).frames == 30


def test_vr180_shows_the_master_eye_and_names_the_layout(state, tmp_path):
    sbs = make_clip(tmp_path / "scene_LR_180.mp4", frames=3, w=192, h=96)  # the square is in the left eye
    assert "VR180" in media.probe_media(str(sbs)).vr_hint  # the name suggests VR180
    assert media.probe_media(str(make_clip(tmp_path / "plain.mp4", frames=2))).vr_hint == ""
    left, view = media.load_view(state.base.stereo, str(sbs), 1, "vr180", "auto", "left")
    assert left.shape == (96, 96, 3) and (view.x, view.w, view.full_w) == (0, 96, 192)
    assert "sbs" in view.layout and "name" in view.layout  # the detected layout is shown with its origin
    right, rview = media.load_view(state.base.stereo, str(sbs), 1, "vr180", "auto", "right")
    assert rview.x == 96 and right.max() < 80 and left.max() > 200
    tb = make_clip(tmp_path / "scene.mp4", frames=2, w=96, h=192)  # taller than wide: top/bottom
    top, tview = media.load_view(state.base.stereo, str(tb), 0, "vr180", "auto", "left")
    assert top.shape == (96, 96, 3) and tview.y == 0
    _, bview = media.load_view(state.base.stereo, str(tb), 0, "vr180", "tb", "right")
    assert bview.y == 96


def test_overlay_tints_the_mask_and_marks_clicks_and_box():
    frame = np.full((40, 60, 3), 100, np.uint8)
    mask = np.zeros((40, 60), np.float32)
    mask[10:30, 10:30] = 1
    fp = FramePrompt((Click(45, 20, 0), Box(2, 32, 20, 38)), mask)
    out = media.overlay(frame, fp)
    assert out[20, 20, 1] > out[20, 20, 0]  # tinted green inside
    assert np.array_equal(out[2, 2], frame[2, 2])  # untouched outside
    assert out[20, 45, 0] > 200 and out[20, 45, 1] < 80  # a red dot for a negative click
    assert not np.array_equal(out[32, 10], frame[32, 10])  # the box outline
    assert np.array_equal(frame, np.full((40, 60, 3), 100, np.uint8))  # the frame itself is not modified


def test_brush_strokes_add_green_and_erase_red():
    layer = np.zeros((20, 20, 4), np.uint8)
    layer[15:18, 15:18] = (0, 255, 0, 255)  # paint
    layer[2:4, 2:4] = (255, 0, 0, 255)  # erase
    add, sub = media.brush_stroke({"layers": [layer]}, (20, 20))
    assert add[16, 16] and sub[3, 3] and not add[3, 3] and not sub[5, 5]
    big = np.zeros((40, 40, 4), np.uint8)
    big[30:36, 30:36] = (0, 255, 0, 255)  # a layer at another size is scaled to the frame
    assert media.brush_stroke({"layers": [big]}, (20, 20))[0][16, 16]


def test_parse_points_and_box():
    assert api.parse_points("[[1, 2, 1], [3, 4, 0]]") == [[1, 2, 1], [3, 4, 0]]
    assert api.parse_points('[{"x": 5, "y": 6}]') == [[5, 6, 1]]
    assert api.parse_points("7,8,0;9,10") == [[7, 8, 0], [9, 10, 1]]
    assert api.parse_points("") == []
    with pytest.raises(handlers.PageError):
        api.parse_points("[[1, 2, 5]]")
    with pytest.raises(handlers.PageError):
        api.parse_points("a,b")
    assert api.parse_box("1,2,3,4") == [1, 2, 3, 4]
    with pytest.raises(handlers.PageError):
        api.parse_box("1,2,3")


def test_colour_picker_values():
    assert handlers.hex_colour("rgba(0, 177, 64, 1)") == "#00B140"
    assert handlers.hex_colour("#0f0") == "#00FF00"
    assert handlers.hex_colour("#00b140") == "#00B140"


def test_error_lines_carry_no_server_paths():
    msg = media.public_message("mask file /tmp/gradio/ab12/mask.png is not a readable image (x) -> give a PNG mask")
    assert msg == "mask file mask.png is not a readable image (x) -> give a PNG mask"
    assert "/work" not in media.public_message("/work/out/run_1/clip.mp4 is outside the allowed folders (/a, /b)")


def test_volume_listing_skips_run_internals_and_uploads_stay_inside(tmp_path, monkeypatch):
    roots = jobs.Roots(tmp_path / "input", tmp_path / "output", tmp_path / "weights")
    (roots.input / "sub").mkdir(parents=True)
    (roots.output / "run_1" / "segments").mkdir(parents=True)
    (roots.output / "run_1" / "proxies").mkdir(parents=True)
    (roots.input / "sub" / "a.mp4").write_bytes(b"x")
    (roots.input / "notes.txt").write_text("x")
    (roots.output / "run_1" / "a_alpha.mp4").write_bytes(b"x")
    (roots.output / "run_1" / "segments" / "alpha_000001.mp4").write_bytes(b"x")
    (roots.output / "run_1" / "proxies" / "a_alpha.mp4").write_bytes(b"x")
    assert [label for label, _ in media.list_media(roots)] == ["input/sub/a.mp4", "output/run_1/a_alpha.mp4"]
    cache = tmp_path / "cache" / "abc"
    cache.mkdir(parents=True)
    (cache / "up.mp4").write_bytes(b"video")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "cache"))
    dest = media.adopt_upload(str(cache / "up.mp4"), roots)
    assert dest == roots.input / "uploads" / "up.mp4" and dest.read_bytes() == b"video"
    assert media.adopt_upload(str(roots.input / "sub" / "a.mp4"), roots) == roots.input / "sub" / "a.mp4"
    with pytest.raises(InputNotFoundError):
        media.adopt_upload("/etc/passwd", roots)
