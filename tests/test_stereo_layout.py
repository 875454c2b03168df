"""Eye layout detection (names, ffprobe metadata, config, shape) and lossless eye split/merge."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from mattepod.config import StereoConfig
from mattepod.errors import ConfigError, InvalidMediaError
from mattepod.stereo import Layout, detect_layout, layout_from_name, merge_eyes, split_eyes


@pytest.mark.parametrize(
    "name, arrangement, swapped, projection, fov, lens",
    [
        ("scene_180_LR.mp4", "sbs", False, "equirect", 180, None),  # DeoVR
        ("scene_180x180_3dh_LR.mp4", "sbs", False, "equirect", 180, None),
        ("scene_360_TB.mp4", "tb", False, "equirect", 360, None),  # Skybox example
        ("moviename_F180_OU.mp4", "tb", False, "fisheye", 180, None),  # Skybox example
        ("Filename_SBS_Fisheye200.mp4", "sbs", False, "fisheye", 200, None),  # Commedia example
        ("clip_1920p_FISHEYE190.mp4", None, None, "fisheye", 190, None),  # SLR style, no stereo token
        ("clip_MKX200.mp4", None, None, "fisheye", 200, "MKX200"),
        ("clip_VRCA220_LR.mp4", "sbs", False, "fisheye", 220, "VRCA220"),
        ("clip_180_FISHEYE190_LR.mp4", "sbs", False, "fisheye", 190, None),  # fisheye beats _180
        ("moviename_180x180_Side-By-Side.mp4", "sbs", False, "equirect", 180, None),
        ("cross_RL_180.mp4", "sbs", True, "equirect", 180, None),
    ],
)
def test_name_tokens(name, arrangement, swapped, projection, fov, lens):
    got = layout_from_name(name)
    assert got.get("arrangement") == arrangement
    assert got.get("swapped") == swapped
    assert got["projection"] == projection
    assert got["fov"] == fov
    assert got.get("lens") == lens


def test_name_without_tokens_says_nothing():
    assert layout_from_name("holiday_final.mp4") == {}
    assert layout_from_name("alphabet_documentary_F1.mp4") == {}  # F1 is no fisheye token


def test_alpha_token_is_noted():
    lay = detect_layout("x_LR_180_FISHEYE180_alpha.mp4", 512, 256)
    assert lay.alpha_packed and lay.projection == "fisheye"


def test_shape_fallback_and_origin():
    sbs = detect_layout("plain.mp4", 8192, 4096)
    tb = detect_layout("plain.mp4", 4096, 8192)
    assert (sbs.arrangement, sbs.origin["arrangement"]) == ("sbs", "shape")
    assert tb.arrangement == "tb"
    assert sbs.projection == "equirect" and sbs.origin["projection"] == "default"


def test_config_beats_metadata_beats_name():
    side = [{"side_data_type": "Stereo 3D", "type": "top and bottom", "inverted": 0}]
    assert detect_layout("x_LR.mp4", 512, 256, side).arrangement == "tb"
    assert detect_layout("x_LR.mp4", 512, 256, side, config=StereoConfig(layout="sbs")).arrangement == "sbs"
    cfg = StereoConfig(projection="fisheye", swap_eyes=True)
    lay = detect_layout("x_LR_FISHEYE190.mp4", 512, 256, config=cfg)
    assert (lay.projection, lay.fov, lay.swapped, lay.origin["projection"]) == ("fisheye", 190.0, True, "config")


def test_spherical_side_data_bounds_give_half_equirect():
    quarter = 2**30  # 0.25 in 0.32 fixed point: a 180° crop of a 360° equirect
    side = [{"side_data_type": "Spherical Mapping", "projection": "equirectangular",
             "bound_left": quarter, "bound_top": 0, "bound_right": quarter, "bound_bottom": 0},
            {"side_data_type": "Stereo 3D", "type": "side by side", "inverted": 1}]
    lay = detect_layout("noname.mp4", 512, 256, side)
    assert (lay.projection, lay.fov, lay.arrangement, lay.swapped) == ("equirect", 180.0, "sbs", True)
    assert lay.origin["arrangement"] == "metadata"


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
@pytest.mark.parametrize("mode, arrangement", [("left_right", "sbs"), ("top_bottom", "tb")])
def test_real_ffprobe_stereo_metadata(tmp_path, mode, arrangement):
    path = tmp_path / "clip.mkv"  # a name without tokens, shape saying the opposite
    size = "64x32" if arrangement == "tb" else "32x64"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc=s={size}:d=0.1", "-c:v", "ffv1",
                    "-metadata:s:v", f"stereo_mode={mode}", "-y", str(path)], check=True, timeout=60)
    probe = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(path)],
                                      check=True, capture_output=True, text=True, timeout=60).stdout)
    st = probe["streams"][0]
    lay = detect_layout(path, st["width"], st["height"], st.get("side_data_list"), tags=st.get("tags"))
    assert lay.arrangement == arrangement and lay.origin["arrangement"] == "metadata"


@pytest.mark.parametrize("layout", [Layout("sbs"), Layout("tb"), Layout("sbs", swapped=True), Layout("tb", swapped=True)])
def test_split_merge_lossless(layout):
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)
    left, right = split_eyes(frame, layout)
    assert np.shares_memory(left, frame) and np.shares_memory(right, frame)  # views, no copies
    assert left.shape == right.shape
    assert np.array_equal(merge_eyes(left, right, layout), frame)
    alpha = rng.random((32, 64), dtype=np.float32)
    a, b = split_eyes(alpha, layout)
    assert np.array_equal(merge_eyes(a, b, layout), alpha)
    out = np.empty_like(frame)
    assert merge_eyes(left, right, layout, out=out) is out and np.array_equal(out, frame)


def test_swapped_means_right_eye_first():
    frame = np.zeros((4, 8), np.uint8)
    frame[:, 4:] = 1
    left, right = split_eyes(frame, Layout("sbs", swapped=True))
    assert left.min() == 1 and right.max() == 0


def test_bad_shapes_are_clear_errors():
    with pytest.raises(InvalidMediaError, match="even width"):
        split_eyes(np.zeros((4, 7, 3), np.uint8), Layout("sbs"))
    with pytest.raises(ConfigError, match="mono"):
        split_eyes(np.zeros((4, 8, 3), np.uint8), Layout("mono"))


def test_full_frame_clicks_map_to_eye_coordinates():
    from mattepod.stereo import to_eye_coords

    assert to_eye_coords(300, 10, Layout("sbs"), (512, 256)) == ("right", 44.0, 10)
    assert to_eye_coords(30, 10, Layout("sbs", swapped=True), (512, 256)) == ("right", 30, 10)
    assert to_eye_coords(30, 300, Layout("tb"), (256, 512)) == ("right", 30, 44.0)


def test_layout_dict_roundtrip_for_metadata_json():
    lay = detect_layout("c_MKX200_LR.mp4", 1024, 512)
    d = lay.to_dict()
    assert d["lens"] == "MKX200" and d["origin"]["projection"] == "name"
    assert Layout.from_dict(json.loads(json.dumps(d))) == lay
