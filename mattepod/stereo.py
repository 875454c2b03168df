"""VR180 stereo: eye layout, eye split/merge, prompt transfer by disparity, and the two-eye engine.

A VR180 frame holds both eyes (side by side or top/bottom). The pipeline stays the mono pipeline:
``StereoEngine`` implements the ``mattepod.engine.Engine`` protocol over full stereo frames by running
one inner engine per eye in lockstep. The user prompts one eye (the master); the other eye's prompt is
the master's moved by the subject's disparity, so both eyes matte the same subject. Per frame the two
mattes are compared after disparity compensation and frames that disagree are flagged (and, if asked,
the slave is re-prompted from the master).

The fisheye reprojection and the alpha-packed passthrough format live in ``mattepod.vrproject``.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

import cv2
import numpy as np

from mattepod.engine import Engine
from mattepod.errors import ConfigError, InvalidMediaError, MaskError, RunStateError

Arrangement = Literal["sbs", "tb", "mono"]
Projection = Literal["equirect", "fisheye"]


# --------------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """How the two eyes sit in a frame and what each eye's projection is.

    ``fov`` is the horizontal field of view of one eye in degrees: 180 (half equirect) or 360 for
    equirect sources, the lens field of view for fisheye sources (190 for FISHEYE190, 200 for MKX200).
    ``origin`` says for each field where the value came from (config, metadata, name, shape, default),
    which the run log prints so a wrong detection is easy to spot.
    """

    arrangement: Arrangement = "sbs"
    swapped: bool = False  # right eye first (left/top half holds the right eye)
    projection: Projection = "equirect"
    fov: float = 180.0
    lens: str | None = None  # lens token of fisheye sources (MKX200, RF52, ...), kept in output names
    alpha_packed: bool = False  # the source already carries an alpha-packed matte (``_alpha``)
    tokens: tuple[str, ...] = ()
    origin: dict[str, str] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tokens"] = list(self.tokens)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Layout":
        d = dict(d)
        d["tokens"] = tuple(d.get("tokens", ()))
        return cls(**d)


# Fisheye lens tokens of the VR players (DeoVR, HereSphere): token -> field of view in degrees.
FISHEYE_LENS_FOV = {"MKX200": 200.0, "MKX220": 220.0, "VRCA220": 220.0, "RF52": 190.0}
SBS_TOKENS = {"LR", "SBS", "3DH", "HSBS", "HLR"}
SBS_SWAPPED_TOKENS = {"RL"}
TB_TOKENS = {"TB", "OU", "3DV", "HOU", "HTB"}
TB_SWAPPED_TOKENS: set[str] = set()  # "BT" is too common a word to trust
MONO_TOKENS = {"MONO", "2D"}
EQUIRECT_180_TOKENS = {"180", "180X180", "VR180", "DOME"}
EQUIRECT_360_TOKENS = {"360", "180X360", "360X180", "SPHERE"}
_SIDE_BY_SIDE = re.compile(r"SIDE[^A-Z0-9]*BY[^A-Z0-9]*SIDE")
_TOP_BOTTOM = re.compile(r"TOP[^A-Z0-9]*(?:AND[^A-Z0-9]*)?BOTTOM|OVER[^A-Z0-9]*UNDER")
_FISHEYE = re.compile(r"(?:FISHEYE|F)(\d{3})?")


def name_tokens(path: str | Path) -> list[str]:
    """Upper-case tokens of a file stem, split at ``_ - . space`` (how the players read names)."""
    return [t for t in re.split(r"[^A-Za-z0-9]+", Path(str(path)).stem.upper()) if t]


def layout_from_name(path: str | Path) -> dict[str, Any]:
    """Whatever the file name says about the layout: a partial dict (only the fields it names)."""
    stem = Path(str(path)).stem.upper()
    out: dict[str, Any] = {}
    matched: list[str] = []
    for tok in name_tokens(path):
        if tok in SBS_TOKENS | SBS_SWAPPED_TOKENS:
            out.setdefault("arrangement", "sbs")
            out.setdefault("swapped", tok in SBS_SWAPPED_TOKENS)
        elif tok in TB_TOKENS | TB_SWAPPED_TOKENS:
            out.setdefault("arrangement", "tb")
            out.setdefault("swapped", tok in TB_SWAPPED_TOKENS)
        elif tok in MONO_TOKENS:
            out.setdefault("arrangement", "mono")
        elif tok in FISHEYE_LENS_FOV:
            out["projection"], out["fov"], out["lens"] = "fisheye", FISHEYE_LENS_FOV[tok], tok
        elif (m := _FISHEYE.fullmatch(tok)) and (tok.startswith("FISHEYE") or m.group(1)):
            fov = float(m.group(1)) if m.group(1) else 180.0
            if not 90 <= fov <= 270:
                continue
            out["projection"], out["fov"], out["lens"] = "fisheye", fov, None
        elif tok in EQUIRECT_180_TOKENS | EQUIRECT_360_TOKENS:
            if out.get("projection") != "fisheye":  # a fisheye token is more specific than "_180"
                out["projection"] = "equirect"
                out["fov"] = 360.0 if tok in EQUIRECT_360_TOKENS else 180.0
        elif tok in {"ALPHA", "ALPHAPACKED"}:
            out["alpha_packed"] = True
        else:
            continue
        matched.append(tok)
    if "arrangement" not in out:
        if _SIDE_BY_SIDE.search(stem):
            out["arrangement"], out["swapped"] = "sbs", False
            matched.append("SIDE-BY-SIDE")
        elif _TOP_BOTTOM.search(stem):
            out["arrangement"], out["swapped"] = "tb", False
            matched.append("TOP-BOTTOM")
    if matched:
        out["tokens"] = tuple(matched)
    return out


def layout_from_metadata(side_data: Iterable[dict[str, Any]] | None = None,
                         tags: dict[str, Any] | None = None) -> dict[str, Any]:
    """Layout fields from ffprobe's stream ``side_data_list`` (Stereo 3D, Spherical Mapping) and the
    Matroska ``stereo_mode`` tag. Returns a partial dict like ``layout_from_name``."""
    out: dict[str, Any] = {}
    for sd in side_data or ():
        kind = str(sd.get("side_data_type", "")).lower()
        if "stereo" in kind:
            t = str(sd.get("type", "")).lower()
            if "side by side" in t:
                out["arrangement"] = "sbs"
            elif "top" in t and "bottom" in t:
                out["arrangement"] = "tb"
            elif t in {"2d", "mono"}:
                out["arrangement"] = "mono"
            else:
                continue
            out["swapped"] = bool(int(sd.get("inverted", 0) or 0))
        elif "spherical" in kind:
            proj = str(sd.get("projection", "")).lower().replace("_", " ")
            if "fisheye" in proj:
                out["projection"] = "fisheye"
            elif "equirect" in proj:
                out["projection"] = "equirect"
                if "half" in proj:
                    out["fov"] = 180.0
                else:
                    # bounds are 0.32 fixed point fractions of the full 360° width cropped away
                    left = float(sd.get("bound_left", 0) or 0) / 2**32
                    right = float(sd.get("bound_right", 0) or 0) / 2**32
                    out["fov"] = round(360.0 * max(0.0, 1.0 - left - right), 3) or 360.0
    mode = str((tags or {}).get("stereo_mode", "")).lower()
    if mode and "arrangement" not in out:
        table = {"left_right": ("sbs", False), "right_left": ("sbs", True),
                 "top_bottom": ("tb", False), "bottom_top": ("tb", True), "mono": ("mono", False)}
        if mode in table:
            out["arrangement"], out["swapped"] = table[mode]
    return out


def detect_layout(path: str | Path | None, width: int, height: int,
                  side_data: Iterable[dict[str, Any]] | None = None, *,
                  tags: dict[str, Any] | None = None, config: Any = None) -> Layout:
    """The eye layout of an input, field by field: config (when not ``auto``) > stream metadata >
    file name tokens > frame shape. ``config`` is a ``StereoConfig`` (or None)."""
    from_meta = layout_from_metadata(side_data, tags)
    from_name = layout_from_name(path) if path else {}
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}

    def pick(key: str, cfg_value: Any = None) -> None:
        for src, val in (("config", cfg_value), ("metadata", from_meta.get(key)), ("name", from_name.get(key))):
            if val is not None:
                values[key], origin[key] = val, src
                return

    cfg_layout = getattr(config, "layout", "auto")
    cfg_proj = getattr(config, "projection", "auto")
    pick("arrangement", None if cfg_layout == "auto" else cfg_layout)
    if "arrangement" not in values:
        ratio = width / max(height, 1)
        # VR180 SBS is 2:1 (two square eyes), VR180 TB 1:2; a square frame is the 360° TB convention.
        values["arrangement"], origin["arrangement"] = ("sbs" if ratio >= 1.5 else "tb"), "shape"
    if getattr(config, "swap_eyes", False):
        values["swapped"], origin["swapped"] = True, "config"
    elif origin["arrangement"] in ("metadata", "name"):
        src = from_meta if origin["arrangement"] == "metadata" else from_name
        values["swapped"], origin["swapped"] = bool(src.get("swapped", False)), origin["arrangement"]
    pick("projection", None if cfg_proj == "auto" else cfg_proj)
    values.setdefault("projection", "equirect")
    origin.setdefault("projection", "default")
    src_for_fov = {"metadata": from_meta, "name": from_name}.get(origin["projection"], {})
    fov = src_for_fov.get("fov")
    if fov is None and values["projection"] == from_name.get("projection"):
        fov = from_name.get("fov")
    if fov is None:
        fov = 180.0
    values["fov"] = float(fov)
    values["lens"] = from_name.get("lens") if values["projection"] == "fisheye" else None
    values["alpha_packed"] = bool(from_name.get("alpha_packed", False))
    return Layout(tokens=tuple(from_name.get("tokens", ())), origin=origin, **values)


# --------------------------------------------------------------------------------------------------
# Split / merge
# --------------------------------------------------------------------------------------------------


def _check_splittable(shape: Sequence[int], layout: Layout) -> None:
    if layout.arrangement == "mono":
        raise ConfigError("stereo.mode vr180 needs a two-eye input, but the layout is mono",
                          "set stereo.layout: sbs or tb, or stereo.mode: mono")
    h, w = shape[0], shape[1]
    n = w if layout.arrangement == "sbs" else h
    if n % 2:
        side = "width" if layout.arrangement == "sbs" else "height"
        raise InvalidMediaError(f"a {layout.arrangement.upper()} stereo frame needs an even {side}, got {w}x{h}",
                                "crop or scale the input to an even size (or check stereo.layout)")


def split_eyes(frame: np.ndarray, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) eye views of a frame, mask or alpha (no copies)."""
    _check_splittable(frame.shape, layout)
    if layout.arrangement == "sbs":
        half = frame.shape[1] // 2
        a, b = frame[:, :half], frame[:, half:]
    else:
        half = frame.shape[0] // 2
        a, b = frame[:half], frame[half:]
    return (b, a) if layout.swapped else (a, b)


def merge_eyes(left: np.ndarray, right: np.ndarray, layout: Layout, out: np.ndarray | None = None) -> np.ndarray:
    """The inverse of ``split_eyes``: one frame from two eyes (into ``out`` when given)."""
    if left.shape != right.shape:
        raise ValueError(f"eyes differ in shape: {left.shape} vs {right.shape}")
    first, second = (right, left) if layout.swapped else (left, right)
    axis = 1 if layout.arrangement == "sbs" else 0
    shape = list(left.shape)
    shape[axis] *= 2
    if out is None:
        out = np.empty(shape, dtype=np.result_type(left, right))
    a, b = split_eyes(out, Layout(arrangement=layout.arrangement, swapped=False))
    a[...] = first
    b[...] = second
    return out


# --------------------------------------------------------------------------------------------------
# Prompt transfer
# --------------------------------------------------------------------------------------------------

Box = tuple[float, float, float, float]


def mask_box(mask: np.ndarray, threshold: float = 0.5) -> tuple[int, int, int, int] | None:
    """Bounding box ``(x0, y0, x1, y1)`` (exclusive ends) of ``mask >= threshold``, None when empty."""
    on = mask >= threshold
    rows, cols = np.flatnonzero(on.any(axis=1)), np.flatnonzero(on.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def prompt_region(size: tuple[int, int], mask: np.ndarray | None = None, points: Iterable[Any] = (),
                  box: Box | None = None, pad: float = 0.05) -> tuple[int, int, int, int]:
    """The area of the master eye the prompt is about: mask box, else the box, else the positive
    clicks, padded by ``pad`` of the eye size. ``size`` is (width, height)."""
    w, h = size
    region: tuple[float, float, float, float] | None = None
    if mask is not None:
        region = mask_box(mask)
    if region is None and box is not None:
        region = tuple(box)  # type: ignore[assignment]
    if region is None:
        pts = [p for p in (_point(p) for p in points) if p[2] == 1] or [_point(p) for p in points]
        if pts:
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            region = (min(xs), min(ys), max(xs) + 1, max(ys) + 1)
    if region is None:
        raise MaskError("no prompt to transfer to the slave eye (empty mask, no box, no clicks)",
                        "give a mask, a box or clicks on the master eye")
    px, py = pad * w, pad * h
    x0, y0, x1, y1 = region
    return (max(0, int(x0 - px)), max(0, int(y0 - py)), min(w, int(math.ceil(x1 + px))),
            min(h, int(math.ceil(y1 + py))))


def _grey(img: np.ndarray) -> np.ndarray:
    if img.ndim == 3:
        img = img.mean(axis=2, dtype=np.float32)
    return img.astype(np.float32, copy=False)


def _phase_peak(a: np.ndarray, b: np.ndarray, weight: np.ndarray, max_dx: float, max_dy: float,
                prior: tuple[float, float] = (0.0, 0.0)) -> tuple[float, float, float]:
    """Shift (dx, dy) of ``b`` relative to ``a`` (weighted by ``weight``) by phase correlation,
    searched within ``prior ± (max_dx, max_dy)``; returns (dx, dy, peak strength)."""
    h, w = a.shape
    wsum = float(weight.sum()) or 1.0
    a = (a - float((a * weight).sum()) / wsum) * weight
    hann = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32) if min(h, w) > 8 else 1.0
    b = (b - float(b.mean())) * hann
    cross = np.fft.rfft2(b) * np.conj(np.fft.rfft2(a))
    cross /= np.abs(cross) + 1e-6 * float(np.abs(cross).max() + 1e-12)
    corr = np.fft.irfft2(cross, s=(h, w))
    sx = (np.arange(w) + w // 2) % w - w // 2  # signed shift of each column index
    sy = (np.arange(h) + h // 2) % h - h // 2
    allowed = (np.abs(sy - prior[1])[:, None] <= max_dy) & (np.abs(sx - prior[0])[None, :] <= max_dx)
    corr = np.where(allowed, corr, -np.inf)
    iy, ix = np.unravel_index(int(np.argmax(corr)), corr.shape)

    def sub(c_m: float, c_0: float, c_p: float) -> float:
        if not (np.isfinite(c_m) and np.isfinite(c_p)):
            return 0.0
        den = c_m - 2 * c_0 + c_p
        return float(np.clip(0.5 * (c_m - c_p) / den, -0.5, 0.5)) if den < 0 else 0.0

    peak = float(corr[iy, ix])
    fx = sub(corr[iy, (ix - 1) % w], peak, corr[iy, (ix + 1) % w])
    fy = sub(corr[(iy - 1) % h, ix], peak, corr[(iy + 1) % h, ix])
    return float(sx[ix]) + fx, float(sy[iy]) + fy, peak


def estimate_disparity(master_eye: np.ndarray, slave_eye: np.ndarray, region: Sequence[float], *,
                       weight: np.ndarray | None = None, max_dx: float | None = None,
                       max_dy: float | None = None, work_size: int = 384) -> tuple[float, float]:
    """Where the subject inside ``region`` of the master eye sits in the slave eye: ``(dx, dy)`` in
    pixels, slave position minus master position (the right eye sees a near subject further left).

    Phase correlation of the region (weighted by ``weight``, e.g. the prompt mask, so the background's
    own disparity does not win) against the slave eye around it: first on a copy shrunk to
    ``work_size``, then refined at full resolution on at most ``2 * work_size`` pixels around the
    region's centre. ``max_dx``/``max_dy`` bound the search (default 15 % of the eye width, 2 % of
    its height): VR180 rigs are aligned, so the vertical offset is small.
    """
    h, w = master_eye.shape[:2]
    if slave_eye.shape[:2] != (h, w):
        raise ValueError("eyes differ in size")
    mdx = float(0.15 * w if max_dx is None else max_dx)
    mdy = float(0.02 * h if max_dy is None else max_dy)
    x0, y0, x1, y1 = (int(round(v)) for v in region)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise MaskError("the prompt region on the master eye is empty", "prompt a visible subject")
    pad_x, pad_y = int(math.ceil(mdx)) + 2, int(math.ceil(mdy)) + 2
    cx0, cy0, cx1, cy1 = max(0, x0 - pad_x), max(0, y0 - pad_y), min(w, x1 + pad_x), min(h, y1 + pad_y)

    def weights(cx0: int, cy0: int, cx1: int, cy1: int, scale: float) -> np.ndarray:
        wt = np.zeros((cy1 - cy0, cx1 - cx0), np.float32)
        if weight is not None:
            wt[:] = (weight[cy0:cy1, cx0:cx1] >= 0.5)
        else:
            wt[max(0, y0 - cy0):y1 - cy0, max(0, x0 - cx0):x1 - cx0] = 1.0
        if scale != 1.0:
            wt = cv2.resize(wt, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        sigma = max(1.0, 0.01 * max(wt.shape))  # soft edge: a hard mask edge would whiten into noise
        return cv2.GaussianBlur(wt, (0, 0), sigma)

    a = _grey(master_eye[cy0:cy1, cx0:cx1])
    b = _grey(slave_eye[cy0:cy1, cx0:cx1])
    scale = min(1.0, work_size / max(a.shape))
    if scale < 1.0:
        a_s = cv2.resize(a, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        b_s = cv2.resize(b, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    else:
        a_s, b_s = a, b
    wt = weights(cx0, cy0, cx1, cy1, scale)[: a_s.shape[0], : a_s.shape[1]]
    dx, dy, _ = _phase_peak(a_s, b_s, wt, mdx * scale + 1, mdy * scale + 1)
    dx, dy = dx / scale, dy / scale
    if scale == 1.0:
        return dx, dy
    # Full-resolution refinement on a window around the region centre, slave crop pre-shifted.
    half = work_size
    rcx, rcy = (x0 + x1) // 2, (y0 + y1) // 2
    fx0, fx1 = max(0, rcx - half), min(w, rcx + half)
    fy0, fy1 = max(0, rcy - half), min(h, rcy + half)
    ix, iy = int(round(dx)), int(round(dy))
    sx0, sx1, sy0, sy1 = fx0 + ix, fx1 + ix, fy0 + iy, fy1 + iy
    # keep both windows inside the eye
    lo_x, hi_x = max(0, -sx0), max(0, sx1 - w)
    lo_y, hi_y = max(0, -sy0), max(0, sy1 - h)
    fx0, fx1, sx0, sx1 = fx0 + lo_x, fx1 - hi_x, sx0 + lo_x, sx1 - hi_x
    fy0, fy1, sy0, sy1 = fy0 + lo_y, fy1 - hi_y, sy0 + lo_y, sy1 - hi_y
    if fx1 - fx0 < 16 or fy1 - fy0 < 16:
        return dx, dy
    a_f = _grey(master_eye[fy0:fy1, fx0:fx1])
    b_f = _grey(slave_eye[sy0:sy1, sx0:sx1])
    wt_f = weights(fx0, fy0, fx1, fy1, 1.0)
    if float(wt_f.sum()) < 16:
        return dx, dy
    r = 2.0 / scale + 2
    rdx, rdy, _ = _phase_peak(a_f, b_f, wt_f, r, r)
    return ix + rdx, iy + rdy


def transfer_mask(mask: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """The mask moved by (dx, dy) (sub-pixel, bilinear), zero where it enters from outside."""
    m = np.asarray(mask, dtype=np.float32)
    h, w = m.shape[:2]
    mat = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(m, mat, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _point(p: Any) -> tuple[float, float, int]:
    if isinstance(p, dict):
        return float(p["x"]), float(p["y"]), int(p.get("label", 1))
    if hasattr(p, "x"):
        return float(p.x), float(p.y), int(getattr(p, "label", 1))
    x, y, *rest = p
    return float(x), float(y), int(rest[0]) if rest else 1


def transfer_points(points: Iterable[Any], dx: float, dy: float,
                    size: tuple[int, int] | None = None) -> list[tuple[float, float, int]]:
    """Clicks ``(x, y, label)`` (tuples, dicts or objects with x/y/label) moved by (dx, dy); with
    ``size`` = (width, height) the clicks that leave the eye are dropped."""
    out = []
    for p in points:
        x, y, label = _point(p)
        x, y = x + dx, y + dy
        if size is None or (0 <= x < size[0] and 0 <= y < size[1]):
            out.append((x, y, label))
    return out


def transfer_box(box: Box, dx: float, dy: float, size: tuple[int, int] | None = None) -> Box:
    """A box ``(x0, y0, x1, y1)`` moved by (dx, dy), clipped to ``size`` = (width, height)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1, y0, y1 = x0 + dx, x1 + dx, y0 + dy, y1 + dy
    if size is not None:
        x0, x1 = min(max(x0, 0.0), size[0]), min(max(x1, 0.0), size[0])
        y0, y1 = min(max(y0, 0.0), size[1]), min(max(y1, 0.0), size[1])
    return (x0, y0, x1, y1)


Refine = Callable[[np.ndarray, list, Box | None], np.ndarray]


def slave_prompt(master_eye: np.ndarray, slave_eye: np.ndarray, master_mask: np.ndarray, *,
                 points: Iterable[Any] = (), box: Box | None = None, refine: Refine | None = None,
                 max_dx: float | None = None, max_dy: float | None = None) -> tuple[np.ndarray, float, float]:
    """The slave eye's prompt mask from the master's: disparity inside the prompt region, the mask
    moved by it, then (with ``refine``, e.g. SAM 2 on the slave eye) refined from the moved clicks
    and box. Returns (slave mask, dx, dy)."""
    h, w = master_eye.shape[:2]
    region = prompt_region((w, h), master_mask, points, box)
    weight = master_mask if mask_box(master_mask) is not None else None
    dx, dy = estimate_disparity(master_eye, slave_eye, region, weight=weight, max_dx=max_dx, max_dy=max_dy)
    moved = transfer_mask(master_mask, dx, dy)
    if refine is not None:
        mb = mask_box(master_mask)
        src_box = box if box is not None else mb
        s_box = transfer_box(src_box, dx, dy, (w, h)) if src_box is not None else None
        refined = refine(slave_eye, transfer_points(points, dx, dy, (w, h)), s_box)
        if refined is not None and mask_box(np.asarray(refined, np.float32)) is not None:
            return np.asarray(refined, np.float32), dx, dy
    return moved, dx, dy


# --------------------------------------------------------------------------------------------------
# Consistency
# --------------------------------------------------------------------------------------------------


def _shift_bool(m: np.ndarray, dx: int, dy: int) -> np.ndarray:
    out = np.zeros_like(m)
    h, w = m.shape
    if abs(dx) >= w or abs(dy) >= h:
        return out
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = m[ys, xs]
    return out


def eye_consistency(alpha_master: np.ndarray, alpha_slave: np.ndarray, *, dy0: float = 0.0,
                    threshold: float = 0.5, max_side: int = 1024) -> dict[str, float]:
    """How well the two eyes' mattes agree, after disparity compensation.

    The horizontal disparity is taken from the mattes themselves (centroid difference, it changes as
    the subject moves in depth); the vertical offset is compensated only by ``dy0``, the offset found
    when the prompt was transferred, so a slave that slides up or down shows in ``dy`` and in the IoU.
    Returns ``iou`` (thresholded mattes), ``area_ratio`` (smaller/larger area), ``dy`` (vertical
    centroid offset beyond ``dy0``, pixels) and ``disparity`` (horizontal centroid offset, pixels).
    Computed on a strided view (at most ``max_side`` pixels a side): cheap at 8K.
    """
    h, w = alpha_master.shape[:2]
    stride = max(1, int(math.ceil(max(h, w) / max_side)))
    m = alpha_master[::stride, ::stride] >= threshold
    s = alpha_slave[::stride, ::stride] >= threshold
    am, as_ = int(m.sum()), int(s.sum())
    if am == 0 and as_ == 0:
        return {"iou": 1.0, "area_ratio": 1.0, "dy": 0.0, "disparity": 0.0}
    if am == 0 or as_ == 0:
        return {"iou": 0.0, "area_ratio": 0.0, "dy": 0.0, "disparity": 0.0}
    ym, xm = (v.mean() for v in np.nonzero(m))
    ys, xs = (v.mean() for v in np.nonzero(s))
    ddx = xs - xm
    back = _shift_bool(s, -int(round(ddx)), -int(round(dy0 / stride)))
    inter = int(np.logical_and(m, back).sum())
    union = am + int(back.sum()) - inter
    return {"iou": inter / union if union else 1.0, "area_ratio": min(am, as_) / max(am, as_),
            "dy": float((ys - ym) * stride - dy0), "disparity": float(ddx * stride)}


# --------------------------------------------------------------------------------------------------
# The two-eye engine
# --------------------------------------------------------------------------------------------------


class StereoEngine:
    """Engine over full stereo frames: one inner engine per eye, stepped in lockstep.

    ``factory()`` makes an inner engine (called twice, or once on the pair path: see ``batch_eyes``).
    ``start(frame, mask)`` takes the prompt mask of the full frame; its master-eye half is the prompt (if the slave half is also drawn, it is
    used as given, else the master half is moved to the slave eye by the subject's disparity and,
    with ``refine``, refined there). ``step`` returns the merged full-frame alpha.

    ``scale`` < 1 mattes each eye at that fraction of its size (alpha upsampled back): the internal
    matting size for 8K inputs. Consistency records (one per frame) collect in ``consistency`` for
    the pipeline to ``drain_consistency()``; ``summary()`` is the running total for metadata.json.
    All of it, inner states included, is in ``get_state`` so a resumed run continues bit-identically.

    ``batch_eyes``: when the inner engine can ``make_pair()`` (MatAnyone), the factory is called once
    and both eyes share its network and go through it as one batch of two (a frame that re-prompts
    the slave alone is stepped eye by eye); other engines (``MaskFollowEngine``) get two factory calls.
    The state layout is the same either way (``master``/``slave`` inner states).
    """

    name = "stereo"

    def __init__(self, factory: Callable[[], Engine], layout: Layout, *, master: str = "left",
                 scale: float = 1.0, consistency_threshold: float = 0.8, reprompt_on_drift: bool = False,
                 reprompt_cooldown: int = 15, max_disparity: float = 0.15, max_vertical_offset: float = 0.02,
                 refine: Refine | None = None,
                 keep_records: int = 10_000, batch_eyes: bool = True):
        if master not in ("left", "right"):
            raise ConfigError(f"stereo.master must be left or right, got {master!r}", "set stereo.master")
        if not 0 < scale <= 1:
            raise ConfigError(f"scale must be in (0, 1], got {scale}", "set scale")
        if layout.arrangement == "mono":
            _check_splittable((2, 2), layout)
        self.layout = layout
        self.master = master
        self.scale = float(scale)
        self.threshold = float(consistency_threshold)
        self.reprompt_on_drift = reprompt_on_drift
        self.reprompt_cooldown = int(reprompt_cooldown)
        self.max_disparity = float(max_disparity)
        self.max_vertical_offset = float(max_vertical_offset)
        self.refine = refine
        first = factory()
        # pair path: an engine that can make a twin on its own network steps both eyes as one batch
        self.pair = first.make_pair() if batch_eyes and callable(getattr(first, "make_pair", None)) else None
        self.engines = self.pair.eyes if self.pair is not None else (first, factory())  # (master, slave)
        self.consistency: deque[dict[str, Any]] = deque(maxlen=keep_records)
        self.prompt_points: list = []  # master-eye clicks of the next start/keyframe (for refine)
        self.prompt_box: Box | None = None
        self._reset_state()

    @classmethod
    def from_config(cls, factory: Callable[[], Engine], layout: Layout, stereo: Any, *, scale: float = 1.0,
                    refine: Refine | None = None, **kw: Any) -> "StereoEngine":
        """Build from a ``StereoConfig`` section."""
        return cls(factory, layout, master=stereo.master, scale=scale,
                   consistency_threshold=stereo.consistency_threshold,
                   reprompt_on_drift=stereo.reprompt_on_drift, reprompt_cooldown=stereo.reprompt_cooldown,
                   max_disparity=stereo.max_disparity, max_vertical_offset=stereo.max_vertical_offset,
                   refine=refine, batch_eyes=getattr(stereo, "batch_eyes", True), **kw)

    def _reset_state(self) -> None:
        self._frame = -1
        self._dx = 0.0
        self._dy0 = 0.0
        self._pending = False
        self._cooldown = 0
        self._summary = {"frames": 0, "flagged": 0, "iou_sum": 0.0, "iou_min": 1.0, "reprompts": 0}
        self._started = False

    # -- eyes ------------------------------------------------------------------------------------

    def _eyes(self, arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        left, right = split_eyes(arr, self.layout)
        return (left, right) if self.master == "left" else (right, left)

    def _down(self, img: np.ndarray) -> np.ndarray:
        if self.scale == 1.0:
            return np.ascontiguousarray(img)
        h, w = img.shape[:2]
        size = (max(1, int(round(w * self.scale))), max(1, int(round(h * self.scale))))
        return cv2.resize(np.ascontiguousarray(img), size, interpolation=cv2.INTER_AREA)

    def _merge_up(self, a_master: np.ndarray, a_slave: np.ndarray, eye_shape: tuple[int, int]) -> np.ndarray:
        h, w = eye_shape
        out_shape = (h, 2 * w) if self.layout.arrangement == "sbs" else (2 * h, w)
        out = np.empty(out_shape, np.float32)
        left, right = (a_master, a_slave) if self.master == "left" else (a_slave, a_master)
        o_left, o_right = split_eyes(out, self.layout)
        for src, dst in ((left, o_left), (right, o_right)):
            src = np.asarray(src, np.float32)
            if src.shape != (h, w):
                src = cv2.resize(src, (w, h), interpolation=cv2.INTER_LINEAR)
            dst[...] = src
        np.clip(out, 0.0, 1.0, out=out)
        return out

    # -- protocol --------------------------------------------------------------------------------

    def _anchor(self, frame: np.ndarray, mask: np.ndarray, keyframe: bool) -> np.ndarray:
        if mask.shape[:2] != frame.shape[:2]:
            raise MaskError(f"prompt mask is {mask.shape[1]}x{mask.shape[0]} but the stereo frame is "
                            f"{frame.shape[1]}x{frame.shape[0]}", "give a mask of the full two-eye frame")
        me, se = self._eyes(frame)
        mm, sm = self._eyes(np.asarray(mask, np.float32))
        if mask_box(mm) is None:
            raise MaskError(f"the prompt mask is empty in the master ({self.master}) eye",
                            f"draw the subject on the {self.master} eye, or set stereo.master")
        eh, ew = me.shape[:2]
        if mask_box(sm) is not None:
            slave_mask = np.ascontiguousarray(sm)  # both eyes prompted: trust the user
            self._dx, self._dy0 = self._centroid_offset(mm, sm)
        else:
            slave_mask, self._dx, self._dy0 = slave_prompt(
                me, se, mm, points=self.prompt_points, box=self.prompt_box, refine=self.refine,
                max_dx=self.max_disparity * ew, max_dy=self.max_vertical_offset * eh)
        me_s, se_s = self._down(me), self._down(se)
        mm_s, sm_s = self._down(mm), self._down(slave_mask)
        m_eng, s_eng = self.engines
        if self.pair is not None:  # start and keyframe alike re-anchor both eyes
            a_m, a_s = self.pair.step_pair((me_s, se_s), (mm_s, sm_s))
        elif keyframe:
            a_m, a_s = m_eng.step(me_s, mask=mm_s), s_eng.step(se_s, mask=sm_s)
        else:
            a_m, a_s = m_eng.start(me_s, mm_s), s_eng.start(se_s, sm_s)
        self._pending, self._cooldown = False, 0
        return self._finish(a_m, a_s, (eh, ew), reprompted=False, prompted=True)

    @staticmethod
    def _centroid_offset(mm: np.ndarray, sm: np.ndarray) -> tuple[float, float]:
        ym, xm = (v.mean() for v in np.nonzero(mm >= 0.5))
        ys, xs = (v.mean() for v in np.nonzero(sm >= 0.5))
        return float(xs - xm), float(ys - ym)

    def start(self, frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
        self._reset_state()
        self._started = True
        return self._anchor(frame, mask, keyframe=False)

    def step(self, frame: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        if not self._started:
            raise RuntimeError("step() before start()")
        if mask is not None:
            return self._anchor(frame, mask, keyframe=True)
        me, se = self._eyes(frame)
        me_s, se_s = self._down(me), self._down(se)
        m_eng, s_eng = self.engines
        reprompted = False
        if self.pair is not None and not self._pending:
            a_m, a_s = self.pair.step_pair((me_s, se_s))
            return self._finish(a_m, a_s, me.shape[:2], reprompted=False, prompted=False)
        a_m = m_eng.step(me_s)  # the slave's re-prompt needs the master's matte first: one by one
        if self._pending:
            sm = self._reprompt_mask(me_s, se_s, a_m)
            if sm is not None:
                a_s = s_eng.step(se_s, mask=sm)
                reprompted = True
                self._cooldown = self.reprompt_cooldown
                self._summary["reprompts"] += 1
            else:
                a_s = s_eng.step(se_s)
            self._pending = False
        else:
            a_s = s_eng.step(se_s)
        return self._finish(a_m, a_s, me.shape[:2], reprompted=reprompted, prompted=False)

    def _reprompt_mask(self, me_s: np.ndarray, se_s: np.ndarray, a_m: np.ndarray) -> np.ndarray | None:
        """The slave's new anchor: the master's current matte moved by the current disparity."""
        m = (np.asarray(a_m) >= 0.5).astype(np.float32)
        box = mask_box(m)
        if box is None:
            return None
        h, w = m.shape
        region = prompt_region((w, h), m)
        dx, dy = estimate_disparity(me_s, se_s, region, weight=m, max_dx=self.max_disparity * w,
                                    max_dy=self.max_vertical_offset * h)
        return transfer_mask(m, dx, dy)

    def _finish(self, a_m: np.ndarray, a_s: np.ndarray, eye_shape: tuple[int, int], *, reprompted: bool,
                prompted: bool) -> np.ndarray:
        self._frame += 1
        inner_scale = a_m.shape[0] / eye_shape[0]
        c = eye_consistency(a_m, a_s, dy0=self._dy0 * inner_scale)
        record = {"frame": self._frame, "iou": round(c["iou"], 4), "area_ratio": round(c["area_ratio"], 4),
                  "dy": round(c["dy"] / inner_scale, 2), "disparity": round(c["disparity"] / inner_scale, 2),
                  "flagged": c["iou"] < self.threshold, "reprompted": reprompted, "prompted": prompted}
        s = self._summary
        s["frames"] += 1
        s["iou_sum"] += c["iou"]
        s["iou_min"] = min(s["iou_min"], c["iou"])
        s["flagged"] += int(record["flagged"])
        if self._cooldown:
            self._cooldown -= 1
        elif record["flagged"] and self.reprompt_on_drift and not prompted:
            self._pending = True  # re-anchor the slave on the next frame, from that frame's master matte
        self.consistency.append(record)
        return self._merge_up(a_m, a_s, eye_shape)

    # -- reporting -------------------------------------------------------------------------------

    def drain_consistency(self) -> list[dict[str, Any]]:
        """The per-frame records since the last drain (the pipeline writes them out)."""
        out = list(self.consistency)
        self.consistency.clear()
        return out

    # the engine hook of the run (mattepod/run.py): events out, a metadata.json section back
    def drain_events(self) -> list[dict[str, Any]]:
        """The consistency records since the last call, as run events of kind ``stereo_consistency``."""
        out = [{"kind": "stereo_consistency", **rec} for rec in self.drain_consistency()]
        for eye, eng in enumerate(self.engines):  # the eyes' own events (matting size changes)
            out += [{**ev, "eye": eye} for ev in getattr(eng, "drain_events", lambda: [])()]
        return out

    def report(self, events: Callable[[str], list[dict[str, Any]]]) -> dict[str, Any]:
        """metadata.json ``stereo``: layout, running summary, the per-frame file and the flagged frames
        (of the forward pass, like the summary: it restarts at the prompt frame)."""
        recs = [r for r in events("stereo_consistency") if r.get("pass") != "backward"]
        scale = events("scale_change")
        return {"stereo": {"layout": self.layout.to_dict(), "consistency": self.summary(),
                           "consistency_file": "stereo_consistency.jsonl",
                           "flagged_frames": [r["frame"] for r in recs if r.get("flagged")]},
                **({"scale_changes": scale} if scale else {})}

    def summary(self) -> dict[str, Any]:
        """Running totals for metadata.json: frames, flagged, iou_mean, iou_min, reprompts."""
        s = self._summary
        n = s["frames"]
        return {"frames": n, "flagged": s["flagged"], "iou_mean": round(s["iou_sum"] / n, 4) if n else None,
                "iou_min": round(s["iou_min"], 4) if n else None, "reprompts": s["reprompts"],
                "threshold": self.threshold, "master": self.master}

    # -- state -----------------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        return {
            "master": self.engines[0].get_state(),
            "slave": self.engines[1].get_state(),
            "stereo": {"frame": self._frame, "dx": self._dx, "dy0": self._dy0, "pending": self._pending,
                       "cooldown": self._cooldown, "summary": dict(self._summary), "started": self._started,
                       "master_eye": self.master, "scale": self.scale,
                       "layout": {"arrangement": self.layout.arrangement, "swapped": self.layout.swapped}},
        }

    def set_state(self, state: dict[str, Any]) -> None:
        st = state["stereo"]
        mine = {"arrangement": self.layout.arrangement, "swapped": self.layout.swapped}
        if st["layout"] != mine or st["master_eye"] != self.master or st["scale"] != self.scale:
            raise RunStateError(
                f"the saved stereo state is for layout {st['layout']}, master {st['master_eye']}, scale "
                f"{st['scale']}; this run has {mine}, master {self.master}, scale {self.scale}",
                "resume with the run's own config.yaml")
        self.engines[0].set_state(state["master"])
        self.engines[1].set_state(state["slave"])
        self._frame, self._dx, self._dy0 = st["frame"], st["dx"], st["dy0"]
        self._pending, self._cooldown = st["pending"], st["cooldown"]
        self._summary = dict(st["summary"])
        self._started = st["started"]
        self.consistency.clear()


def to_eye_coords(x: float, y: float, layout: Layout, frame_size: tuple[int, int]) -> tuple[str, float, float]:
    """A click or box corner in full-frame pixels -> (eye, x, y) in that eye's pixels; ``frame_size``
    is (width, height) of the stereo frame. The prompt UI shows the full frame; engines see eyes."""
    w, h = frame_size
    if layout.arrangement == "sbs":
        first, ex, ey = x < w / 2, x - (0 if x < w / 2 else w / 2), y
    else:
        first, ex, ey = y < h / 2, x, y - (0 if y < h / 2 else h / 2)
    eye = "left" if first != layout.swapped else "right"
    return eye, ex, ey
