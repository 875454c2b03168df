"""Prompt -> mask: the one place that turns clicks, a box, a mask file or "find the person" into a mask.

The pipeline, the UI (per click), the batch scripts and the serverless worker all call :func:`resolve_prompt`
with a :class:`PromptSpec`. Everything a user can get wrong here (clicks outside the frame, a mask of the
wrong shape, a mask that is empty or covers the whole frame, nobody found) is a :class:`MaskError` naming the
value, raised before any matting starts.

Coordinates are pixels of the frame (or 0..1 with ``normalized``); the run prompts on the full-size source
frame (``scale`` only shrinks what the engine sees), so clicks, boxes and mask files are in source pixels.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mattepod.config import Keyframe, PromptConfig
from mattepod.detect import Detection, get_detector, select_people
from mattepod.errors import InputNotFoundError, MaskError
from mattepod.sam import Sam2Prompter, get_prompter

__all__ = ["PromptSpec", "PromptResult", "Sam2Prompter", "specs_from_config", "auto_spec", "load_mask_file",
           "edit_mask", "check_coverage", "resolve_prompt", "draw_preview"]

log = logging.getLogger(__name__)

MAX_COVERAGE = 0.999  # a "mask" over more of the frame than this is a mistake (inverted, or all white)
ASPECT_TOLERANCE = 0.01  # mask files whose aspect is this close to the frame's are resized, with a warning


@dataclass
class PromptSpec:
    """One prompt on one frame. Exactly one source: mask file, clicks and/or box, or auto_person."""

    frame: int = 0
    points: list[tuple[float, float, int]] = field(default_factory=list)  # (x, y, label 1/0)
    box: tuple[float, float, float, float] | None = None
    mask: str | None = None
    normalized: bool = False
    mask_add: list[str] = field(default_factory=list)
    mask_subtract: list[str] = field(default_factory=list)
    dilate: int = 0
    erode: int = 0
    auto_person: bool = False
    person_select: str = "largest"
    person_count: int = 1
    person_min_score: float = 0.5
    keyframe: bool = False  # from prompt.keyframes (re-anchors the matte) rather than the main prompt

    @property
    def kind(self) -> str:
        """'mask', 'clicks', 'box', 'clicks+box', 'auto_person' or 'none' (for logs, previews, metadata)."""
        if self.mask:
            return "mask"
        if self.points and self.box is not None:
            return "clicks+box"
        if self.points:
            return "clicks"
        if self.box is not None:
            return "box"
        return "auto_person" if self.auto_person else "none"


@dataclass
class PromptResult:
    mask: np.ndarray  # float32 (H, W) in [0, 1] at the size of the frame given
    preview_rgb: np.ndarray  # uint8 (H, W, 3): the mask over the frame, clicks and boxes drawn
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)  # boxes SAM 2 was given

    @property
    def preview(self) -> np.ndarray:
        """Alias of ``preview_rgb`` (the name the pipeline uses)."""
        return self.preview_rgb


def _person_fields(cfg: PromptConfig) -> dict:
    return {"person_select": cfg.person_select, "person_count": cfg.person_count,
            "person_min_score": cfg.person_min_score}


def specs_from_config(cfg: PromptConfig) -> list[PromptSpec]:
    """The main prompt first, then the keyframes sorted by frame. Keyframes share ``normalized`` and the person
    selection of the main prompt; mask edits (add/subtract/dilate/erode) belong to the main prompt only."""
    main = PromptSpec(
        frame=cfg.frame, points=[(p.x, p.y, p.label) for p in cfg.points],
        box=tuple(cfg.box) if cfg.box is not None else None, mask=cfg.mask, normalized=cfg.normalized,
        mask_add=list(cfg.mask_add), mask_subtract=list(cfg.mask_subtract), dilate=cfg.mask_dilate,
        erode=cfg.mask_erode, auto_person=cfg.auto_person, **_person_fields(cfg))
    keys = []
    seen = {cfg.frame}
    for kf in cfg.keyframes:
        if kf.frame in seen:
            raise MaskError(f"prompt.keyframes: frame {kf.frame} is given twice (or is the prompt frame)",
                            "give each keyframe its own frame index")
        seen.add(kf.frame)
        keys.append(_keyframe_spec(kf, cfg))
    return [main, *sorted(keys, key=lambda s: s.frame)]


def _keyframe_spec(kf: Keyframe, cfg: PromptConfig) -> PromptSpec:
    return PromptSpec(frame=kf.frame, points=[(p.x, p.y, p.label) for p in kf.points],
                      box=tuple(kf.box) if kf.box is not None else None, mask=kf.mask,
                      normalized=cfg.normalized, auto_person=kf.auto_person, keyframe=True,
                      **_person_fields(cfg))


def auto_spec(cfg: PromptConfig, frame: int) -> PromptSpec:
    """An automatic person prompt at ``frame`` (what ``prompt.reprompt_every`` re-prompts with)."""
    return PromptSpec(frame=frame, auto_person=True, keyframe=True, **_person_fields(cfg))


# ---------------------------------------------------------------------------------------------- mask files


def load_mask_file(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """A mask PNG/JPEG as float32 (H, W) in [0, 1] at ``size`` = (W, H).

    Accepts grey, grey+alpha, RGB, RGBA, palette, 1-bit and 16-bit files; values 0/1, 0/255 (0/65535) or
    soft. With an alpha channel that is not fully opaque, the alpha is the mask (a cut-out PNG); otherwise
    the brightest channel is (so a red-on-black mask counts as fully on). A file whose aspect matches the
    frame within 1% is resized with a warning (a mask drawn on a proxy); any other size is refused.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise InputNotFoundError(f"mask file {p} not found", "check the path given as the prompt mask")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # one line, not a warning + a line
            im = Image.open(p)
        with im:
            w, h = im.size
            if w * h > max(16 * size[0] * size[1], 1 << 24):  # checked before decoding: a PNG bomb never inflates
                raise MaskError(f"mask file {p} is {w}x{h}, far larger than the {size[0]}x{size[1]} frame",
                                "give a mask at the frame's size")
            im.load()
            arr = _mask_array(im)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise MaskError(f"mask file {p} is not a readable image ({exc})", "give a PNG mask") from None
    return _fit(arr, size, str(p))


def _mask_array(im) -> np.ndarray:
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=np.float32)
    if mode == "P":
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im).astype(np.float32)
        if arr.ndim == 3:
            arr = arr.max(axis=2)
        top = float(arr.max()) if arr.size else 0.0
        return arr / (65535.0 if top > 255 else 255.0 if top > 1 else 1.0)
    if mode not in ("L", "LA", "RGB", "RGBA"):
        im = im.convert("RGBA")
        mode = "RGBA"
    arr = np.asarray(im)
    if arr.ndim == 2:
        chan = arr
    else:
        has_alpha = mode in ("LA", "RGBA")
        colour = arr[..., :-1] if has_alpha else arr
        if has_alpha and (arr[..., -1] < 255).any():
            chan = arr[..., -1]
        else:
            chan = colour.max(axis=2)
    chan = chan.astype(np.float32)
    top = float(chan.max()) if chan.size else 0.0
    return chan / (255.0 if top > 1 else 1.0)  # 0/1 masks stay 0/1


def _fit(mask: np.ndarray, size: tuple[int, int], name: str) -> np.ndarray:
    import cv2

    w, h = int(size[0]), int(size[1])
    mh, mw = mask.shape[:2]
    if (mw, mh) == (w, h):
        return np.clip(mask, 0.0, 1.0).astype(np.float32)
    if abs((mw / mh) / (w / h) - 1.0) > ASPECT_TOLERANCE:
        raise MaskError(f"mask {name} is {mw}x{mh} but the frame is {w}x{h} (another aspect ratio)",
                        f"export the mask at {w}x{h}")
    log.warning("mask %s is %dx%d, the frame %dx%d: resizing it", name, mw, mh, w, h)
    interp = cv2.INTER_AREA if mw > w else cv2.INTER_LINEAR
    return np.clip(cv2.resize(mask.astype(np.float32), (w, h), interpolation=interp), 0.0, 1.0)


def _disk(radius: int) -> np.ndarray:
    import cv2

    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def edit_mask(mask: np.ndarray, add: Sequence[np.ndarray] = (), subtract: Sequence[np.ndarray] = (),
              dilate: int = 0, erode: int = 0) -> np.ndarray:
    """Union with ``add``, grow by ``dilate`` px, shrink by ``erode`` px, then cut ``subtract`` out.

    Subtraction comes last so that an explicit "not this" is never grown back over by the dilation.
    Soft masks stay soft (dilate/erode are grey-level max/min filters).
    """
    import cv2

    out = np.asarray(mask, dtype=np.float32).copy()
    for other in add:
        _same_shape(out, other, "mask_add")
        out = np.maximum(out, other)
    if dilate > 0:
        out = cv2.dilate(out, _disk(dilate))
    if erode > 0:
        out = cv2.erode(out, _disk(erode))
    for other in subtract:
        _same_shape(out, other, "mask_subtract")
        out = out * (1.0 - np.clip(other, 0.0, 1.0))
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _same_shape(mask: np.ndarray, other: np.ndarray, what: str) -> None:
    if other.shape != mask.shape:
        raise MaskError(f"{what} mask is {other.shape[1]}x{other.shape[0]}, the prompt mask "
                        f"{mask.shape[1]}x{mask.shape[0]}", "give edit masks at the frame size")


def check_coverage(mask: np.ndarray, frame_index: int, source: str) -> float:
    """Fraction of the frame the mask covers; MaskError when it is empty or covers (nearly) everything."""
    cover = float((mask >= 0.5).mean()) if mask.size else 0.0
    where = f"prompt mask on frame {frame_index} (from {source})"
    if cover == 0.0:
        raise MaskError(f"{where} is empty (0 of {mask.size} pixels set)",
                        "check the mask file (white = subject) or move the clicks onto the subject")
    if cover > MAX_COVERAGE:
        raise MaskError(f"{where} covers {cover:.1%} of the frame",
                        "the mask is probably inverted (white must be the subject only)")
    return cover


# -------------------------------------------------------------------------------------------- resolution


def _to_pixels(spec: PromptSpec, frame_wh: tuple[int, int]):
    """Validate clicks and box against the frame; return them in its pixels (normalized ones scaled)."""
    fw, fh = frame_wh
    lim_w, lim_h = (1.0, 1.0) if spec.normalized else (float(fw), float(fh))
    unit = " (normalized)" if spec.normalized else f" (frame is {fw}x{fh})"
    sx, sy = (fw, fh) if spec.normalized else (1.0, 1.0)
    points = []
    for i, pt in enumerate(spec.points):
        if len(pt) != 3:
            raise MaskError(f"click {i + 1} {pt!r} is not (x, y, label)", "write clicks as x,y,label")
        x, y, label = float(pt[0]), float(pt[1]), int(pt[2])
        if label not in (0, 1):
            raise MaskError(f"click {i + 1} at ({x:g}, {y:g}) has label {label}", "use 1 (subject) or 0 (not)")
        if not (0.0 <= x <= lim_w and 0.0 <= y <= lim_h):
            raise MaskError(f"click {i + 1} at ({x:g}, {y:g}) is outside the frame{unit}",
                            "give clicks inside the frame" + (" as 0..1 values" if spec.normalized else ""))
        points.append((x * sx, y * sy, label))
    box = None
    if spec.box is not None:
        if len(spec.box) != 4:
            raise MaskError(f"box {spec.box!r} needs 4 values", "write the box as x0,y0,x1,y1")
        x0, y0, x1, y1 = (float(v) for v in spec.box)
        if not (x0 < x1 and y0 < y1):
            raise MaskError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is empty or reversed",
                            "give the box as x0,y0,x1,y1 with x0 < x1 and y0 < y1")
        if min(x0, y0) < 0 or x1 > lim_w or y1 > lim_h:
            raise MaskError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) reaches outside the frame{unit}",
                            "draw the box inside the frame")
        box = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
    return points, box


def resolve_prompt(
    spec: PromptSpec,
    frame_rgb: np.ndarray,
    weights_dir: str | Path,
    prompter: Sam2Prompter | None = None,
    sam2_model: str = "base_plus",
    device: str = "cpu",
    detector=None,
) -> PromptResult:
    """The mask (and its preview) of ``spec`` on ``frame_rgb``.

    ``prompter``/``detector`` let the UI and the pipeline share loaded models; without them the process-wide
    cached ones are used.
    """
    if frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3 or frame_rgb.dtype != np.uint8:
        raise MaskError(f"frame must be uint8 RGB (H, W, 3), got {frame_rgb.dtype} {frame_rgb.shape}",
                        "pass the decoded RGB frame")
    fh, fw = frame_rgb.shape[:2]
    kind = spec.kind
    if kind == "none":
        raise MaskError(f"no prompt for frame {spec.frame}",
                        "give a mask (--mask), clicks (--points), a box (--box) or --auto-person")
    if spec.mask and (spec.points or spec.box is not None or spec.auto_person):
        raise MaskError(f"frame {spec.frame} has both a mask file ({spec.mask}) and clicks/box/auto_person",
                        "give either a mask file or clicks/box/auto_person")
    if spec.auto_person and (spec.points or spec.box is not None):
        raise MaskError(f"frame {spec.frame} has both auto_person and clicks/box",
                        "drop auto_person to use the clicks, or drop the clicks")

    points, box = _to_pixels(spec, (fw, fh))
    boxes: list[tuple[float, float, float, float]] = [box] if box is not None else []
    if spec.mask:
        mask = load_mask_file(spec.mask, (fw, fh))
        source = spec.mask
    else:
        if prompter is None:
            prompter = get_prompter(sam2_model, weights_dir, device)
        if spec.auto_person:
            boxes = [d.box for d in _find_people(spec, frame_rgb, weights_dir, device, detector)]
            mask = prompter.mask_for(frame_rgb, box=boxes)
            source = f"{len(boxes)} detected person box(es)"
        else:
            mask = prompter.mask_for(frame_rgb, points=points, box=box)
            source = kind
    if spec.mask_add or spec.mask_subtract or spec.dilate or spec.erode:
        adds = [load_mask_file(p, (fw, fh)) for p in spec.mask_add]
        subs = [load_mask_file(p, (fw, fh)) for p in spec.mask_subtract]
        mask = edit_mask(mask, adds, subs, spec.dilate, spec.erode)
    check_coverage(mask, spec.frame, source)
    return PromptResult(mask, draw_preview(frame_rgb, mask, points, boxes), boxes)


def _find_people(spec: PromptSpec, frame: np.ndarray, weights_dir: str | Path, device: str,
                 detector) -> list[Detection]:
    from mattepod.sam import resolve_device

    if detector is None:
        detector = get_detector(weights_dir, resolve_device(device), spec.person_min_score)
    found = detector.detect(frame)
    chosen = select_people(found, spec.person_select, spec.person_count)
    if not chosen:
        raise MaskError(f"no person found on frame {spec.frame} (detector score >= {spec.person_min_score:g})",
                        "lower prompt.person_min_score, pick another prompt frame, or give clicks/box/mask")
    log.info("auto person on frame %d: %d found, %d chosen (%s)", spec.frame, len(found), len(chosen),
             spec.person_select)
    return chosen


# ---------------------------------------------------------------------------------------------- previews

POSITIVE = (0, 220, 0)
NEGATIVE = (230, 0, 0)
BOX = (255, 200, 0)
TINT = (60, 140, 255)


def draw_preview(frame_rgb: np.ndarray, mask: np.ndarray, points: Sequence[tuple[float, float, int]] = (),
                 boxes: Sequence[Sequence[float]] = ()) -> np.ndarray:
    """The frame with the mask tinted and outlined, clicks as dots (green positive, red negative), boxes."""
    import cv2

    h, w = frame_rgb.shape[:2]
    on = mask >= 0.5
    out = frame_rgb.astype(np.float32)
    out[~on] *= 0.45  # dim what is not the subject
    out[on] = 0.7 * out[on] + 0.3 * np.array(TINT, dtype=np.float32)
    out = np.ascontiguousarray(out.clip(0, 255).astype(np.uint8))
    contours, _ = cv2.findContours(on.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    thick = max(1, round(min(h, w) / 300))
    cv2.drawContours(out, contours, -1, (255, 255, 255), thick)
    for box in boxes:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x0, y0), (min(x1, w - 1), min(y1, h - 1)), BOX, thick + 1)
    radius = max(3, round(min(h, w) / 80))
    for x, y, label in points:
        centre = (int(round(x)), int(round(y)))
        cv2.circle(out, centre, radius + thick, (255, 255, 255), -1)
        cv2.circle(out, centre, radius, POSITIVE if label == 1 else NEGATIVE, -1)
    return out
