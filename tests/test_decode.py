"""Decoding: the NVDEC probe (decodes a real frame, cached like the encoder probe), the reader's CPU
fallback when NVDEC is picked but cannot decode, and 16-bit frames from a 10-bit source."""

from __future__ import annotations

import json

import numpy as np

from conftest import make_video
from mattepod.media import encoders, reader
from mattepod.media.probe import probe


def test_decoder_probe_decodes_a_frame_and_caches(tmp_path, monkeypatch):
    monkeypatch.setattr(encoders, "_dmemo", {})
    calls = []
    real = encoders.decode_one_frame
    monkeypatch.setattr(encoders, "decode_one_frame", lambda ff, name: calls.append(name) or real(ff, name))
    works = encoders.probe_decoders(cache_dir=tmp_path)
    assert set(works) == set(encoders.NVDEC.values()) and calls
    import torch

    if not torch.cuda.is_available():
        # ffmpeg lists the cuvid decoders here, but without a GPU none can decode: the probe must say so
        assert not any(works.values())
        data = json.loads((tmp_path / encoders.DECODER_CACHE_NAME).read_text())
        assert "h264_cuvid" in data["errors"]
    monkeypatch.setattr(encoders, "_dmemo", {})
    calls.clear()
    assert encoders.probe_decoders(cache_dir=tmp_path) == works and not calls  # from the cache file


def test_pick_decoder_takes_only_streams_nvdec_can(monkeypatch):
    monkeypatch.setattr(encoders, "probe_decoders", lambda ffmpeg="ffmpeg": {"h264_cuvid": True, "hevc_cuvid": True})
    assert encoders.pick_decoder("h264", 1920, 1080, "yuv420p") == "h264_cuvid"
    assert encoders.pick_decoder("h264", 7680, 3840, "yuv420p") is None  # beyond H.264 NVDEC's 4096
    assert encoders.pick_decoder("hevc", 7680, 3840, "yuv420p10le") == "hevc_cuvid"
    assert encoders.pick_decoder("h264", 1920, 1080, "yuv444p") is None
    assert encoders.pick_decoder("prores", 1920, 1080, "yuv422p10le") is None
    monkeypatch.setenv("MATTEPOD_DECODER", "cpu")
    assert encoders.pick_decoder("h264", 1920, 1080, "yuv420p") is None


def test_reader_falls_back_to_the_cpu_when_nvdec_fails(tmp_path, monkeypatch):
    clip = make_video(tmp_path / "c.mp4", 64, 48, 6, audio=False)
    info = probe(clip)
    cpu = [f.copy() for f in reader.read_frames(info, decoder="cpu")]
    picked = []
    monkeypatch.setattr(encoders, "pick_decoder", lambda *a, **k: picked.append(a) or "h264_cuvid")
    import torch

    got = [f.copy() for f in reader.read_frames(info, 2)]
    assert picked  # NVDEC was asked for
    assert len(got) == 4
    for a, b in zip(got, cpu[2:]):
        if not torch.cuda.is_available():
            assert np.array_equal(a, b)  # no GPU here: the CPU decoded every frame after the failure


def test_10bit_source_keeps_16bit_precision(tmp_path):
    clip = make_video(tmp_path / "ten.mkv", 64, 48, 3, audio=False, codec="libx265",
                      extra=["-pix_fmt", "yuv420p10le", "-x265-params", "log-level=error"])
    info = probe(clip)
    assert reader.source_bits(info) == 10
    f8 = next(reader.read_frames(info, decoder="cpu"))
    f16 = next(reader.read_frames(info, depth=16, decoder="cpu"))
    assert f8.dtype == np.uint8 and f16.dtype == np.uint16 and f16.shape == f8.shape
    diff = np.abs(f16.astype(np.int32) / 257.0 - f8)
    assert diff.mean() <= 0.75 and diff.max() <= 6.0  # the same picture (swscale's 8/16-bit paths differ a bit)
    assert np.any(f16 % 257 != 0)  # with the levels between 8-bit codes
    eight = probe(make_video(tmp_path / "e.mp4", 64, 48, 2, audio=False))
    assert reader.source_bits(eight) == 8


def test_frame_depth_asks_the_engine(tmp_path):
    from mattepod.engine import MaskFollowEngine
    from mattepod.matting import MatAnyoneEngine
    from mattepod.run import ScaledEngine

    ten = probe(make_video(tmp_path / "ten.mkv", 64, 48, 2, audio=False, codec="libx265",
                           extra=["-pix_fmt", "yuv420p10le", "-x265-params", "log-level=error"]))
    eight = probe(make_video(tmp_path / "e.mp4", 64, 48, 2, audio=False))
    mat = ScaledEngine.__new__(ScaledEngine)
    mat.accepts_16bit = MatAnyoneEngine.accepts_16bit
    assert reader.frame_depth(ten, mat) == 16
    assert reader.frame_depth(eight, mat) == 8
    assert reader.frame_depth(ten, mat, keyframes=True) == 8  # SAM 2 / the detector take uint8
    assert reader.frame_depth(ten, MaskFollowEngine()) == 8
