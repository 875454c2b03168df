"""Frames, overlays, brush strokes, uploads and the volume listing: the page's contact with files.

Frames come from ``mattepod.media`` (one ``-ss`` seek per frame, never a full decode) so the image prompted
is the frame the pipeline decodes. Nothing here knows Gradio.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from app.state import FramePrompt, Media, View
from mattepod import jobs
from mattepod.errors import InvalidMediaError, MattePodError
from mattepod.media.exts import VIDEO_EXTS

# folders the pipeline and the app write inside a run folder: never offered as inputs
_INTERNAL_DIRS = {"previews", "proxies", "segments", "spill", "checkpoints", ".spill", "parts"}


def probe_media(path: str) -> Media:
    """The video's size, frame count and fps; a clear one-line error for anything that is not a video."""
    from mattepod.media.probe import probe
    from mattepod.stereo import layout_from_name

    info = probe(path)
    if not info.frame_count or info.frame_count < 1:
        raise InvalidMediaError(f"{Path(path).name} has no video frames", "upload a video file")
    hint = ""
    try:
        named = layout_from_name(path)
    except Exception:  # noqa: BLE001 - a name hint is a courtesy, never an error
        named = {}
    if named:
        bits = [str(v) for k, v in named.items() if k in ("arrangement", "projection", "lens") and v]
        hint = "the file name suggests VR180" + (f" ({', '.join(bits)})" if bits else "") + ": mode set to vr180"
    return Media(str(path), Path(path).name, int(info.width), int(info.height), int(info.frame_count),
                 float(info.fps), hint)


def load_view(base_stereo: Any, path: str, index: int, mode: str, layout: str,
              master: str) -> tuple[np.ndarray, View]:
    """(image to prompt, view): the whole frame (mono) or the master eye of a VR180 frame."""
    from mattepod.media.probe import probe
    from mattepod.media.reader import read_frame

    info = probe(path)
    frame = read_frame(info, max(0, min(int(index), info.frame_count - 1)))
    h, w = frame.shape[:2]
    if mode != "vr180":
        return frame, View(0, 0, w, h, w, h)
    from mattepod.stereo import detect_layout

    cfg = base_stereo.model_copy(update={"layout": layout, "master": master})
    lay = detect_layout(path, w, h, info.side_data, config=cfg)
    first = (master == "left") != lay.swapped  # the master eye is the first half of the frame
    desc = (f"{lay.arrangement}, {'right' if lay.swapped else 'left'} eye first, {lay.projection} "
            f"{lay.fov:g}°" + (f" ({lay.lens})" if lay.lens else "")
            + f" — detected from {lay.origin.get('arrangement', 'shape')}")
    if lay.arrangement == "sbs":
        half = w // 2
        view = View(0 if first else half, 0, half, h, w, h, desc)
    else:
        half = h // 2
        view = View(0, 0 if first else half, w, half, w, h, desc)
    eye = frame[view.y : view.y + view.h, view.x : view.x + view.w]
    return np.ascontiguousarray(eye), view


def overlay(image: np.ndarray, fp: FramePrompt, corner: tuple | None = None) -> np.ndarray:
    """The image with the mask tinted green, clicks as dots (green +, red −), the box and a box corner."""
    out = image.copy()
    mask = fp.mask
    if mask is not None:
        m = mask >= 0.5
        out[m] = (0.45 * out[m] + 0.55 * np.array([40, 220, 90])).astype(np.uint8)
        edges = cv2.morphologyEx(m.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
        out[edges] = (255, 255, 255)
    r = max(3, min(image.shape[:2]) // 60)
    if fp.box is not None:
        b = fp.box
        cv2.rectangle(out, (int(b.x0), int(b.y0)), (int(b.x1), int(b.y1)), (255, 200, 0), max(1, r // 2))
    for c in fp.clicks:
        colour = (40, 220, 90) if c.label == 1 else (230, 40, 40)
        centre = (int(round(c.x)), int(round(c.y)))
        cv2.circle(out, centre, r + 2, (255, 255, 255), -1)
        cv2.circle(out, centre, r, colour, -1)
    if corner is not None:
        cv2.drawMarker(out, (int(corner[0]), int(corner[1])), (255, 200, 0), cv2.MARKER_CROSS, 4 * r, 2)
    return out


def mask_from_file(path: str, size: tuple[int, int]) -> np.ndarray:
    from mattepod.prompts import load_mask_file

    return load_mask_file(path, size)


def brush_stroke(editor: dict | None, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(painted, erased) bool masks from the editor's layers: green strokes add, red strokes erase."""
    h, w = shape
    add, sub = np.zeros((h, w), bool), np.zeros((h, w), bool)
    for layer in (editor or {}).get("layers") or []:
        if layer is None:
            continue
        layer = np.asarray(layer)
        if layer.ndim != 3 or layer.shape[2] < 4:
            continue
        if layer.shape[:2] != (h, w):
            layer = cv2.resize(layer, (w, h), interpolation=cv2.INTER_NEAREST)
        painted = layer[..., 3] > 0
        red, green = layer[..., 0].astype(int), layer[..., 1].astype(int)
        add |= painted & (green > red)
        sub |= painted & (red >= green)
    return add, sub


def list_media(roots: jobs.Roots, limit: int = 500) -> list[tuple[str, str]]:
    """(label, path) of the videos a user can prompt: the input volume, and finished outputs of runs
    (a run folder's internal files -- segments, proxies, spill -- are never offered)."""
    found: list[tuple[str, str]] = []
    for root in (roots.input, roots.output):
        if not root.is_dir():
            continue
        for dirpath, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _INTERNAL_DIRS)
            for name in sorted(files):
                if Path(name).suffix.lower() not in VIDEO_EXTS or name.startswith((".", "_")):
                    continue
                if re.search(r"(\.part|_seg\d+|\.tmp)\.", name):
                    continue
                p = Path(dirpath) / name
                found.append((f"{root.name}/{p.relative_to(root)}", str(p)))
                if len(found) >= limit:
                    return sorted(found)
    return sorted(found)


def upload_cache() -> Path:
    """Where Gradio keeps uploads (GRADIO_TEMP_DIR, else <tmp>/gradio)."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")


def adopt_upload(upload: str, roots: jobs.Roots) -> Path:
    """Move an upload from Gradio's cache into the input volume (a job must outlive the cache and the app)."""
    src = Path(upload)
    cache = upload_cache()
    try:
        src = jobs.inside(src, [cache])
    except MattePodError:
        return jobs.inside(src, [roots.input, roots.output])  # the file was chosen from the volume
    dest_dir = roots.input / "uploads"
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / src.name
    n = 1
    while dest.exists():
        if dest.stat().st_size == src.stat().st_size:
            return dest
        dest = dest_dir / f"{src.stem}-{n}{src.suffix}"
        n += 1
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)
    return dest


_PATH = re.compile(r"(?<![\w.])(?:/[^\s/'\",;:()]+)+/?")


def public_message(err: BaseException | str) -> str:
    """One line for a toast: server paths are cut to the file name, the fix kept after '->'."""
    text = str(err).replace("\n", " ").strip()
    return _PATH.sub(lambda m: Path(m.group(0).rstrip("/")).name or "/", text)
