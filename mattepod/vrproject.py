"""VR180 output geometry: fisheye reprojection and the alpha-packed passthrough frame.

Passthrough players (DeoVR, HereSphere) read "alpha packed" videos: a side-by-side equidistant
fisheye video (each eye a square holding the fisheye circle) whose matte travels in the same
frame, in the corners the circles leave unused. Layout (H = eye size, W = 2H, S = 0.4 H):

* each eye's matte (the same fisheye projection as the eye) is shrunk to S x S and cut to its
  inscribed disc (the matte of a fisheye eye is empty outside its circle anyway);
* the frame is treated as wrapping around at its edges (a torus), and the discs are centred on
  frame corner points: the LEFT eye's matte on the top/bottom edge at the seam (x = W/2), the RIGHT
  eye's matte on the outer corners (x = 0 = W). So the left matte's four quarters lie in the
  inner corners of the two eyes (its top half at the bottom edge, its bottom half at the top
  edge) and the right matte's quarters in the four outer frame corners, each quarter diagonally
  opposite its place in the matte.
* a disc of radius 0.2 H around a corner and the eye's circle (radius 0.5 H, centre H/sqrt(2)
  away) do not meet (0.7 H < 0.7071 H): the picture inside the circles stays untouched.

The matte is written as grey (R = G = B), so in YUV it is luma with neutral chroma; at 8 bits dark
alpha values band, hence everything here works in uint16/float and the writer encodes 10-bit.
This is the layout of the public converters whose files these players recognise (the ffmpeg
``overlay`` recipe of vr2ar-converter and its descendants, and the unpacking scripts that read it
back); the players pick the mode from the ``_alpha`` name token (see ``packed_name``).
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

import cv2
import numpy as np

from mattepod.stereo import (EQUIRECT_180_TOKENS, EQUIRECT_360_TOKENS, FISHEYE_LENS_FOV, MONO_TOKENS,
                             SBS_SWAPPED_TOKENS, SBS_TOKENS, TB_SWAPPED_TOKENS, TB_TOKENS, Layout,
                             split_eyes)

PACK_SCALE = 0.4  # matte size relative to the eye, fixed by the format


# --------------------------------------------------------------------------------------------------
# Reprojection
# --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=2)  # one eye size per run (picture and alpha share it): <= 2 x 100 MB at 8K
def _fisheye_maps(kind: str, src_h: int, src_w: int, out_size: int, fov: float, src_fov: float,
                  src_vfov: float) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-point remap grids (cv2.convertMaps) from an output equidistant fisheye of ``fov``
    degrees to the source eye; built in row bands so an 8K grid never needs GBs of float64."""
    n = out_size
    map1 = np.empty((n, n, 2), np.int16)
    map2 = np.empty((n, n), np.uint16)
    c = ((np.arange(n, dtype=np.float32) + 0.5) / n * 2.0 - 1.0)
    half_fov = math.radians(fov) / 2.0
    for r0 in range(0, n, 256):
        v = c[r0:r0 + 256, None]
        u = c[None, :]
        r = np.sqrt(u * u + v * v)
        theta = r * half_fov
        phi = np.arctan2(v, u)
        st = np.sin(theta)
        x, y, z = st * np.cos(phi), st * np.sin(phi), np.cos(theta)
        if kind == "equirect":
            lon = np.arctan2(x, z)
            lat = np.arcsin(np.clip(y, -1.0, 1.0))
            hf, vf = math.radians(src_fov), math.radians(src_vfov)
            sx = (lon / hf + 0.5) * src_w - 0.5
            sy = (lat / vf + 0.5) * src_h - 0.5
            outside = (r > 1.0) | (np.abs(lon) > hf / 2) | (np.abs(lat) > vf / 2)
        else:  # equidistant fisheye source of src_fov degrees
            rs = theta / (math.radians(src_fov) / 2.0)
            sx = (rs * np.cos(phi) + 1.0) / 2.0 * src_w - 0.5
            sy = (rs * np.sin(phi) + 1.0) / 2.0 * src_h - 0.5
            outside = (r > 1.0) | (rs > 1.0)
        sx = np.where(outside, -10.0, sx).astype(np.float32)
        sy = np.where(outside, -10.0, sy).astype(np.float32)
        m1, m2 = cv2.convertMaps(sx, sy, cv2.CV_16SC2)
        map1[r0:r0 + 256], map2[r0:r0 + 256] = m1, m2
    map1.flags.writeable = map2.flags.writeable = False
    return map1, map2


def _remap(img: np.ndarray, maps: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return cv2.remap(np.ascontiguousarray(img), maps[0], maps[1], interpolation=cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def equirect_to_fisheye(eye: np.ndarray, fov: float = 180.0, out_size: int | None = None, *,
                        src_fov: float = 180.0, src_vfov: float = 180.0) -> np.ndarray:
    """One eye, (half-)equirectangular spanning ``src_fov`` x ``src_vfov`` degrees, as an
    equidistant fisheye of ``fov`` degrees in an ``out_size`` square (default: the eye height).
    Works on uint8/uint16 images and float alphas; pixels outside the circle (or outside the
    source's field of view) are 0. The grids are cached per size."""
    out_size = int(out_size or eye.shape[0])
    maps = _fisheye_maps("equirect", eye.shape[0], eye.shape[1], out_size, float(fov), float(src_fov),
                         float(src_vfov))
    return _remap(eye, maps)


def fisheye_to_fisheye(eye: np.ndarray, fov: float, out_size: int | None = None, *,
                       src_fov: float) -> np.ndarray:
    """An equidistant fisheye eye re-cut to another field of view and/or size (a view when nothing
    changes)."""
    out_size = int(out_size or eye.shape[0])
    if float(fov) == float(src_fov) and eye.shape[0] == eye.shape[1] == out_size:
        return eye
    maps = _fisheye_maps("fisheye", eye.shape[0], eye.shape[1], out_size, float(fov), float(src_fov), 0.0)
    return _remap(eye, maps)


def to_fisheye(eye: np.ndarray, layout: Layout, fov: float = 180.0, out_size: int | None = None) -> np.ndarray:
    """One source eye (projection from ``layout``) as an equidistant fisheye of ``fov`` degrees."""
    if layout.projection == "fisheye":
        return fisheye_to_fisheye(eye, fov, out_size, src_fov=layout.fov)
    vfov = 180.0
    return equirect_to_fisheye(eye, fov, out_size, src_fov=layout.fov, src_vfov=vfov)


def circle_mask(size: int) -> np.ndarray:
    """Pixels of a ``size`` square whose centres lie inside its inscribed circle (the fisheye image)."""
    c = np.arange(size, dtype=np.float64) + 0.5 - size / 2.0
    return (c[:, None] ** 2 + c[None, :] ** 2) <= (size / 2.0) ** 2


# --------------------------------------------------------------------------------------------------
# Alpha packing
# --------------------------------------------------------------------------------------------------


def packed_matte_size(eye_size: int) -> int:
    """Side of each packed matte: 0.4 of the eye, even (its quarters are equal), rounded down so the
    discs stay clear of the circles at every size."""
    return 2 * int(math.floor(PACK_SCALE * eye_size / 2.0))


def _placements(eye_size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Frame rows and columns (with wrap-around) of each eye's packed matte."""
    h, w = eye_size, 2 * eye_size
    s = packed_matte_size(eye_size)
    k = np.arange(s) - s // 2
    rows = k % h  # centred on the top edge = bottom edge
    return {"left": (rows, (w // 2 + k) % w), "right": (rows, k % w)}


def _to_u16(img: np.ndarray, out: np.ndarray) -> None:
    """Write a picture (uint8, uint16 or float in [0, 1]) into ``out`` as full-range uint16."""
    if img.dtype == np.uint16:
        out[...] = img
    elif img.dtype == np.uint8:
        np.multiply(img, 257, out=out, dtype=np.uint16)
    else:
        out[...] = np.round(np.clip(img, 0.0, 1.0) * 65535.0)


def _eyes(x: np.ndarray | tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(x, tuple):
        return x
    return split_eyes(x, Layout("sbs"))


def pack_alpha_fisheye(rgb_fisheye: np.ndarray | tuple[np.ndarray, np.ndarray],
                       alpha_fisheye: np.ndarray | tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The alpha-packed passthrough frame: the SBS fisheye picture (H, 2H, 3) with each eye's matte
    packed outside the circles (see the module docstring). Inputs are full SBS arrays or
    (left, right) tuples of square eyes (tuples avoid a merged copy at 8K); the picture uint8,
    uint16 or float in [0, 1], the alphas float in [0, 1]. Returns uint16 RGB over the full 16-bit
    range (the writer encodes 10-bit from it)."""
    rgb_l, rgb_r = _eyes(rgb_fisheye)
    a_l, a_r = _eyes(alpha_fisheye)
    h = rgb_l.shape[0]
    if rgb_l.ndim != 3 or rgb_l.shape[:2] != (h, h) or rgb_r.shape != rgb_l.shape:
        raise ValueError(f"alpha packing needs two square fisheye eyes, got {rgb_l.shape} and {rgb_r.shape}")
    if a_l.shape[:2] != (h, h) or a_r.shape[:2] != (h, h):
        raise ValueError(f"alphas are {a_l.shape} and {a_r.shape}, eyes are {h}x{h}")
    out = np.empty((h, 2 * h, rgb_l.shape[2]), np.uint16)
    _to_u16(rgb_l, out[:, :h])
    _to_u16(rgb_r, out[:, h:])
    s = packed_matte_size(h)
    disc = circle_mask(s)
    places = _placements(h)
    for name, eye_alpha in (("left", a_l), ("right", a_r)):
        small = cv2.resize(np.ascontiguousarray(eye_alpha, dtype=np.float32), (s, s), interpolation=cv2.INTER_AREA)
        grey = np.round(np.clip(small, 0.0, 1.0) * 65535.0).astype(np.uint16)
        rows, cols = places[name]
        idx = np.ix_(rows, cols)
        block = out[idx]
        block[disc] = grey[disc][:, None]
        out[idx] = block
    return out


def unpack_alpha_fisheye(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two packed mattes (left, right) back out of a packed frame, float32 S x S, 0 outside
    their discs: what a player reads (used by the tests and to check an encoded file)."""
    h = packed.shape[0]
    s = packed_matte_size(h)
    disc = circle_mask(s)
    scale = 65535.0 if packed.dtype == np.uint16 else 255.0 if packed.dtype == np.uint8 else 1.0
    grey = packed.astype(np.float32).mean(axis=2) / scale if packed.ndim == 3 else packed.astype(np.float32) / scale
    out = []
    for name in ("left", "right"):
        rows, cols = _placements(h)[name]
        m = grey[np.ix_(rows, cols)]
        out.append(np.where(disc, m, 0.0).astype(np.float32))
    return out[0], out[1]


def packed_frame(frame: np.ndarray, alpha: np.ndarray, layout: Layout, fov: float = 180.0,
                 out_size: int | None = None) -> np.ndarray:
    """One source stereo frame and its full-frame alpha as the packed passthrough frame: eyes split,
    each reprojected to a ``fov`` fisheye (``out_size`` square, default the eye height), packed.
    The packed output is always left|right side by side, whatever the source layout."""
    eyes = split_eyes(frame, layout)
    alphas = split_eyes(alpha, layout)
    fish = tuple(to_fisheye(e, layout, fov, out_size) for e in eyes)
    fish_a = tuple(to_fisheye(np.ascontiguousarray(a, dtype=np.float32), layout, fov, out_size) for a in alphas)
    return pack_alpha_fisheye(fish, fish_a)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Names and metadata
# --------------------------------------------------------------------------------------------------

_LAYOUT_WORDS = (SBS_TOKENS | SBS_SWAPPED_TOKENS | TB_TOKENS | TB_SWAPPED_TOKENS | MONO_TOKENS | EQUIRECT_180_TOKENS
                 | EQUIRECT_360_TOKENS | set(FISHEYE_LENS_FOV) | {"ALPHA", "ALPHAPACKED", "FISHEYE"})
_FISHEYE_WORD = re.compile(r"(?:FISHEYE|F)\d{3}")


def _is_layout_word(word: str) -> bool:
    up = word.upper()
    return up in _LAYOUT_WORDS or bool(_FISHEYE_WORD.fullmatch(up))


def strip_layout_tokens(stem: str) -> str:
    """The stem without the layout tokens players read (``clip_LR_180`` -> ``clip``), so an output
    name carries only the tokens that describe the output."""
    parts = re.split(r"([^A-Za-z0-9]+)", stem)
    words, seps = parts[0::2], [""] + parts[1::2]
    kept = [(sep, word) for sep, word in zip(seps, words) if word and not _is_layout_word(word)]
    if not kept:
        return stem
    text = kept[0][1] + "".join(sep + word for sep, word in kept[1:])
    return text


def packed_name(stem: str, fov: float = 180.0, lens: str | None = None) -> str:
    """File stem of the packed passthrough output: ``<stem>_LR_180_FISHEYE<fov>_alpha``.

    ``_LR`` side by side, ``_180`` a 180° video, ``_FISHEYE<fov>`` the equidistant fisheye and its
    field of view, ``_alpha`` the packed matte (DeoVR and HereSphere switch to alpha passthrough on
    it). A fisheye source keeps its lens token instead (``_MKX200_alpha``): the players know that
    lens's own distortion. The source's own layout tokens are removed first.
    """
    proj = lens.upper() if lens else f"FISHEYE{float(fov):g}"
    return f"{strip_layout_tokens(stem)}_LR_180_{proj}_alpha"


def stereo_mode_tag(layout: Layout | str) -> str:
    """Matroska ``stereo_mode`` tag value for ffmpeg (``-metadata:s:v:0 stereo_mode=...``)."""
    arrangement = layout if isinstance(layout, str) else layout.arrangement
    swapped = False if isinstance(layout, str) else layout.swapped
    table = {("sbs", False): "left_right", ("sbs", True): "right_left", ("tb", False): "top_bottom",
             ("tb", True): "bottom_top", ("mono", False): "mono", ("mono", True): "mono"}
    return table[(arrangement, swapped)]


def packed_output(layout: Layout, fov: float) -> tuple[float, str | None]:
    """(output fisheye fov, lens token to keep in the name) for a source layout and the configured
    ``stereo.fov``: a fisheye source whose own fov is asked for passes through untouched and keeps
    its lens token (MKX200, RF52, ...); anything else is reprojected to an equidistant FISHEYE<fov>."""
    if layout.projection == "fisheye" and float(fov) == float(layout.fov):
        return float(fov), layout.lens
    return float(fov), None


def packed_name_for(stem: str, layout: Layout, fov: float) -> str:
    """``packed_name`` for a source layout and ``stereo.fov`` (see ``packed_output``)."""
    out_fov, lens = packed_output(layout, fov)
    return packed_name(stem, out_fov, lens)
