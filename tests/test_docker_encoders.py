"""mattepod.media.encoders: NVENC only where a frame really encodes; CPU fallback; the JSON cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mattepod.errors import EncodeError
from mattepod.media import encoders

FAKE_FFMPEG = """#!/bin/sh
# FAKE ffmpeg: h264_nvenc "works", hevc_nvenc does not (like a GPU without 10-bit HEVC); logs each call.
echo "$*" >> "{log}"
case "$*" in
  *hevc_nvenc*) echo "[hevc_nvenc] 10 bit encode not supported" >&2; exit 1 ;;
  *) exit 0 ;;
esac
"""


@pytest.fixture(autouse=True)
def fresh_memo(monkeypatch):
    monkeypatch.setattr(encoders, "_memo", {})


@pytest.fixture
def fake_ffmpeg(tmp_path: Path) -> tuple[str, Path]:
    log = tmp_path / "calls.log"
    exe = tmp_path / "ffmpeg-fake"
    exe.write_text(FAKE_FFMPEG.format(log=log))
    exe.chmod(0o755)
    return str(exe), log


def test_real_ffmpeg_on_this_machine(tmp_path: Path):
    works = encoders.probe_encoders(cache_dir=tmp_path)
    assert set(works) == {"h264_nvenc", "hevc_nvenc", "libx264", "libx265"}
    assert works["libx264"] is True  # the system ffmpeg really encodes a frame
    if not Path("/dev/nvidia0").exists():
        # ffmpeg -encoders lists NVENC here, but without a GPU it cannot encode: the probe must say so
        assert works["h264_nvenc"] is False and works["hevc_nvenc"] is False
        assert encoders.pick_encoder("h264", "auto") == "libx264"
        with pytest.raises(EncodeError, match="h264_nvenc cannot encode"):
            encoders.pick_encoder("h264", "nvenc")


def test_probe_encodes_with_the_writers_pixel_formats_and_caches(tmp_path: Path, fake_ffmpeg):
    exe, log = fake_ffmpeg
    works = encoders.probe_encoders(exe, cache_dir=tmp_path)
    assert works == {"h264_nvenc": True, "hevc_nvenc": False, "libx264": True, "libx265": True}
    calls = log.read_text().splitlines()
    assert len(calls) == 4
    assert any("hevc_nvenc" in c and "p010le" in c for c in calls)  # alpha is 10-bit HEVC
    cache = json.loads((tmp_path / encoders.CACHE_NAME).read_text())
    assert cache["encoders"] == works and "10 bit" in cache["errors"]["hevc_nvenc"]
    encoders._memo.clear()
    assert encoders.probe_encoders(exe, cache_dir=tmp_path) == works
    assert len(log.read_text().splitlines()) == 4  # answered from the JSON cache
    assert encoders.probe_encoders(exe, cache_dir=tmp_path, refresh=True) == works
    assert len(log.read_text().splitlines()) == 8


def test_cache_from_another_ffmpeg_is_ignored(tmp_path: Path, fake_ffmpeg):
    exe, log = fake_ffmpeg
    (tmp_path / encoders.CACHE_NAME).write_text(json.dumps({"key": "other", "encoders": {"h264_nvenc": False}}))
    assert encoders.probe_encoders(exe, cache_dir=tmp_path)["h264_nvenc"] is True


def test_pick_encoder(tmp_path: Path, fake_ffmpeg, monkeypatch):
    exe, log = fake_ffmpeg
    monkeypatch.setenv("OUTPUT_DIR", str(tmp_path))
    assert encoders.pick_encoder("h264", "auto", ffmpeg=exe) == "h264_nvenc"
    assert encoders.pick_encoder("hevc", "auto", ffmpeg=exe) == "libx265"
    assert encoders.pick_encoder("h264", "nvenc", ffmpeg=exe) == "h264_nvenc"
    with pytest.raises(EncodeError, match="hevc_nvenc cannot encode") as info:
        encoders.pick_encoder("hevc", "nvenc", ffmpeg=exe)
    assert info.value.exit_code == 10 and "outputs.encoder" in str(info.value)
    calls = len(log.read_text().splitlines())
    assert encoders.pick_encoder("hevc", "cpu", ffmpeg=exe) == "libx265"
    assert len(log.read_text().splitlines()) == calls  # cpu needs no probe
    assert (tmp_path / encoders.CACHE_NAME).is_file()  # cached in the output folder


def test_missing_ffmpeg_binary_is_not_a_crash(tmp_path: Path):
    works = encoders.probe_encoders(str(tmp_path / "no-such-ffmpeg"), cache_dir=tmp_path)
    assert not any(works.values())
    assert os.path.exists(tmp_path / encoders.CACHE_NAME)
