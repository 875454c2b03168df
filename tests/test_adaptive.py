"""Adaptive matting size (mattepod/adaptive.py + MatAnyoneEngine): the memory model's choice at the
first anchor, the out-of-memory step-down with re-anchoring (through the fault-injection switch
``MATTEPOD_TEST_OOM_AT_FRAME``, which raises the very error class the engine catches), the size kept
across save/restore, and a clear error where no smaller size is allowed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from matanyone_common import case_dir, need_reference, read_grey, read_rgb, write_weights
from matanyone_common import one_thread  # noqa: F401 (fixture)
from mattepod import adaptive
from mattepod.adaptive import AdaptiveScale, choose_scale, predict_bytes
from mattepod.config import EngineConfig
from mattepod.errors import DeviceMemoryError
from mattepod.matting import MatAnyoneEngine, build_engine

CPU = dict(device="cpu", precision="fp32", warmup=1)
ON = AdaptiveScale(enabled=True)


@pytest.fixture(scope="module")
def weights_root(tmp_path_factory):
    need_reference()
    return write_weights(tmp_path_factory)


@pytest.fixture
def oom_at(monkeypatch):
    """Set MATTEPOD_TEST_OOM_AT_FRAME for this test (the switch is read once per process)."""
    def arm(n: int) -> None:
        monkeypatch.setenv("MATTEPOD_TEST_OOM_AT_FRAME", str(n))
        monkeypatch.setattr(adaptive, "_injection", None)
    yield arm
    monkeypatch.setattr(adaptive, "_injection", None)


def clip():
    frames = [read_rgb(p) for p in sorted((case_dir("resize") / "frames").glob("*.png"))][:6]
    return frames, read_grey(case_dir("resize") / "mask.png").astype(np.float32) / 255.0


def run(eng, frames, mask):
    return [eng.start(frames[0], mask)] + [eng.step(f) for f in frames[1:]]


def test_memory_model_choice():
    cpu = torch.device("cpu")
    base = (2160, 3840)
    need = predict_bytes(base, None, 5)
    assert predict_bytes(base, torch.float16, 5) < need < predict_bytes(base, None, 5, streams=2)
    assert choose_scale(ON, base, base, None, 5, cpu, free=10 * need) == (1.0, "fits")
    s, why = choose_scale(ON, base, base, None, 5, cpu, free=need // 2)
    assert 0.25 <= s < 1.0 and "memory model" in why
    assert predict_bytes(adaptive.scaled_hw(base, s), None, 5) <= 0.85 * need // 2  # the choice fits
    assert choose_scale(ON, base, base, None, 5, cpu, free=1 << 20)[0] == 0.25  # floor: min_scale
    assert choose_scale(AdaptiveScale(True, max_scale=0.5), base, base, None, 5, cpu, free=10 * need)[0] == 0.5
    assert choose_scale(AdaptiveScale(False), base, base, None, 5, cpu, free=1 << 20)[0] == 1.0


def test_start_size_from_free_memory(weights_root, monkeypatch, one_thread):
    frames, mask = clip()
    need = predict_bytes((192, 256), None, 5) - adaptive.FIXED_BYTES
    monkeypatch.setattr(adaptive, "free_bytes", lambda dev: int((adaptive.FIXED_BYTES + 0.6 * need) / 0.85))
    eng = build_engine(EngineConfig(**CPU), weights_root, ON)
    out = eng.start(frames[0], mask)
    assert out.shape == (192, 256)
    assert eng.internal_hw < (192, 256) and eng.scale < 1.0
    (ev,) = eng.drain_events()
    assert ev["kind"] == "scale_change" and ev["old"] == [192, 256] and ev["new"] == list(eng.internal_hw)
    assert eng.drain_events() == []


def test_oom_mid_run_steps_down_and_reanchors(weights_root, oom_at, one_thread):
    frames, mask = clip()
    ref = build_engine(EngineConfig(**CPU), weights_root, ON)
    plain = run(ref, frames, mask)
    assert ref.drain_events() == []

    oom_at(3)
    eng = MatAnyoneEngine(ref.net, EngineConfig(**CPU), adaptive=ON)
    out = run(eng, frames, mask)
    assert len(out) == len(frames) and all(a.shape == (192, 256) for a in out)  # frames in = frames out
    for a, b in zip(out[:3], plain[:3]):
        assert np.array_equal(a, b)  # untouched before the error
    (ev,) = eng.drain_events()
    assert ev["old"] == [192, 256] and ev["new"] == [144, 192] and ev["scale"] == 0.75
    assert "out of memory" in ev["reason"] and "MATTEPOD_TEST_OOM_AT_FRAME" in ev["reason"]
    assert eng.internal_hw == (144, 192) and eng.frames_out == len(frames)

    # frame 3 is a keyframe of its own: a fresh engine at the new size, anchored on frame 3 with the
    # alpha of frame 2 as its mask, gives the same frames 3..5
    fresh = MatAnyoneEngine(ref.net, EngineConfig(**CPU), adaptive=AdaptiveScale(True, max_scale=0.75))
    again = run(fresh, frames[3:], ref_mask_after(ref.net, frames[:3], mask))
    for a, b in zip(out[3:], again):
        assert np.abs(a - b).max() <= 1e-5


def ref_mask_after(net, frames, mask):
    eng = MatAnyoneEngine(net, EngineConfig(**CPU), adaptive=ON)
    run(eng, frames, mask)
    return eng.reanchor_mask()


def test_resume_after_step_down_is_bit_identical(weights_root, oom_at, one_thread):
    frames, mask = clip()
    oom_at(2)
    eng = build_engine(EngineConfig(**CPU), weights_root, ON)
    whole = run(eng, frames, mask)
    oom_at(2)
    first = build_engine(EngineConfig(**CPU), weights_root, ON)
    run(first, frames[:4], mask)
    state = torch.load(_roundtrip(first.get_state()), weights_only=False)
    second = build_engine(EngineConfig(**CPU), weights_root, ON)
    second.set_state(state)
    assert second.internal_hw == (144, 192) and second.scale == 0.75
    for f, want in zip(frames[4:], whole[4:]):
        assert np.array_equal(second.step(f), want)


def _roundtrip(state):
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf


def test_oom_without_adaptive_scale_is_a_clear_error(weights_root, oom_at, one_thread):
    frames, mask = clip()
    oom_at(1)
    eng = build_engine(EngineConfig(**CPU), weights_root, AdaptiveScale(enabled=False))
    eng.start(frames[0], mask)
    with pytest.raises(DeviceMemoryError) as err:
        eng.step(frames[1])
    assert err.value.exit_code == 13 and "adaptive_scale is off" in str(err.value)
    oom_at(1)
    low = build_engine(EngineConfig(**CPU), weights_root, AdaptiveScale(True, min_scale=0.9))
    low.start(frames[0], mask)
    with pytest.raises(DeviceMemoryError, match="min_scale"):
        low.step(frames[1])


def test_pair_steps_both_eyes_down_together(weights_root, oom_at, one_thread):
    frames, mask = clip()
    oom_at(2)
    eng = build_engine(EngineConfig(**CPU), weights_root, ON)
    pair = eng.make_pair()
    flipped = [np.ascontiguousarray(f[:, ::-1]) for f in frames]
    out = [pair.start_pair((frames[0], flipped[0]), (mask, np.ascontiguousarray(mask[:, ::-1])))]
    out += [pair.step_pair((f, g)) for f, g in zip(frames[1:4], flipped[1:4])]
    assert len(out) == 4 and all(a.shape == b.shape == (192, 256) for a, b in out)
    evs = pair.drain_events()
    assert sorted(e["eye"] for e in evs) == [0, 1] and all(e["new"] == [144, 192] for e in evs)
    assert pair.eyes[0].internal_hw == pair.eyes[1].internal_hw == (144, 192)


# ---- the whole run (CLI, real ffmpeg, the real network on the CPU) ----------------------------------------

def _oom_args(tmp_path, weights_root, frames: int):
    from conftest import make_mask, make_video

    video = make_video(tmp_path / "clip.mp4", width=192, height=160, frames=frames, audio=False)
    mask = make_mask(tmp_path / "m.png", 192, 160)
    return ["run", "--input", str(video), "--mask", str(mask), "--weights-dir", str(weights_root),
            "--outputs", "alpha", "--set", "outputs.alpha_codec=ffv1", "--set", "engine.device=cpu",
            "--set", "engine.precision=fp32", "--set", "engine.warmup=1", "--set", "runtime.threads=1",
            "--set", "recovery.segment_frames=3", "-q"]


def test_run_survives_an_oom_mid_run(weights_root, tmp_path):
    """MATTEPOD_TEST_OOM_AT_FRAME=3: the run completes, frames in = frames out, metadata shows the step."""
    import json

    from conftest import decode, run_cli

    args = _oom_args(tmp_path, weights_root, 5)
    res = run_cli(*args, "--run-dir", str(tmp_path / "r"), env={"MATTEPOD_TEST_OOM_AT_FRAME": "3"}, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    meta = json.loads((tmp_path / "r" / "metadata.json").read_text())
    assert meta["status"] == "completed" and meta["frames"]["done"] == 5
    (change,) = meta["scale_changes"]
    assert change["frame"] == 3 and change["old"] == [160, 192] and change["new"] == [120, 144]
    assert "out of memory" in change["reason"]
    assert meta["matting_size"] == {"frame": [160, 192], "internal": [120, 144], "scale": 0.75}
    assert decode(tmp_path / "r" / "clip_alpha.mkv").shape == (5, 160, 192)
    assert "matting size" in (tmp_path / "r" / "run.log").read_text()  # logged too


@pytest.mark.slow
def test_resume_after_a_step_down_is_bit_identical(weights_root, tmp_path):
    """OOM at frame 2, kill -9 after frame 7, --resume: the same alpha as the uninterrupted run, bit for bit,
    at the size in force (the state carries it), and the step recorded once."""
    import json

    from conftest import decode, run_cli

    args = _oom_args(tmp_path, weights_root, 9)
    oom = {"MATTEPOD_TEST_OOM_AT_FRAME": "2"}
    whole = run_cli(*args, "--run-dir", str(tmp_path / "whole"), env=oom, timeout=900)
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = run_cli(*args, "--run-dir", str(tmp_path / "crash"), env={**oom, "MATTEPOD_TEST_KILL_AT_FRAME": "7"},
                     timeout=900)
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = run_cli("run", "--resume", str(tmp_path / "crash"), "-q", env=oom, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = decode(tmp_path / "whole" / "clip_alpha.mkv"), decode(tmp_path / "crash" / "clip_alpha.mkv")
    assert a.shape == (9, 160, 192) and np.array_equal(a, b)
    meta = json.loads((tmp_path / "crash" / "metadata.json").read_text())
    assert [c["frame"] for c in meta["scale_changes"]] == [2]
