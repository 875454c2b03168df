"""The five matting metrics against their definitions (TEST.md "Quality metrics").

Each reference below is written straight from the definition with plain loops (no shared code with
``mattepod.quality``): a 2-D kernel built tap by tap, a correlation with clamped indices, a breadth-first
flood fill for the 4-connected components. Hand-computed values pin the scales (x1e3, /1e3, x1e2).
"""

from __future__ import annotations

import math
from collections import deque

import cv2
import numpy as np
import pytest

from mattepod import quality as q


# ---------------------------------------------------------------- references from the definitions

def ref_kernel(sigma: float = 1.4, eps: float = 1e-2) -> np.ndarray:
    half = math.ceil(sigma * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * sigma * eps)))
    gauss = lambda x: math.exp(-x * x / (2 * sigma * sigma)) / (sigma * math.sqrt(2 * math.pi))  # noqa: E731
    dgauss = lambda x: -x * gauss(x) / (sigma * sigma)  # noqa: E731
    k = np.array([[gauss(i - half) * dgauss(j - half) for j in range(2 * half + 1)] for i in range(2 * half + 1)])
    return k / math.sqrt((k ** 2).sum())


def ref_correlate(img: np.ndarray, k: np.ndarray) -> np.ndarray:
    h, w = img.shape
    r = k.shape[0] // 2
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            s = 0.0
            for i in range(k.shape[0]):
                for j in range(k.shape[1]):
                    yy = min(max(y + i - r, 0), h - 1)  # replicated border
                    xx = min(max(x + j - r, 0), w - 1)
                    s += k[i, j] * img[yy, xx]
            out[y, x] = s
    return out


def ref_grad(pred: np.ndarray, gt: np.ndarray) -> float:
    k = ref_kernel()

    def norm(a):
        a = a.astype(np.float64)
        return (a - a.min()) / (a.max() - a.min()) if a.max() > a.min() else np.zeros_like(a)

    def mag(a):
        return np.sqrt(ref_correlate(a, k) ** 2 + ref_correlate(a, k.T) ** 2)

    return float(((mag(norm(gt)) - mag(norm(pred))) ** 2).sum() / 1000)


def ref_largest(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    seen = np.zeros_like(mask, bool)
    best: list[tuple[int, int]] = []
    for y in range(h):
        for x in range(w):
            if mask[y, x] and not seen[y, x]:
                comp, todo = [], deque([(y, x)])
                seen[y, x] = True
                while todo:
                    cy, cx = todo.popleft()
                    comp.append((cy, cx))
                    for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                        if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            todo.append((ny, nx))
                if len(comp) > len(best):  # strictly larger: the first found (raster order) wins ties
                    best = comp
    out = np.zeros_like(mask, bool)
    for y, x in best:
        out[y, x] = True
    return out


def ref_conn(pred: np.ndarray, gt: np.ndarray) -> float:
    p, g = pred.astype(np.float64), gt.astype(np.float64)
    h, w = g.shape
    level = np.full((h, w), -1.0)
    for i in range(1, 11):
        t = i * 0.1
        omega = ref_largest((g >= t) & (p >= t))
        for y in range(h):
            for x in range(w):
                if level[y, x] == -1.0 and not omega[y, x]:
                    level[y, x] = (i - 1) * 0.1
    level[level == -1.0] = 1.0
    err = 0.0
    for y in range(h):
        for x in range(w):
            dg, dp = g[y, x] - level[y, x], p[y, x] - level[y, x]
            phi_g = 1 - dg if dg >= 0.15 else 1.0
            phi_p = 1 - dp if dp >= 0.15 else 1.0
            err += abs(phi_g - phi_p)
    return err / 1000


def ref_dtssd(p, pp, g, gp) -> float:
    d = (p.astype(np.float64) - pp) - (g.astype(np.float64) - gp)
    return math.sqrt(float((d ** 2).sum()) / d.size) * 100


def eight_bit(rng: np.random.Generator, shape: tuple[int, int], soft: bool = True) -> np.ndarray:
    """A blob-shaped matte on the field's grid: k/255 held as float32."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    blob = np.clip(1.5 - np.hypot((yy - h / 2) / (h / 3), (xx - w / 2) / (w / 3)), 0, 1)
    noise = rng.integers(-40, 41, shape) if soft else 0
    k = np.clip(np.round(blob * 255) + noise, 0, 255)
    return (k.astype(np.float32) / np.float32(255))


# ---------------------------------------------------------------- hand-checked values

def test_mad_mse_scales():
    gt = np.zeros((4, 4), np.float32)
    pred = np.full((4, 4), 0.5, np.float32)
    assert q.mad(pred, gt) == pytest.approx(500.0, abs=1e-9)
    assert q.mse(pred, gt) == pytest.approx(250.0, abs=1e-9)
    half = gt.copy()
    half[:, :2] = 1
    assert q.mad(half, gt) == pytest.approx(500.0, abs=1e-9)
    assert q.mse(half, gt) == pytest.approx(500.0, abs=1e-9)


def test_dtssd_hand_value():
    z = np.zeros((3, 5), np.float32)
    moved = np.full((3, 5), 0.2, np.float32)
    assert q.dtssd(moved, z, z, z) == pytest.approx(20.0, abs=1e-6)  # sqrt(0.04) * 100
    assert q.dtssd(moved, z, moved, z) == 0.0  # the same change in both: no temporal error


def test_conn_hand_values():
    ones = np.ones((2, 2), np.float32)
    # nothing of the prediction survives the first threshold: every pixel rounds down to 0;
    # phi(gt) = 1 - 1 = 0, phi(pred) = 1: error 4 pixels / 1000
    assert q.conn(np.zeros_like(ones), ones) == pytest.approx(0.004, abs=1e-12)
    gt = np.ones((1, 3), np.float32)
    pred = np.array([[1.0, 0.5, 1.0]], np.float32)
    # from t = 0.6 the intersection splits; pixels 1 and 2 leave the kept component there (round-down 0.5):
    # pixel 1: phi(gt) = 1 - 0.5, phi(pred) = 1 (d = 0 < 0.15) -> 0.5; pixel 2: 0.5 vs 0.5 -> 0
    assert q.conn(pred, gt) == pytest.approx(0.0005, abs=1e-12)
    assert q.conn(gt, gt) == 0.0


def test_grad_kernel_definition():
    k = ref_kernel()
    assert k.shape == (9, 9)  # half size ceil(1.4 * sqrt(-2 ln(sqrt(2 pi) 1.4e-2))) = 4
    ours = np.outer(q.GaussGrad().smooth, q.GaussGrad().deriv)
    np.testing.assert_allclose(ours, k, atol=1e-15)
    assert (k ** 2).sum() == pytest.approx(1.0)


def test_grad_of_constant_frames_is_zero():
    flat = np.full((6, 7), 0.3, np.float32)
    assert q.grad(flat, np.zeros_like(flat)) == 0.0  # min-max normalisation makes both all-zero


# ---------------------------------------------------------------- against the references (1e-6)

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_definitions(seed):
    rng = np.random.default_rng(seed)
    shape = (11, 13)
    gt, gt_prev = eight_bit(rng, shape), eight_bit(rng, shape)
    pred, pred_prev = eight_bit(rng, shape), eight_bit(rng, shape)
    p64, g64 = pred.astype(np.float64), gt.astype(np.float64)
    assert q.mad(pred, gt) == pytest.approx(np.abs(p64 - g64).mean() * 1000, abs=1e-6)
    assert q.mse(pred, gt) == pytest.approx(((p64 - g64) ** 2).mean() * 1000, abs=1e-6)
    assert q.grad(pred, gt) == pytest.approx(ref_grad(pred, gt), abs=1e-6)
    assert q.conn(pred, gt) == pytest.approx(ref_conn(pred, gt), abs=1e-6)
    assert q.dtssd(pred, pred_prev, gt, gt_prev) == pytest.approx(ref_dtssd(pred, pred_prev, gt, gt_prev), abs=1e-6)


def test_conn_threshold_ties_on_the_8bit_grid():
    """k/255 hits t_i exactly for k = 51, 102, 153, 204, 255 (0.2 ... 1.0); float32 rounding puts all of
    them at or above the float64 threshold, as in the field's float32 frames."""
    vals = np.array([[51, 102, 153, 204, 255, 50, 101, 152]], np.float32) / np.float32(255)
    gt = np.ones_like(vals)
    assert q.conn(vals, gt) == pytest.approx(ref_conn(vals, gt), abs=1e-12)
    rng = np.random.default_rng(5)
    ties = rng.choice(np.array([0, 51, 102, 153, 204, 255], np.float32), (9, 9)) / np.float32(255)
    other = eight_bit(rng, (9, 9))
    assert q.conn(ties, other) == pytest.approx(ref_conn(ties, other), abs=1e-12)
    assert q.conn(other, ties) == pytest.approx(ref_conn(other, ties), abs=1e-12)


def test_grad_matches_opencv_filter2d_in_float64():
    """An independent check at a larger size: OpenCV's 2-D correlation (float64, replicated border)."""
    rng = np.random.default_rng(7)
    gt, pred = eight_bit(rng, (40, 52)), eight_bit(rng, (40, 52))
    k = ref_kernel()

    def mag(a):
        a = cv2.normalize(a.astype(np.float64), None, 1.0, 0.0, cv2.NORM_MINMAX)
        gx = cv2.filter2D(a, -1, k, borderType=cv2.BORDER_REPLICATE)
        gy = cv2.filter2D(a, -1, k.T, borderType=cv2.BORDER_REPLICATE)
        return np.sqrt(gx ** 2 + gy ** 2)

    want = ((mag(gt) - mag(pred)) ** 2).sum() / 1000
    assert q.grad(pred, gt) == pytest.approx(want, rel=1e-9)


def test_largest_component_ties_go_to_raster_order():
    m = np.array([[0, 0, 0, 1],
                  [1, 0, 0, 1],
                  [1, 0, 0, 0]], bool)
    np.testing.assert_array_equal(q.largest_component(m), ref_largest(m))
    assert q.largest_component(m)[0, 3]  # (0,3) comes before (1,0) in raster order
    assert not q.largest_component(np.zeros((3, 3), bool)).any()


def test_clip_meter_means_include_the_first_dtssd():
    rng = np.random.default_rng(3)
    frames = [(eight_bit(rng, (8, 9)), eight_bit(rng, (8, 9))) for _ in range(3)]
    meter = q.ClipMeter()
    for p, g in frames:
        meter.add(p, g)
    d = [0.0] + [ref_dtssd(frames[t][0], frames[t - 1][0], frames[t][1], frames[t - 1][1]) for t in (1, 2)]
    assert meter.per_frame[0]["dtssd"] == 0.0
    assert meter.mean()["dtssd"] == pytest.approx(sum(d) / 3, abs=1e-9)
    assert meter.mean()["mad"] == pytest.approx(np.mean([q.mad(p, g) for p, g in frames]), abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_conn_of_small_subjects_away_from_the_border(seed):
    """Mattes that are 0 around a few soft blobs (the bounding-box path), equal-sized pieces included."""
    rng = np.random.default_rng(seed)
    gt = np.zeros((16, 18), np.float32)
    pred = np.zeros_like(gt)
    gt[4:9, 5:10] = rng.integers(0, 256, (5, 5)) / np.float32(255)
    pred[5:10, 4:9] = rng.integers(0, 256, (5, 5)) / np.float32(255)
    gt[11, 3] = gt[11, 14] = pred[11, 3] = pred[11, 14] = 1.0  # two single-pixel pieces of equal size
    assert q.conn(pred, gt) == pytest.approx(ref_conn(pred, gt), abs=1e-9)
    assert q.conn(gt, pred) == pytest.approx(ref_conn(gt, pred), abs=1e-9)
