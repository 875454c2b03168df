"""StereoEngine: both eyes in lockstep behind the mono Engine protocol, resume, drift re-prompt."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from mattepod.config import StereoConfig
from mattepod.engine import Engine, MaskFollowEngine
from mattepod.errors import MaskError, RunStateError
from mattepod.stereo import Layout, StereoEngine, split_eyes
from stereo_synth import sbs_frame

H = W = 96  # eye size
SBS = Layout("sbs")


def master_only(mask):
    m = mask.copy()
    m[:, W:] = 0
    return m


def roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def test_is_an_engine_and_returns_full_frame_alpha():
    eng = StereoEngine(MaskFollowEngine, SBS)
    assert isinstance(eng, Engine)
    frame, mask = sbs_frame(H, W, 0, disparity=-9)
    alpha = eng.start(frame, master_only(mask))
    assert alpha.shape == frame.shape[:2] and alpha.dtype == np.float32
    left, right = split_eyes(alpha, SBS)
    ml, mr = split_eyes(mask, SBS)
    # the slave eye was prompted by transfer: its matte sits on the object in the right eye
    assert ((right >= 0.5) & (mr >= 0.5)).sum() / ((right >= 0.5) | (mr >= 0.5)).sum() > 0.85
    rec = eng.drain_consistency()
    assert rec[0]["prompted"] and rec[0]["iou"] > 0.9 and abs(rec[0]["disparity"] + 9) <= 1.5
    assert eng.drain_consistency() == []


def test_scale_mattes_small_and_returns_full_size():
    calls = []

    class Spy(MaskFollowEngine):
        def step(self, frame, mask=None):
            calls.append(frame.shape)
            return super().step(frame, mask)

    eng = StereoEngine(Spy, Layout("tb"), scale=0.5)
    frame, mask = sbs_frame(H, W, 0)
    tb = np.concatenate(split_eyes(frame, SBS), axis=0)
    tbm = np.concatenate([split_eyes(mask, SBS)[0], np.zeros((H, W), np.float32)], axis=0)
    assert eng.start(tb, tbm).shape == (2 * H, W)
    assert eng.step(tb).shape == (2 * H, W)
    assert calls == [(H // 2, W // 2, 3)] * 2


@pytest.mark.parametrize("master", ["left", "right"])
def test_state_roundtrip_continues_bit_identically(master):
    frames = [sbs_frame(H, W, t, disparity=-8, dy=1)[0] for t in range(9)]
    _, mask = sbs_frame(H, W, 0, disparity=-8, dy=1)
    if master == "right":
        mask[:, :W] = 0
    else:
        mask = master_only(mask)
    make = lambda: StereoEngine(MaskFollowEngine, SBS, master=master, scale=0.75, reprompt_on_drift=True)
    ref = make()
    out_ref = [ref.start(frames[0], mask)] + [ref.step(f) for f in frames[1:]]
    rec_ref = ref.drain_consistency()

    first = make()
    out = [first.start(frames[0], mask)] + [first.step(f) for f in frames[1:5]]
    rec = first.drain_consistency()
    state = roundtrip(first.get_state())
    del first
    resumed = make()
    resumed.set_state(state)
    out += [resumed.step(f) for f in frames[5:]]
    rec += resumed.drain_consistency()
    assert all(np.array_equal(a, b) for a, b in zip(out, out_ref))
    assert rec == rec_ref
    assert resumed.summary() == ref.summary()


def test_set_state_refuses_another_layout():
    eng = StereoEngine(MaskFollowEngine, SBS)
    frame, mask = sbs_frame(H, W, 0)
    eng.start(frame, master_only(mask))
    other = StereoEngine(MaskFollowEngine, Layout("sbs", swapped=True))
    with pytest.raises(RunStateError):
        other.set_state(eng.get_state())


def test_mask_errors_are_clear():
    eng = StereoEngine(MaskFollowEngine, SBS)
    frame, mask = sbs_frame(H, W, 0)
    with pytest.raises(MaskError, match="empty in the master"):
        eng.start(frame, np.zeros(frame.shape[:2], np.float32))
    with pytest.raises(MaskError, match="full two-eye frame"):
        eng.start(frame, mask[:, :W])
    with pytest.raises(RuntimeError):
        StereoEngine(MaskFollowEngine, SBS).step(frame)


class DriftingFake(MaskFollowEngine):
    """A fake inner engine whose matte slides 25 px down from frame 3 on until it is re-anchored:
    the failure a slave eye can show on a real clip."""

    def __init__(self):
        super().__init__()
        self.since_anchor = 0

    def start(self, frame, mask):
        self.since_anchor = 0
        return super().start(frame, mask)

    def step(self, frame, mask=None):
        if mask is not None:
            return self.start(frame, mask)
        self.since_anchor += 1
        alpha = super().step(frame)
        return np.roll(alpha, 25, axis=0) if self.since_anchor >= 3 else alpha

    def get_state(self):
        return {**super().get_state(), "since": self.since_anchor}

    def set_state(self, state):
        super().set_state(state)
        self.since_anchor = state["since"]


def run(reprompt):
    made = []

    def factory():  # first call: master (healthy), second: slave (drifts)
        made.append(MaskFollowEngine() if not made else DriftingFake())
        return made[-1]

    cfg = StereoConfig(mode="vr180", reprompt_on_drift=reprompt, reprompt_cooldown=3, consistency_threshold=0.8)
    eng = StereoEngine.from_config(factory, SBS, cfg)
    frame, mask = sbs_frame(H, W, 0, disparity=-8)
    eng.start(frame, master_only(mask))
    for _ in range(8):
        eng.step(frame)
    return eng.drain_consistency(), eng.summary()


def test_drift_is_flagged_and_reprompt_fixes_it():
    plain, s_plain = run(False)
    assert [r["flagged"] for r in plain] == [False] * 3 + [True] * 6
    assert plain[4]["dy"] > 20 and s_plain["flagged"] == 6 and s_plain["reprompts"] == 0
    fixed, s_fixed = run(True)
    assert fixed[3]["flagged"] and fixed[4]["reprompted"] and not fixed[4]["flagged"]
    assert s_fixed["reprompts"] >= 1 and s_fixed["flagged"] < s_plain["flagged"]
    assert s_fixed["iou_mean"] > s_plain["iou_mean"]


def test_keyframe_mask_reanchors_both_eyes():
    eng = StereoEngine(MaskFollowEngine, SBS)
    frame, mask = sbs_frame(H, W, 0, disparity=-8)
    eng.start(frame, master_only(mask))
    frame5, mask5 = sbs_frame(H, W, 5, disparity=-8)
    alpha = eng.step(frame5, mask=master_only(mask5))
    left, right = split_eyes(alpha, SBS)
    _, mr = split_eyes(mask5, SBS)
    assert ((right >= 0.5) & (mr >= 0.5)).sum() / ((right >= 0.5) | (mr >= 0.5)).sum() > 0.85
    assert eng.drain_consistency()[-1]["prompted"]
