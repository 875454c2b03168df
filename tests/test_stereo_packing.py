"""Fisheye reprojection and the alpha-packed passthrough frame: geometry, 16-bit values, names, and a
real 10-bit HEVC encode of packed frames with audio."""

from __future__ import annotations

import json
import math
import shutil
import subprocess

import numpy as np
import pytest

from mattepod.stereo import Layout, detect_layout, merge_eyes
from mattepod.vrproject import (circle_mask, equirect_to_fisheye, fisheye_to_fisheye, pack_alpha_fisheye,
                                packed_frame, packed_matte_size, packed_name, stereo_mode_tag,
                                strip_layout_tokens, unpack_alpha_fisheye)
from stereo_synth import sbs_frame


def spot_equirect(n, lon, lat):
    """An equirect eye (n x n, 180°) with a small bright spot at (lon, lat) degrees."""
    eq = np.zeros((n, n), np.float32)
    x = (lon / 180 + 0.5) * n
    y = (lat / 180 + 0.5) * n
    eq[int(y) - 2:int(y) + 2, int(x) - 2:int(x) + 2] = 1
    return eq


def spot_at(img):
    ys, xs = np.nonzero(img > 0.3)
    return xs.mean() + 0.5, ys.mean() + 0.5


@pytest.mark.parametrize("lon, lat, fov", [(0, 0, 180), (45, 0, 180), (0, -60, 180), (30, 30, 180), (60, 0, 200)])
def test_equirect_to_fisheye_puts_directions_where_the_equidistant_model_says(lon, lat, fov):
    n, out = 360, 240
    fish = equirect_to_fisheye(spot_equirect(n, lon, lat), fov, out)
    # direction -> angle from the axis theta and azimuth phi -> radius theta / (fov / 2)
    la, ph = math.radians(lon), math.radians(lat)
    x, y, z = math.cos(ph) * math.sin(la), math.sin(ph), math.cos(ph) * math.cos(la)
    theta, phi = math.acos(z), math.atan2(y, x)
    r = theta / math.radians(fov / 2) * out / 2
    ex, ey = out / 2 + r * math.cos(phi), out / 2 + r * math.sin(phi)
    gx, gy = spot_at(fish)
    assert abs(gx - ex) <= 1.5 and abs(gy - ey) <= 1.5


def test_fisheye_is_black_outside_circle_and_outside_the_source_fov():
    eq = np.full((180, 180, 3), 200, np.uint8)
    fish = equirect_to_fisheye(eq, 190, 190)
    inside = circle_mask(190)
    assert fish[~inside].max() == 0
    c = np.arange(190) + 0.5 - 95
    r = np.sqrt(c[:, None] ** 2 + c[None, :] ** 2) / 95 * 95  # degrees from the axis
    assert fish[r < 85].min() == 200  # the 180° source fills the inner 180°
    assert fish[(r > 92) & inside].max() == 0  # the ring from 180° to 190° has no source: black
    assert fish.dtype == np.uint8
    same = fisheye_to_fisheye(fish, 190, src_fov=190)
    assert same is fish


def sbs_fisheye(h, seed=0):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(1, 256, (h, 2 * h, 3), dtype=np.uint8)
    circ = np.concatenate([circle_mask(h)] * 2, axis=1)
    rgb[~circ] = 0  # a fisheye frame is black outside its circles
    return rgb, circ


@pytest.mark.parametrize("h", [64, 100, 256, 1000])
def test_packing_leaves_the_circles_untouched(h):
    rgb, circ = sbs_fisheye(h)
    alpha = np.ones((h, 2 * h), np.float32)  # the heaviest matte
    packed = pack_alpha_fisheye(rgb, alpha)
    assert packed.dtype == np.uint16 and packed.shape == rgb.shape
    assert np.array_equal(packed[circ], rgb[circ].astype(np.uint16) * 257)
    written = (packed != rgb.astype(np.uint16) * 257).any(axis=2)
    assert written.sum() > 0 and not (written & circ).any()


def test_mattes_sit_in_the_right_corners():
    h = 200
    s = packed_matte_size(h)
    assert s == 80
    rgb, _ = sbs_fisheye(h)
    # left-eye matte: subject in the upper-left of the eye; right-eye matte: subject in its lower-right
    al = np.zeros((h, h), np.float32)
    al[40:90, 40:90] = 1
    ar = np.zeros((h, h), np.float32)
    ar[110:160, 110:160] = 1
    packed = pack_alpha_fisheye(rgb, merge_eyes(al, ar, Layout("sbs"))).astype(np.float32) / 65535
    grey = packed.mean(axis=2)
    q = s // 2  # quarter size
    # left matte is centred on (x = W/2, y = 0 = H): its top-left quarter lies at the bottom edge,
    # just left of the seam (bottom-right corner of the left eye)
    assert grey[h - q // 2, h - q // 2] == pytest.approx(1.0)
    assert grey[q // 4, h + q // 4] == 0.0  # its bottom-right quarter (top-left corner of the right eye): empty
    # right matte is centred on the frame's outer corners: its bottom-right quarter lies in the top-left
    # corner of the frame
    assert grey[q // 2, q // 2] == pytest.approx(1.0)
    assert grey[h - q // 4, 2 * h - q // 4] == 0.0
    lm, rm = unpack_alpha_fisheye(packed.astype(np.float32))
    import cv2

    disc = circle_mask(s)
    for got, src in ((lm, al), (rm, ar)):
        want = cv2.resize(src, (s, s), interpolation=cv2.INTER_AREA)
        assert np.abs(got[disc] - want[disc]).max() < 1e-4
        assert got[~disc].max() == 0


def test_dark_alpha_survives_in_16_bit():
    h = 64
    rgb, _ = sbs_fisheye(h)
    alpha = np.full((h, 2 * h), 0.002, np.float32)  # 0.5 in 8 bits: would round to 0 or 1
    lm, rm = unpack_alpha_fisheye(pack_alpha_fisheye(rgb, alpha))
    disc = circle_mask(packed_matte_size(h))
    assert np.allclose(lm[disc], 0.002, atol=2e-5) and np.allclose(rm[disc], 0.002, atol=2e-5)


def test_discs_never_meet_the_circles_at_any_size():
    for h in list(range(40, 400, 7)) + [2048, 3840, 4096]:
        s = packed_matte_size(h)
        # farthest disc pixel centre from its corner vs nearest circle pixel centre: sqrt(2)/2 H apart
        assert s / 2 + h / 2 < h / math.sqrt(2), h


def test_packed_name_and_what_players_read_from_it():
    assert packed_name("concert") == "concert_LR_180_FISHEYE180_alpha"
    assert packed_name("concert_LR_180", fov=190) == "concert_LR_180_FISHEYE190_alpha"
    assert packed_name("My-Clip.take2_MKX200", lens="MKX200") == "My-Clip.take2_LR_180_MKX200_alpha"
    assert strip_layout_tokens("a_TB_360_3dv-final") == "a-final"
    lay = detect_layout(packed_name("x_TB", fov=200) + ".mp4", 1024, 512)
    assert (lay.arrangement, lay.projection, lay.fov, lay.alpha_packed) == ("sbs", "fisheye", 200.0, True)
    assert stereo_mode_tag(Layout("sbs")) == "left_right" and stereo_mode_tag(Layout("tb", swapped=True)) == "bottom_top"


def test_packed_frame_from_an_equirect_sbs_frame():
    h = 128
    frame, mask = sbs_frame(h, h, 0, disparity=-10)
    packed = packed_frame(frame, mask, Layout("sbs"), fov=180)
    assert packed.shape == (h, 2 * h, 3) and packed.dtype == np.uint16
    lm, rm = unpack_alpha_fisheye(packed)
    ml = equirect_to_fisheye(mask[:, :h], 180)
    import cv2

    s = packed_matte_size(h)
    want = cv2.resize(ml, (s, s), interpolation=cv2.INTER_AREA)
    disc = circle_mask(s)
    assert np.abs(lm[disc] - want[disc]).max() < 1e-3 and lm.max() > 0.9
    # the subject sits left of centre in the right eye (negative disparity)
    ys, xs = np.nonzero(lm > 0.5)
    yr, xr = np.nonzero(rm > 0.5)
    assert xr.mean() < xs.mean()


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_packed_frames_survive_a_10bit_hevc_encode_with_audio(tmp_path):
    h = 128
    frames = []
    for t in range(3):
        frame, mask = sbs_frame(h, h, t, disparity=-10)
        mask = mask * 0.6 + 0.02  # soft and dark values too
        frames.append(packed_frame(frame, mask, Layout("sbs"), fov=180))
    out = tmp_path / (packed_name("clip_LR_180") + ".mp4")
    cmd = ["ffmpeg", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb48le", "-s", f"{2 * h}x{h}", "-r", "30",
           "-i", "-", "-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-map", "0:v", "-map", "1:a",
           "-c:v", "libx265", "-x265-params", "log-level=error:lossless=1", "-pix_fmt", "yuv420p10le",
           "-c:a", "aac", "-shortest", "-y", str(out)]
    subprocess.run(cmd, input=b"".join(f.tobytes() for f in frames), check=True, timeout=120)
    assert out.name == "clip_LR_180_FISHEYE180_alpha.mp4"
    probe = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(out)],
                                      capture_output=True, text=True, check=True).stdout)
    kinds = {s["codec_type"]: s for s in probe["streams"]}
    assert kinds["video"]["pix_fmt"] == "yuv420p10le" and "audio" in kinds
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(out), "-frames:v", "1", "-f", "rawvideo",
                          "-pix_fmt", "rgb48le", "-"], capture_output=True, check=True, timeout=60).stdout
    back = np.frombuffer(raw, np.uint16).reshape(h, 2 * h, 3)
    lm0, rm0 = unpack_alpha_fisheye(frames[0])
    lm1, rm1 = unpack_alpha_fisheye(back)
    disc = circle_mask(packed_matte_size(h))
    inner = disc & (np.hypot(*np.mgrid[:len(disc), :len(disc)] - len(disc) / 2) < len(disc) / 2 - 2)
    assert np.abs(lm1[inner] - lm0[inner]).mean() < 0.01  # 10-bit 4:2:0: the grey matte survives
    assert np.abs(rm1[inner] - rm0[inner]).mean() < 0.01


def test_fisheye_sources_keep_their_lens_token_only_when_passed_through():
    from mattepod.vrproject import packed_name_for

    lay = detect_layout("c_MKX200_LR.mp4", 1024, 512)
    assert packed_name_for("c_MKX200_LR", lay, 200) == "c_LR_180_MKX200_alpha"
    assert packed_name_for("c_MKX200_LR", lay, 180) == "c_LR_180_FISHEYE180_alpha"
    assert packed_name_for("e_LR_180", detect_layout("e_LR_180.mp4", 1024, 512), 190) == "e_LR_180_FISHEYE190_alpha"
