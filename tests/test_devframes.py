"""Device-side frame work (mattepod/devframes.py) against the numpy/OpenCV path it replaces.

Run here on the CPU (the same torch code runs on CUDA): alphas within 1e-5 in fp32, composites within
one code value, the 16-bit and RGBA layouts equal; the cache that lets the encode stage reuse the
engine's device tensors forgets a frame as soon as its host array is gone.
"""

from __future__ import annotations

import gc
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from matanyone_common import case_dir, need_reference, read_grey, read_rgb, write_weights
from matanyone_common import one_thread  # noqa: F401 (fixture)
from mattepod import config, devframes, outputs
from mattepod.config import EngineConfig
from mattepod.matanyone import prep
from mattepod.matanyone.core import InferenceCore

RNG = np.random.default_rng(15)


def _frame(h: int, w: int) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _alpha(h: int, w: int) -> np.ndarray:
    a = RNG.random((h, w), dtype=np.float32)
    a[: h // 4] = 0.0
    a[-h // 4:] = 1.0  # exact 0 and 1 too
    return a


@pytest.mark.parametrize("hw,target", [((96, 128), (96, 128)), ((192, 256), (128, 170)), ((81, 143), (40, 71))])
def test_to_matting_equals_the_prep_path(hw, target):
    frame = _frame(*hw)
    ref = prep.resize_frame(torch.from_numpy(frame.copy()).permute(2, 0, 1).float(), target) / 255.0
    got = devframes.to_matting(devframes.host_tensor(frame), target)
    assert got.shape == ref.shape and got.dtype == torch.float32
    assert float((got - ref).abs().max()) <= 1e-6


def test_16bit_frames_keep_their_precision():
    frame8 = _frame(64, 80)
    same = devframes.to_matting(devframes.host_tensor(frame8.astype(np.uint16) * 257), (64, 80))
    assert float((same - devframes.to_matting(devframes.host_tensor(frame8), (64, 80))).abs().max()) <= 1e-6
    fine = (frame8.astype(np.uint16) * 257 + 100).astype(np.uint16)  # between two 8-bit codes
    got = devframes.to_matting(devframes.host_tensor(fine), (64, 80))
    want = torch.from_numpy(fine.astype(np.float32) / 65535.0).permute(2, 0, 1)
    assert float((got - want).abs().max()) <= 1e-6


@pytest.mark.parametrize("small,big", [((48, 64), (96, 128)), ((40, 71), (81, 143)), ((60, 80), (60, 80))])
def test_alpha_upsampling_equals_opencv_linear(small, big):
    a = RNG.random(small, dtype=np.float32)
    ref = np.clip(cv2.resize(a, (big[1], big[0]), interpolation=cv2.INTER_LINEAR), 0, 1)
    got = devframes.upsample_alpha(torch.from_numpy(a), big).numpy()
    assert got.dtype == np.float32 and got.shape == big
    assert np.abs(got - ref).max() <= 1e-5


def test_composites_within_one_code_value():
    frame, alpha = _frame(90, 120), _alpha(90, 120)
    ft, at = devframes.host_tensor(frame), torch.from_numpy(alpha)
    colour = outputs.hex_rgb("#00B140")
    bg = RNG.random((90, 120, 3), dtype=np.float32) * 255
    for ref, got in [(outputs.over(frame, alpha, colour), devframes.over(ft, at, torch.from_numpy(colour))),
                     (outputs.over(frame, alpha, bg), devframes.over(ft, at, torch.from_numpy(bg)))]:
        got = devframes.download(got)
        assert got.dtype == np.uint8 and got.shape == ref.shape
        assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
    assert np.array_equal(devframes.download(devframes.alpha16(at)), outputs.alpha16(alpha))
    assert np.array_equal(devframes.download(devframes.rgba8(ft, at)), outputs.rgba8(frame, alpha))
    assert np.array_equal(devframes.download(devframes.rgba16(ft, at)), outputs.rgba16(frame, alpha))
    bgra = cv2.cvtColor(outputs.rgba8(frame, alpha), cv2.COLOR_RGBA2BGRA)
    assert np.array_equal(devframes.download(devframes.rgba8(ft, at, bgra=True)), bgra)


def test_every_output_format_renders_like_the_numpy_path(tmp_path):
    """OutputSet's torch renderers against each format's numpy renderer, frame by frame."""
    frame, alpha = _frame(48, 64), _alpha(48, 64)
    bgfile = tmp_path / "bg.png"
    cv2.imwrite(str(bgfile), _frame(30, 40))
    cfg = config.load(None, {"outputs.formats": ["alpha", "green", "composite", "prores", "webm", "png", "alpha16"],
                             "outputs.background": str(bgfile)})
    outs = outputs.OutputSet(tmp_path, "clip", 64, 48, Fraction(25), cfg.outputs, {"h264": "libx264", "hevc": "libx265"})
    pair = devframes.FrameAlpha(frame, alpha, outs.ctx.cache)
    for fmt in outs.formats:
        assert fmt.render_t is not None, fmt.name
        ref = fmt.render(frame, alpha, outs.ctx)
        got = devframes.download(fmt.render_t(pair, outs.ctx))
        assert got.dtype == ref.dtype and got.shape == ref.shape, fmt.name
        assert np.abs(got.astype(np.int64) - ref.astype(np.int64)).max() <= 1, fmt.name


def test_16bit_samples_as_int16_bit_patterns():
    """The CUDA form of 16-bit samples (int16 bit patterns) downloads as the same uint16 values."""
    vals = torch.tensor([0, 1, 32767, 32768, 40000, 65535], dtype=torch.float32)
    assert devframes.to_u16(vals, bit_pattern=True).dtype == torch.int16
    assert np.array_equal(devframes.download(devframes.to_u16(vals, bit_pattern=True)),
                          np.array([0, 1, 32767, 32768, 40000, 65535], np.uint16))
    assert np.array_equal(devframes.download(devframes.to_u16(vals, bit_pattern=False)),
                          devframes.download(devframes.to_u16(vals, bit_pattern=True)))


def test_cache_reuses_a_device_copy_while_the_host_array_lives():
    """The bookkeeping of the non-CPU branch, on torch's "meta" device (no GPU here)."""
    cache = devframes.DeviceCache("meta")
    frame = _frame(8, 8)
    t = cache.upload(frame)
    assert t.device.type == "meta" and cache.uploads == 1
    assert cache.upload(frame) is t and cache.hits == 1 and cache.uploads == 1
    other = frame.copy()
    assert cache.lookup(other) is None
    del frame
    gc.collect()
    assert len(cache._entries) == 0  # the device copy went with its host array
    many = [_frame(2, 2) for _ in range(10)]
    small = devframes.DeviceCache("meta", max_entries=4)
    for a in many:
        small.upload(a)
    assert len(small._entries) == 4


def test_cpu_cache_keeps_nothing():
    cache = devframes.DeviceCache("cpu")
    frame = _frame(8, 8)
    frame.flags.writeable = False  # decoder buffers: a view, no copy, no warning
    t = cache.upload(frame)
    assert t.data_ptr() == frame.__array_interface__["data"][0]
    assert cache.lookup(frame) is None and len(cache._entries) == 0


def test_engine_alpha_equals_the_previous_adapter_path(tmp_path_factory, one_thread):
    """MatAnyoneEngine on devframes vs the adapter's former code (torch upload, prep resize, core,
    bilinear upsample): same alphas within 1e-5, with a resize in both directions (max_size)."""
    need_reference()
    from mattepod.matting import build_engine

    root = write_weights(tmp_path_factory)
    eng = build_engine(EngineConfig(device="cpu", precision="fp32", max_size=128, warmup=2), root)
    frames = [read_rgb(p) for p in sorted((case_dir("resize") / "frames").glob("*.png"))][:3]
    mask = read_grey(case_dir("resize") / "mask.png").astype(np.float32) / 255.0
    got = [eng.start(frames[0], mask)] + [eng.step(f) for f in frames[1:]]

    core = InferenceCore(eng.net, eng.core.cfg)
    hw = prep.max_size_hw(*frames[0].shape[:2], 128)
    m = prep.resize_mask(prep.dilate_erode(torch.from_numpy(mask), 10, 10), hw)
    for i, f in enumerate(frames):
        img = prep.resize_frame(torch.from_numpy(f.copy()).permute(2, 0, 1).float(), hw) / 255.0
        a = core.start(img, m, 2) if i == 0 else core.step(img)
        a = torch.nn.functional.interpolate(a[None, None], size=f.shape[:2], mode="bilinear",
                                            align_corners=False)[0, 0].clamp(0, 1).numpy()
        assert np.abs(got[i] - a).max() <= 1e-5


def test_engine_takes_16bit_frames(tmp_path_factory, one_thread):
    """uint16 frames (a 10-bit source) through MatAnyoneEngine: x*257 gives the uint8 frame's alphas."""
    need_reference()
    from mattepod.matting import build_engine

    eng = build_engine(EngineConfig(device="cpu", precision="fp32", warmup=1), write_weights(tmp_path_factory))
    frames = [read_rgb(p) for p in sorted((case_dir("tiny") / "frames").glob("*.png"))][:3]
    mask = read_grey(case_dir("tiny") / "mask.png").astype(np.float32) / 255.0
    a8 = [eng.start(frames[0], mask)] + [eng.step(f) for f in frames[1:]]
    f16 = [f.astype(np.uint16) * 257 for f in frames]
    a16 = [eng.start(f16[0], mask)] + [eng.step(f) for f in f16[1:]]
    for x, y in zip(a8, a16):
        assert np.abs(x - y).max() <= 1e-5
