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


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    root = tmp_path_factory.mktemp("state")
    st = ga.AppState(jobs.Roots(root / "input", root / "output", root / "weights"))
    yield st
    st.manager.close()


def test_load_view_is_the_same_frame_the_pipeline_decodes(state, clip):
    every = decode_all(clip)
    for k in (0, 1, 13, 29):
        img, view = ga.load_view(state, str(clip), k, "mono", "auto", "left")
        assert np.array_equal(img, every[k]), k
        assert view == {"x": 0, "y": 0, "w": 160, "h": 96, "full": [160, 96]}
    img, _ = ga.load_view(state, str(clip), 13, "mono", "auto", "left")
    x = BOX["x0"] + 13 * BOX["speed"]
    assert img[50, x + 1].min() > 200 and img[50, x - 3].max() < 80
    assert ga.probe_media(str(clip))["frames"] == 30


def test_vr180_shows_the_master_eye_and_maps_prompts_back(state, tmp_path):
    sbs = make_clip(tmp_path / "scene_LR_180.mp4", frames=3, w=192, h=96)  # the square is in the left eye
    left, view = ga.load_view(state, str(sbs), 1, "vr180", "auto", "left")
    assert left.shape == (96, 96, 3) and view == {"x": 0, "y": 0, "w": 96, "h": 96, "full": [192, 96]}
    right, rview = ga.load_view(state, str(sbs), 1, "vr180", "auto", "right")
    assert rview["x"] == 96 and right.max() < 80 and left.max() > 200
    eye_mask = np.zeros((96, 96), np.float32)
    eye_mask[10:20, 30:40] = 1
    full, pts = ga.to_full_frame(rview, eye_mask, [[35, 15, 1]])
    assert full.shape == (96, 192) and full[15, 96 + 35] == 1 and full[:, :96].max() == 0
    assert pts == [[96 + 35, 15, 1]]
    tb = make_clip(tmp_path / "scene.mp4", frames=2, w=96, h=192)  # taller than wide: top/bottom
    top, tview = ga.load_view(state, str(tb), 0, "vr180", "auto", "left")
    assert top.shape == (96, 96, 3) and tview["y"] == 0
    _, bview = ga.load_view(state, str(tb), 0, "vr180", "tb", "right")
    assert bview["y"] == 96
    same, _ = ga.to_full_frame(view, np.zeros((96, 192), np.float32), [])
    assert same.shape == (96, 192)  # a mask already at full-frame size is kept


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


def test_sam2_is_prefetched_and_the_click_reuses_the_embedding(state, clip):
    from tests.weightgen import make_sam2_weights

    assert state.prompter("tiny") is None  # no weights yet: the page falls back to masks and job-side clicks
    make_sam2_weights(state.roots.weights, "tiny")
    frame, _ = ga.load_view(state, str(clip), 4, "mono", "auto", "left")
    state.prefetch("tiny", frame)
    import time

    deadline = time.monotonic() + 120
    while (p := state.prompter("tiny")) is None or p.embed_count < 1:
        assert time.monotonic() < deadline, "prefetch did not embed the frame"
        time.sleep(0.1)
    mask = state.sam_mask("tiny", frame, [[60, 50, 1]])
    assert mask.shape == (96, 160) and mask.dtype == np.float32
    assert state.prompter("tiny").embed_count == 1  # the click used the prefetched embedding
