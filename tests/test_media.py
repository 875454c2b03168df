"""Probe and decode real ffmpeg-made media: audio, odd sizes, rotation, VFR, sequences, broken files."""

from fractions import Fraction
from pathlib import Path
import subprocess

import cv2
import numpy as np
import pytest

from mattepod.errors import FFmpegMissingError, InputNotFoundError, InvalidMediaError
from mattepod.media.probe import probe
from mattepod.media.reader import read_frame, read_frames
from tests.conftest import make_video


def test_probe_basic_with_audio(tmp_path: Path):
    p = make_video(tmp_path / "a.mp4", 96, 64, frames=30, fps="30000/1001")
    info = probe(p)
    assert (info.width, info.height, info.frame_count) == (96, 64, 30)
    assert info.fps == Fraction(30000, 1001)
    assert info.audio and info.audio[0]["codec"] == "aac"
    assert not info.vfr


def test_odd_size_and_mkv_without_frame_count(tmp_path: Path):
    p = make_video(tmp_path / "odd.mkv", 97, 55, frames=13, audio=False, codec="ffv1")
    info = probe(p)
    assert (info.width, info.height, info.frame_count) == (97, 55, 13)
    frames = list(read_frames(info))
    assert len(frames) == 13 and frames[0].shape == (55, 97, 3)


def test_rotated_phone_video_comes_out_upright(tmp_path: Path):
    src = make_video(tmp_path / "src.mp4", 96, 64, frames=5, audio=False)
    rot = tmp_path / "rot.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(rot)],
                   check=True)
    info = probe(rot)
    assert info.rotation in (90, 270)
    assert (info.width, info.height) == (64, 96)
    frame = next(read_frames(info))
    assert frame.shape == (96, 64, 3)


def test_seek_is_frame_exact(tmp_path: Path):
    info = probe(make_video(tmp_path / "s.mp4", 96, 64, frames=40, audio=False, extra=["-g", "12"]))
    all_frames = list(read_frames(info))
    for k in (0, 1, 11, 12, 13, 39):
        assert np.array_equal(read_frame(info, k), all_frames[k]), k
    assert len(list(read_frames(info, 30, 100))) == 10


def test_vfr_keeps_every_frame(tmp_path: Path):
    src = make_video(tmp_path / "c.mp4", 64, 48, frames=30, audio=False)
    vfr = tmp_path / "vfr.mkv"
    # Drop every third frame but keep timestamps: a real variable-frame-rate stream.
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), "-vf", "select='not(eq(mod(n\\,3)\\,2))'",
                    "-fps_mode", "vfr", "-c:v", "ffv1", str(vfr)], check=True)
    info = probe(vfr)
    assert info.frame_count == 20
    assert len(list(read_frames(info))) == 20
    assert len(list(read_frames(info, 5))) == 15


def test_image_sequence_folder(tmp_path: Path):
    d = tmp_path / "seq"
    d.mkdir()
    for i in range(4):
        cv2.imwrite(str(d / f"{i:04d}.png"), np.full((20, 30, 3), i * 40, np.uint8))
    info = probe(d)
    assert info.kind == "images" and info.frame_count == 4 and (info.width, info.height) == (30, 20)
    frames = list(read_frames(info, 1))
    assert [int(f[0, 0, 0]) for f in frames] == [40, 80, 120]


def test_missing_not_video_empty_and_truncated(tmp_path: Path):
    with pytest.raises(InputNotFoundError):
        probe(tmp_path / "nope.mp4")
    txt = tmp_path / "notes.mp4"
    txt.write_text("hello")
    with pytest.raises(InvalidMediaError, match="not a readable video"):
        probe(txt)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidMediaError, match="no images"):
        probe(tmp_path / "empty")
    good = make_video(tmp_path / "t.mkv", 96, 64, frames=60, audio=False, codec="ffv1")
    data = good.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    info = probe(cut)
    info.frame_count = 60  # what the (intact) header promised
    with pytest.raises(InvalidMediaError, match="truncated or corrupt"):
        list(read_frames(info))


def test_ffmpeg_missing_is_a_clear_error(tmp_path: Path, monkeypatch):
    video = make_video(tmp_path / "x.mp4", frames=2, audio=False)
    monkeypatch.setenv("MATTEPOD_FFMPEG_DIR", str(tmp_path / "no-ffmpeg-here"))
    with pytest.raises(FFmpegMissingError, match="apt-get install"):
        probe(video)
