"""Prompt transfer master -> slave eye by disparity, and the eye-consistency figure."""

from __future__ import annotations

import numpy as np
import pytest

from mattepod.errors import MaskError
from mattepod.stereo import (eye_consistency, estimate_disparity, mask_box, prompt_region, slave_prompt,
                             transfer_box, transfer_mask, transfer_points)
from stereo_synth import eye_pair


def iou(a, b):
    a, b = a >= 0.5, b >= 0.5
    return (a & b).sum() / max(1, (a | b).sum())


@pytest.mark.parametrize("size, disparity, dy, bg", [(128, -12, 0, 2), (200, -27, 2, 3), (256, 18, -3, -2),
                                                     (600, -55, 4, 5)])
def test_known_disparity_recovered_within_2px(size, disparity, dy, bg):
    left, right, ml, mr = eye_pair(size, size, t=5, disparity=disparity, dy=dy, bg_disparity=bg, seed=size)
    region = prompt_region((size, size), ml)
    dx, ddy = estimate_disparity(left, right, region, weight=ml)
    assert abs(dx - disparity) <= 2 and abs(ddy - dy) <= 2
    # The object, not the background: the background moves by ``bg``, far from ``disparity``.
    assert abs(dx - bg) > 5


def test_box_only_region_also_finds_the_subject():
    left, right, ml, mr = eye_pair(160, 160, disparity=-15, bg_disparity=1, seed=3)
    x0, y0, x1, y1 = mask_box(ml)
    inner = (x0 + 5, y0 + 5, x1 - 5, y1 - 5)  # a user box inside the subject
    dx, dy = estimate_disparity(left, right, inner)
    assert abs(dx + 15) <= 2 and abs(dy) <= 2


def test_transferred_prompt_lands_on_the_object():
    left, right, ml, mr = eye_pair(192, 192, t=2, disparity=-20, dy=1, seed=7)
    points = [(float(np.nonzero(ml)[1].mean()), float(np.nonzero(ml)[0].mean()), 1), {"x": 2, "y": 2, "label": 0}]
    slave, dx, dy = slave_prompt(left, right, ml, points=points)
    assert iou(slave, mr) > 0.9
    assert iou(ml, mr) < 0.8  # without the transfer the mask would miss a good part
    moved = transfer_points(points, dx, dy, size=(192, 192))
    x, y, label = moved[0]
    assert label == 1 and mr[int(round(y)), int(round(x))] == 1  # the click is on the object
    assert len(moved) == 1  # the negative click at (2, 2) left the eye and was dropped
    box = transfer_box(mask_box(ml), dx, dy, size=(192, 192))
    bx = mask_box(mr)
    assert all(abs(a - b) <= 2 for a, b in zip(box, bx))


def test_refine_callable_gets_moved_prompts_and_its_mask_wins():
    left, right, ml, mr = eye_pair(128, 128, disparity=-10, seed=11)
    seen = {}

    def refine(eye, points, box):  # stands in for SAM 2 on the slave eye
        seen.update(eye=eye, points=points, box=box)
        return mr * 1.0

    c = (float(np.nonzero(ml)[1].mean()), float(np.nonzero(ml)[0].mean()), 1)
    slave, dx, dy = slave_prompt(left, right, ml, points=[c], refine=refine)
    assert seen["eye"] is right and abs(seen["points"][0][0] - (c[0] - 10)) <= 2
    assert seen["box"] is not None and np.array_equal(slave, mr)


def test_transfer_mask_moves_by_subpixel_and_fills_zero():
    m = np.zeros((20, 20), np.float32)
    m[5:10, 5:10] = 1
    out = transfer_mask(m, 3, -2)
    assert np.array_equal(out >= 0.5, np.roll(np.roll(m, 3, axis=1), -2, axis=0) >= 0.5)
    edge = transfer_mask(np.ones((10, 10), np.float32), 4, 0)
    assert edge[:, :4].max() == 0 and edge[:, 4:].min() == 1


def test_empty_prompt_is_a_mask_error():
    with pytest.raises(MaskError):
        prompt_region((10, 10), np.zeros((10, 10), np.float32))


def test_consistency_high_for_consistent_pair_low_for_broken():
    left, right, ml, mr = eye_pair(256, 256, disparity=-24, dy=2, seed=5)
    good = eye_consistency(ml, mr, dy0=2)
    assert good["iou"] > 0.97 and good["area_ratio"] > 0.97
    assert abs(good["disparity"] + 24) <= 1 and abs(good["dy"]) <= 1
    # broken: the slave matte slid down by 40 px (not disparity, which is horizontal)
    slid = transfer_mask(mr, 0, 40)
    bad = eye_consistency(ml, slid, dy0=2)
    assert bad["iou"] < 0.6 and abs(bad["dy"] - 40) <= 1
    # broken: the slave matte is a different (smaller) thing
    small = np.zeros_like(mr)
    small[100:120, 100:120] = 1
    other = eye_consistency(ml, small)
    assert other["iou"] < 0.2 and other["area_ratio"] < 0.2
    # broken: the slave lost the subject
    assert eye_consistency(ml, np.zeros_like(mr))["iou"] == 0.0
    assert eye_consistency(np.zeros_like(ml), np.zeros_like(mr))["iou"] == 1.0


def test_consistency_on_8k_sized_alphas_is_strided():
    a = np.zeros((4096, 4096), np.float32)
    a[1000:3000, 1200:2000] = 1
    b = np.roll(a, -80, axis=1)
    c = eye_consistency(a, b)
    assert c["iou"] > 0.98 and abs(c["disparity"] + 80) <= 4
