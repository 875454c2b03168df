"""Preview: the matte on a few frames after the prompt, from a short low-resolution run, before a long one.

Why a real run and not a sketch of one: a preview must show what Run will do, so it is the same prompt
(``app.state.run_prompt`` / ``run_subjects``: anchor, keyframes, subjects), the same engine and options, through
the same front door and job layer -- only shorter and smaller:

- it starts *at* the anchor frame (``start_frame``), so there is no backward pass, and covers the next
  ``SECONDS`` of video (at least ``MIN_FRAMES``, at most ``MAX_FRAMES``, never past the video or Max frames);
  keyframes inside that span are kept, later ones (and subjects whose own anchor lies later) are left out
  and named;
- the matting size is capped at ``MAX_SIZE`` pixels on the short side (``engine.max_size``), it writes no video
  (``outputs.formats: []``), only the pipeline's own preview PNGs on ``SHOWN`` frames spread over the span;
- on the CPU the span is ``CPU_SECONDS`` at ``CPU_MAX_SIZE``: MatAnyone there runs at ~0.2 fps at 384x682 on
  a busy 2-core box (75 frames took 7.5 minutes), so 2.5 s of video would be no preview at all;
- it runs in its own folder ``<output>/.previews/`` with its own one-slot queue: it never waits behind a long
  job, never shows up in the Jobs list or the volume listing, never touches a real run folder. A browser
  keeps only its latest preview (the one before is stopped and deleted) and at most ``KEEP`` preview folders
  are kept in all; what an earlier app process left is removed at start.

What the page shows is tied to the prompt it was made for (:func:`prompt_key`): when the prompt or an option
that changes the matte moves on, the preview is marked stale, never shown as current.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import threading
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from app import state as st
from mattepod import jobs
from mattepod.errors import MattePodError

log = logging.getLogger("mattepod.app")

PREVIEW_DIR = ".previews"  # inside the output folder; dot folders are never listed as jobs or inputs
SECONDS = 2.5  # how much video after the prompt frame a preview covers
MIN_FRAMES, MAX_FRAMES = 8, 150
SHOWN = 4  # frames shown in the gallery (the pipeline's preview PNGs: first, last and evenly between)
MAX_SIZE = 384  # matting size cap, short side in pixels (engine.max_size)
CPU_SECONDS, CPU_MAX_SIZE = 1.0, 256  # the same on the CPU, where MatAnyone is ~100x slower than on a GPU
THUMB_WIDTH = 480  # gallery images are written at most this wide
KEEP = 8  # preview folders kept in all (each browser keeps its latest)
# options that change the matte a preview shows (the others -- formats, colour -- do not)
MATTE_KEYS = ("engine.name", "engine.erode", "engine.dilate", "engine.warmup", "engine.max_size", "scale",
              "max_frames", "prompt.sam2_model", "stereo.mode", "stereo.master", "stereo.layout")


# ---------------------------------------------------------------- what a preview runs ------------------------

@dataclass(frozen=True, eq=False)
class Plan:
    """One preview: the span of frames, the prompt shifted to it, the options, and what was left out."""

    start: int  # first frame (the anchor), in frames of the video
    count: int  # frames in the span
    shown: tuple  # frames of the video the gallery shows
    frames: tuple  # FrameRequest, frame numbers relative to ``start`` (single prompt)
    subjects: tuple  # Subject with relative frames (several subjects); () for the single prompt
    overrides: dict = field(default_factory=dict)
    left_out: tuple = ()  # one short line each: keyframes / subjects after the span


def span_length(fps: float, cpu: bool = False) -> int:
    seconds = CPU_SECONDS if cpu else SECONDS
    return max(MIN_FRAMES, min(MAX_FRAMES, int(round(seconds * (fps or 25.0)))))


def shown_frames(count: int, n: int = SHOWN) -> list[int]:
    """The offsets the pipeline writes preview PNGs for (``run._preview_frames``: first, last, evenly)."""
    return sorted({int(round(x)) for x in np.linspace(0, count - 1, num=min(n, count))})


def plan(ps: st.PromptState, overrides: dict[str, Any], cpu: bool = False) -> Plan:
    """What a preview of this page runs (``cpu``: the engine runs on the CPU: shorter and smaller). Raises
    ValueError exactly when Run would refuse (same checks)."""
    if ps.media is None:
        raise ValueError("choose a video first (upload one or pick a file from the volume)")
    limit_ps = replace(ps, max_frames=int(overrides.get("max_frames") or 0))
    if ps.subjects:
        subs = st.run_subjects(limit_ps)
        start = min(s.frames[0].frame for s in subs)
    else:
        frames = st.run_prompt(limit_ps)
        start = frames[0].frame
    limit = ps.media.frames if not limit_ps.max_frames else min(ps.media.frames, limit_ps.max_frames)
    count = max(1, min(span_length(ps.media.fps, cpu), limit - start))
    end = start + count

    def shift(reqs, who: str = "") -> tuple[tuple, list[str]]:
        kept = tuple(replace(f, frame=f.frame - start) for f in reqs if f.frame < end)
        late = [f.frame for f in reqs if f.frame >= end]
        notes = [f"{who}keyframe {k} is after the preview span (frames {start}–{end - 1})" for k in late]
        return kept, notes

    left: list[str] = []
    subjects: tuple = ()
    single: tuple = ()
    if ps.subjects:
        out = []
        for sub in subs:
            if sub.frames[0].frame >= end:
                left.append(f"{sub.name} starts on frame {sub.frames[0].frame}, after the preview span")
                continue
            kept, notes = shift(sub.frames, f"{sub.name}: ")
            out.append(replace(sub, frames=kept))
            left += notes
        subjects = tuple(out)
    else:
        single, left = shift(frames)
    o = dict(overrides)
    size, cap = int(o.get("engine.max_size") or -1), CPU_MAX_SIZE if cpu else MAX_SIZE
    o.update({"start_frame": start, "max_frames": count, "outputs.formats": [], "outputs.previews": SHOWN,
              "engine.max_size": cap if size <= 0 else min(size, cap), "quality.gt": None})
    return Plan(start, count, tuple(start + i for i in shown_frames(count)), single, subjects, o, tuple(left))


# ---------------------------------------------------------------- is a preview still current? ----------------

_DIGESTS: dict[int, tuple[weakref.ref, bytes]] = {}
_DIGEST_LOCK = threading.Lock()


def _digest(mask: np.ndarray | None) -> bytes:
    """A mask's fingerprint, computed once per array (prompt masks are immutable values of the state)."""
    if mask is None:
        return b"-"
    with _DIGEST_LOCK:
        hit = _DIGESTS.get(id(mask))
        if hit is not None and hit[0]() is mask:
            return hit[1]
    h = hashlib.blake2b(repr(np.shape(mask)).encode(), digest_size=12)
    h.update(np.packbits(np.asarray(mask) >= 0.5).tobytes())
    d = h.digest()
    with _DIGEST_LOCK:
        if len(_DIGESTS) > 256:
            for k in [k for k, (ref, _) in _DIGESTS.items() if ref() is None]:
                del _DIGESTS[k]
        try:
            _DIGESTS[id(mask)] = (weakref.ref(mask), d)
        except TypeError:  # not weak-referenceable: just not cached
            pass
    return d


def prompt_key(ps: st.PromptState) -> str:
    """A fingerprint of everything in the page that changes what Run (and so a preview) sends: the video, the
    view, Max frames, each prompted frame's clicks, box and mask, the added subjects. Cheap: masks are hashed
    once each."""
    if ps.media is None:
        return ""
    h = hashlib.blake2b(digest_size=12)
    v = ps.view
    h.update(repr((ps.media.path, ps.mode, ps.master, ps.layout, ps.max_frames,
                   None if v is None else (v.x, v.y, v.w, v.h))).encode())
    for k, fp in sorted(ps.prompts.items()):
        b = fp.box
        h.update(repr((k, [(c.x, c.y, c.label) for c in fp.clicks],
                       None if b is None else (b.x0, b.y0, b.x1, b.y1), fp.needs_sam)).encode())
        h.update(_digest(fp.mask))
    for sub in ps.subjects:
        h.update(repr((sub.name, sub.color)).encode())
        for f in sub.frames:
            h.update(repr((f.frame, f.points, f.box)).encode())
            h.update(_digest(f.mask))
    return h.hexdigest()


def options_key(overrides: dict[str, Any]) -> str:
    return repr([(k, overrides.get(k)) for k in MATTE_KEYS])


# ---------------------------------------------------------------- the preview queue ------------------------

class Previews:
    """The previews of one app: a one-slot queue of its own over ``<output>/.previews/``."""

    def __init__(self, output: Path, kill_grace: float = 3.0):
        self.root = Path(output) / PREVIEW_DIR
        self.root.mkdir(parents=True, exist_ok=True)
        self._clear_leftovers()
        self.manager = jobs.JobManager(self.root, max_running=1, recover=False, kill_grace=kill_grace)
        self._lock = threading.Lock()

    def _clear_leftovers(self) -> None:
        """Previews of an earlier app process are of no use to anyone now: removed (a live one is let be)."""
        for run in self.root.iterdir():
            if run.is_dir() and jobs.read_job(run).status not in (jobs.RUNNING, jobs.QUEUED):
                shutil.rmtree(run, ignore_errors=True)

    def retire(self, job_id: str | None) -> None:
        """Stop a preview that was replaced and delete its folder (in the background: stopping takes a moment)."""
        if not job_id:
            return

        def work() -> None:
            try:
                info = self.manager.status(job_id)
                if info.status in (jobs.QUEUED, jobs.RUNNING):
                    self.manager.cancel(job_id, wait=True)
                self.manager.delete(job_id)
            except MattePodError as err:
                log.info("preview %s not removed: %s", job_id, err)

        threading.Thread(target=work, name=f"retire-{job_id}", daemon=True).start()

    def prune(self, keep: str) -> None:
        """At most ``KEEP`` preview folders: the oldest finished ones go (never ``keep``, never a live one)."""
        with self._lock:
            done = [j for j in self.manager.list_jobs() if j.status in jobs.FINAL and j.id != keep]
            for j in done[max(0, KEEP - 1):]:
                try:
                    self.manager.delete(j.id)
                except MattePodError:
                    continue


_SERVICES: dict[str, Previews] = {}
_SERVICES_LOCK = threading.Lock()


def service(output: Path) -> Previews:
    """The one preview queue of an output folder (created on first use)."""
    key = str(Path(output).resolve())
    with _SERVICES_LOCK:
        if key not in _SERVICES:
            _SERVICES[key] = Previews(Path(key))
        return _SERVICES[key]


# ---------------------------------------------------------------- the gallery -------------------------------

def overlay_alpha(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The frame with the matte tinted green (soft: the tint follows alpha) and its 0.5 contour in white, as
    the prompt frame shows its mask."""
    a = np.clip(alpha.astype(np.float32), 0, 1)[..., None]
    out = image.astype(np.float32) * (1 - 0.55 * a) + np.array([40, 220, 90], np.float32) * (0.55 * a)
    out = out.astype(np.uint8)
    m = (alpha >= 0.5).astype(np.uint8)
    edges = cv2.morphologyEx(m, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    out[edges] = (255, 255, 255)
    return out


def gallery(run_dir: Path, input_path: str, start: int, subjects: bool) -> list[tuple[str, str]]:
    """(image, caption) for each preview frame of a finished preview run, written once into its folder:
    the matte over the source frame (several subjects: the pipeline's own subject-colour picture)."""
    from mattepod.media.probe import probe
    from mattepod.media.reader import read_frame

    prev = run_dir / "previews"
    items = []
    info = None
    for alpha_png in sorted(prev.glob("alpha_*.png")):
        if not re.fullmatch(r"alpha_\d{6}", alpha_png.stem):
            continue  # a subject's own alpha (alpha_<name>_NNNNNN)
        i = int(alpha_png.stem[-6:])
        k = start + i
        thumb = run_dir / f"overlay_{k:06d}.png"
        if not thumb.is_file():
            if subjects:
                pic = cv2.imread(str(prev / f"subjects_{i:06d}.png"), cv2.IMREAD_COLOR)
            else:
                info = info or probe(input_path)
                alpha = cv2.imread(str(alpha_png), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255
                frame = read_frame(info, k)
                if frame.shape[:2] != alpha.shape:
                    alpha = cv2.resize(alpha, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_LINEAR)
                pic = cv2.cvtColor(overlay_alpha(frame, alpha), cv2.COLOR_RGB2BGR)
            if pic is None:
                continue
            h, w = pic.shape[:2]
            if w > THUMB_WIDTH:
                pic = cv2.resize(pic, (THUMB_WIDTH, max(1, round(h * THUMB_WIDTH / w))), interpolation=cv2.INTER_AREA)
            tmp = thumb.with_name(thumb.stem + ".tmp.png")
            cv2.imwrite(str(tmp), pic)
            tmp.replace(thumb)
        items.append((str(thumb), f"frame {k}"))
    return items
