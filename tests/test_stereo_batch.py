"""Both eyes as one batch of two (``MatAnyonePair``, ``StereoEngine(batch_eyes=True)``): the same
alphas as two separate engines, bit-identical resume, and the fallback for engines without a pair.

Synthetic MatAnyone weights (tests/matanyone_common.py), 80x96 eyes, one torch thread, fp32 on the CPU.
``mem_every=2, max_mem_frames=2`` so that a few frames cover memory frames and the FIFO dropping one
(memory frames at t = 2 and 4: the second drops the first; the keyframe at t = 5 restarts the memory).
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from matanyone_common import loaded_net, need_reference, write_weights
from matanyone_common import one_thread  # noqa: F401 (fixture)
from mattepod.config import EngineConfig, StereoConfig
from mattepod.engine import MaskFollowEngine
from mattepod.matting import MatAnyoneEngine, MatAnyonePair, find_matanyone_weights
from mattepod.stereo import Layout, StereoEngine
from stereo_synth import eye_pair, sbs_frame

H, W = 80, 96  # eye size: 5 x 6 = 30 cells of 16 px = top_k
SBS = Layout("sbs")
CFG = EngineConfig(device="cpu", precision="fp32", mem_every=2, max_mem_frames=2)
TOL = 1e-5
KEY_T = 5  # frame with a keyframe mask on both eyes


@pytest.fixture(scope="module")
def weights_root(tmp_path_factory):
    need_reference()
    return write_weights(tmp_path_factory)


@pytest.fixture(scope="module")
def net(weights_root):
    return loaded_net(str(find_matanyone_weights("matanyone", weights_root)))


@pytest.fixture
def batch_sizes(net):
    """Batch size of every call of the three expensive parts: image encoder, mask encoder, decoder."""
    seen: dict[str, list[int]] = {"pixel_encoder": [], "mask_encoder": [], "mask_decoder": []}
    hooks = [getattr(net, name).register_forward_hook(
        lambda mod, args, out, name=name: seen[name].append(int(out[0].shape[0]))) for name in seen]
    yield seen
    for h in hooks:
        h.remove()


def eyes(t: int):
    return eye_pair(H, W, t, disparity=-8, dy=1)


def test_pair_equals_two_separate_engines(net, one_thread, batch_sizes):
    l0, r0, ml0, mr0 = eyes(0)
    sep = (MatAnyoneEngine(net, CFG), MatAnyoneEngine(net, CFG))
    ref = [(sep[0].start(l0, ml0), sep[1].start(r0, mr0))]
    for t in range(1, 9):
        l, r, ml, mr = eyes(t)
        masks = (ml, mr) if t == KEY_T else (None, None)
        ref.append((sep[0].step(l, masks[0]), sep[1].step(r, masks[1])))
    for v in batch_sizes.values():
        v.clear()

    pair = MatAnyoneEngine(net, CFG).make_pair()
    assert isinstance(pair, MatAnyonePair) and pair.eyes[0].net is pair.eyes[1].net
    out = [pair.start_pair((l0, r0), (ml0, mr0))]
    for t in range(1, 9):
        l, r, ml, mr = eyes(t)
        out.append(pair.step_pair((l, r), (ml, mr) if t == KEY_T else (None, None)))
    # every network call ran on the batch of two (memory frames, FIFO drop and keyframe included)
    assert all(n == 2 for v in batch_sizes.values() for n in v) and all(batch_sizes.values())
    worst = max(float(np.abs(a - b).max()) for o, r in zip(out, ref) for a, b in zip(o, r))
    assert worst <= TOL, worst
    assert all(a.shape == (H, W) and a.dtype == np.float32 for o in out for a in o)
    assert float(np.ptp(out[-1][0])) > 0.0  # not a constant matte: the comparison means something
    # the eye states are those of separate engines: same counters and memory layout, same tensors
    for eng, s in zip(pair.eyes, sep):
        a, b = eng.get_state(), s.get_state()
        assert {k: v for k, v in a["core"].items() if k != "tensors"} == \
               {k: v for k, v in b["core"].items() if k != "tensors"}
        assert a["core"]["perm_tokens"] == 30 and a["core"]["tensors"]["mem_key"].shape[-1] == 60  # perm + 1
        for k, v in a["core"]["tensors"].items():
            assert v.shape == b["core"]["tensors"][k].shape
            assert torch.allclose(v, b["core"]["tensors"][k], atol=1e-4), k


def test_out_of_phase_eyes_share_the_encoder_only(net, one_thread, batch_sizes):
    """After one eye alone is re-anchored its memory restarts: the image encoder is still batched,
    the rest runs per eye, and the alphas still equal separate engines'."""
    l0, r0, ml0, mr0 = eyes(0)
    sep = (MatAnyoneEngine(net, CFG), MatAnyoneEngine(net, CFG))
    pair = MatAnyoneEngine(net, CFG).make_pair()
    ref = [(sep[0].start(l0, ml0), sep[1].start(r0, mr0))]
    out = [pair.start_pair((l0, r0), (ml0, mr0))]
    for t in range(1, 7):
        l, r, ml, mr = eyes(t)
        masks = (None, mr) if t == 2 else (None, None)  # re-prompt the second eye alone
        ref.append((sep[0].step(l, masks[0]), sep[1].step(r, masks[1])))
        for v in batch_sizes.values():
            v.clear()
        out.append(pair.step_pair((l, r), masks))
        if t > 2:
            assert batch_sizes["pixel_encoder"] == [2]
            assert batch_sizes["mask_decoder"] == [1, 1]
    worst = max(float(np.abs(a - b).max()) for o, r in zip(out, ref) for a, b in zip(o, r))
    assert worst <= TOL, worst


def stereo(net, batch: bool, **kw) -> StereoEngine:
    return StereoEngine(lambda: MatAnyoneEngine(net, CFG), SBS, batch_eyes=batch, **kw)


def stereo_run(eng: StereoEngine, frames, masks, start: int = 0):
    out = []
    for t in range(start, len(frames)):
        if t == 0:
            out.append(eng.start(frames[0], masks[0]))
        else:
            out.append(eng.step(frames[t], masks[t] if t == KEY_T else None))
    return out


def clip(n: int = 9):
    pairs = [sbs_frame(H, W, t, disparity=-8, dy=1) for t in range(n)]
    frames = [p[0] for p in pairs]
    masks = [p[1].copy() for p in pairs]
    for m in masks:
        m[:, W:] = 0  # prompt the master eye only: the slave's prompt is transferred
    return frames, masks


def test_stereo_batching_on_equals_off(net, one_thread):
    frames, masks = clip()
    on, off = stereo(net, True), stereo(net, False)
    assert on.pair is not None and on.engines[0].net is on.engines[1].net
    assert off.pair is None
    a_on, a_off = stereo_run(on, frames, masks), stereo_run(off, frames, masks)
    worst = max(float(np.abs(a - b).max()) for a, b in zip(a_on, a_off))
    assert worst <= TOL, worst
    assert [r["prompted"] for r in on.drain_consistency()] == [r["prompted"] for r in off.drain_consistency()]


@pytest.mark.parametrize("reprompt", [False, True])
def test_stereo_pair_resume_is_bit_identical(net, one_thread, reprompt):
    """get_state mid-way, through torch.save, into a fresh engine: the rest is bit-identical. With
    re-prompts forced (threshold 1.0, cooldown 2) the slave leaves the master's phase on the way."""
    frames, masks = clip()
    kw = dict(reprompt_on_drift=reprompt, consistency_threshold=1.0, reprompt_cooldown=2)
    ref = stereo(net, True, **kw)
    out_ref = stereo_run(ref, frames, masks)
    rec_ref = ref.drain_consistency()
    if reprompt:
        assert any(r["reprompted"] for r in rec_ref)

    first = stereo(net, True, **kw)
    out = stereo_run(first, frames[:4], masks[:4])
    rec = first.drain_consistency()
    buf = io.BytesIO()
    torch.save(first.get_state(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=False)
    assert set(state) == {"master", "slave", "stereo"} and state["slave"]["engine"] == "matanyone"
    resumed = stereo(net, True, **kw)
    resumed.set_state(state)
    out += stereo_run(resumed, frames, masks, start=4)
    rec += resumed.drain_consistency()
    assert len(out) == len(out_ref) and all(np.array_equal(a, b) for a, b in zip(out, out_ref))
    assert rec == rec_ref and resumed.summary() == ref.summary()


def test_mask_engine_falls_back_to_two_engines():
    made = []

    def factory():
        made.append(MaskFollowEngine())
        return made[-1]

    eng = StereoEngine.from_config(factory, SBS, StereoConfig(mode="vr180"))
    assert StereoConfig().batch_eyes is True
    assert eng.pair is None and len(made) == 2 and eng.engines == tuple(made)
    frame, mask = sbs_frame(H, W, 0, disparity=-8)
    mask[:, W:] = 0
    plain = StereoEngine(MaskFollowEngine, SBS, batch_eyes=False)
    assert np.array_equal(eng.start(frame, mask), plain.start(frame, mask))
    frame1, _ = sbs_frame(H, W, 1, disparity=-8)
    assert np.array_equal(eng.step(frame1), plain.step(frame1))


def test_batch_eyes_off_from_config_builds_two_engines(net):
    made = []

    def factory():
        made.append(MatAnyoneEngine(net, CFG))
        return made[-1]

    eng = StereoEngine.from_config(factory, SBS, StereoConfig(mode="vr180", batch_eyes=False))
    assert eng.pair is None and len(made) == 2
    eng = StereoEngine.from_config(factory, SBS, StereoConfig(mode="vr180"))
    assert eng.pair is not None and len(made) == 3 and eng.engines[0] is made[-1]


@pytest.mark.slow
def test_cli_vr180_matanyone_pair_kill_9_resume_and_switch(weights_root, tmp_path):
    """The real CLI and pipeline wiring: a VR180 run with MatAnyone on the pair path, killed with
    kill -9 mid-run and resumed, gives the whole run's matte bit for bit; with batch_eyes=false the
    matte is the same to float rounding (ffv1 16-bit: a code or two)."""
    import subprocess

    import cv2

    from tests.conftest import run_cli, whole_crash_resume

    frames = 10
    path = tmp_path / "clip_LR_180.mp4"
    raw = b"".join(sbs_frame(H, W, t, disparity=-8, dy=1)[0].tobytes() for t in range(frames))
    subprocess.run(["ffmpeg", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{2 * W}x{H}", "-r", "10",
                    "-i", "-", "-c:v", "libx264", "-crf", "10", "-pix_fmt", "yuv444p", "-y", str(path)],
                   input=raw, check=True, timeout=120)
    _, mask = sbs_frame(H, W, 0, disparity=-8, dy=1)
    mask[:, W:] = 0
    cv2.imwrite(str(tmp_path / "m.png"), (mask * 255).astype(np.uint8))
    args = ["run", "--input", str(path), "--mask", str(tmp_path / "m.png"), "--weights-dir", str(weights_root),
            "--mode", "vr180", "--outputs", "alpha", "--set", "outputs.alpha_codec=ffv1", "--set", "engine.device=cpu",
            "--set", "engine.precision=fp32", "--set", "engine.warmup=1", "--set", "runtime.threads=1",
            "--set", "recovery.segment_frames=3", "-q"]
    whole_crash_resume(args, tmp_path, kill_at=7)
    off = run_cli(*args, "--set", "stereo.batch_eyes=false", "--run-dir", str(tmp_path / "off"), timeout=600)
    assert off.returncode == 0, off.stderr[-2000:]

    def alpha(d):
        meta = json.loads((d / "metadata.json").read_text())
        assert meta["status"] == "completed"
        out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(d / meta["outputs"]["alpha"]), "-f", "rawvideo",
                              "-pix_fmt", "gray16le", "-"], capture_output=True, check=True).stdout
        return np.frombuffer(out, np.uint16).reshape(frames, H, 2 * W).astype(np.int32)

    whole, crash, unbatched = alpha(tmp_path / "whole"), alpha(tmp_path / "crash"), alpha(tmp_path / "off")
    assert np.array_equal(whole, crash)
    assert np.abs(whole - unbatched).max() <= 2 and whole.std() > 0
