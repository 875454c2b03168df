"""The app's small pieces: one-frame seeks, the master eye, overlays, the brush, parsing, the volume listing."""

import subprocess

import gradio as gr
import numpy as np
import pytest

import app.gradio_app as ga
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


def test_read_frame_is_the_same_frame_the_pipeline_decodes(clip):
    every = decode_all(clip)
    for k in (0, 1, 13, 29):
        assert np.array_equal(ga.read_frame(str(clip), k), every[k]), k
    x = BOX["x0"] + 13 * BOX["speed"]
    assert ga.read_frame(str(clip), 13)[50, x + 1].min() > 200 and ga.read_frame(str(clip), 13)[50, x - 3].max() < 80
    assert ga.probe_media(str(clip))["frames"] == 30


def test_master_eye_of_sbs_and_tb():
    sbs = np.zeros((4, 8, 3), np.uint8)
    sbs[:, 4:] = 9
    assert ga.master_eye(sbs, "x.mp4", "vr180", "auto", "left").max() == 0
    assert ga.master_eye(sbs, "x.mp4", "vr180", "auto", "right").min() == 9
    assert ga.master_eye(sbs, "x.mp4", "mono", "auto", "right").shape == (4, 8, 3)
    tb = np.zeros((8, 8, 3), np.uint8)
    tb[4:] = 7
    assert ga.master_eye(tb, "clip_TB.mp4", "vr180", "auto", "right").shape == (4, 8, 3)
    assert ga.master_eye(tb, "clip_TB.mp4", "vr180", "auto", "right").min() == 7
    assert ga.eye_layout(100, 100, "a_LR_180.mp4", "auto") == "sbs"


def test_overlay_tints_the_mask_and_marks_clicks():
    frame = np.full((40, 60, 3), 100, np.uint8)
    mask = np.zeros((40, 60), np.float32)
    mask[10:30, 10:30] = 1
    out = ga.overlay(frame, mask, [[45, 20, 0]])
    assert out[20, 20, 1] > out[20, 20, 0]  # tinted green inside
    assert np.array_equal(out[2, 2], frame[2, 2])  # untouched outside
    assert out[20, 45, 0] > 200 and out[20, 45, 1] < 80  # a red dot for a negative click
    assert np.array_equal(frame, np.full((40, 60, 3), 100, np.uint8))  # the frame itself is not modified


def test_brush_adds_green_and_erases_red():
    mask = np.zeros((20, 20), np.float32)
    mask[0:10] = 1
    layer = np.zeros((20, 20, 4), np.uint8)
    layer[15:18, 15:18] = (0, 255, 0, 255)  # paint
    layer[2:4, 2:4] = (255, 0, 0, 255)  # erase
    out = ga.apply_brush(mask, {"layers": [layer]}, (20, 20))
    assert out[16, 16] == 1 and out[3, 3] == 0 and out[5, 5] == 1 and out[19, 0] == 0
    big = np.zeros((40, 40, 4), np.uint8)
    big[30:36, 30:36] = (0, 255, 0, 255)  # a layer at another size is scaled to the frame
    assert ga.apply_brush(None, {"layers": [big]}, (20, 20))[16, 16] == 1


def test_parse_points_and_box():
    assert ga.parse_points("[[1, 2, 1], [3, 4, 0]]") == [[1, 2, 1], [3, 4, 0]]
    assert ga.parse_points('[{"x": 5, "y": 6}]') == [[5, 6, 1]]
    assert ga.parse_points("7,8,0;9,10") == [[7, 8, 0], [9, 10, 1]]
    assert ga.parse_points("") == []
    with pytest.raises(gr.Error):
        ga.parse_points("[[1, 2, 5]]")
    with pytest.raises(gr.Error):
        ga.parse_points("a,b")
    assert ga.parse_box("1,2,3,4") == [1, 2, 3, 4]
    with pytest.raises(gr.Error):
        ga.parse_box("1,2,3")


def test_colour_picker_values():
    assert ga._hex("rgba(0, 177, 64, 1)") == "#00B140"
    assert ga._hex("#0f0") == "#00FF00"
    assert ga._hex("#00b140") == "#00B140"


def test_volume_listing_and_uploads_stay_inside(tmp_path, monkeypatch):
    roots = jobs.Roots(tmp_path / "input", tmp_path / "output", tmp_path / "weights")
    (roots.input / "sub").mkdir(parents=True)
    (roots.output).mkdir()
    (roots.input / "sub" / "a.mp4").write_bytes(b"x")
    (roots.input / "notes.txt").write_text("x")
    assert ga.list_media(roots) == [("input/sub/a.mp4", str(roots.input / "sub" / "a.mp4"))]
    cache = tmp_path / "cache" / "abc"
    cache.mkdir(parents=True)
    (cache / "up.mp4").write_bytes(b"video")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "cache"))
    dest = ga.adopt_upload(str(cache / "up.mp4"), roots)
    assert dest == roots.input / "uploads" / "up.mp4" and dest.read_bytes() == b"video"
    assert ga.adopt_upload(str(roots.input / "sub" / "a.mp4"), roots) == roots.input / "sub" / "a.mp4"
    with pytest.raises(InputNotFoundError):
        ga.adopt_upload("/etc/passwd", roots)
