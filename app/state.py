"""The page's prompt state: one immutable value that every control changes through :func:`apply`.

Why one value: the page used to keep the shown frame, the slider, the clicks and the mask in separate Gradio
states, each control updating a few of them, so a job could run with ``frame: 0`` and a mask drawn on frame 47.
Here the frame shown, its image, the prompts (stored *with the frame index they were made on*) and what Run
sends all come from one :class:`PromptState`; :func:`problems` says what keeps Run disabled and
:func:`run_prompt` is exactly what a job receives.

Rules the page explains to the user (``RULES``):
- prompts belong to the frame they were made on; the earliest prompted frame anchors the run, every later
  prompted frame is a keyframe (a correction that re-anchors the matte there);
- on one frame: an uploaded mask is the starting layer; + clicks and a box ask SAM 2 for a segment that is
  *added* to it; - clicks (when there is an uploaded mask) cut the segment under them out; brush strokes are
  applied last and always win; Undo steps back through that frame's edits, whatever their kind.

This module does no I/O and imports no Gradio: decoding frames and running SAM 2 is the caller's job
(``app/handlers.py``), which hands the results in through the actions below. ``segment`` callables are
passed in so the rules are tested without a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Literal, Union

import numpy as np

from mattepod.subjects import PALETTE

Tool = Literal["add", "remove", "box"]
RULES = ("Prompts stay on the frame they were made on: the earliest prompted frame anchors the run, later ones "
         "are keyframes. On a frame: an uploaded mask is the start, + clicks and a box add SAM 2's segment, "
         "− clicks cut it out, brush strokes win; Undo steps back through all of them.")
# segment(points [[x, y, label]], box [x0, y0, x1, y1] | None) -> float32 (H, W) mask of the image shown
Segmenter = Callable[[list, "list[float] | None"], np.ndarray]


# ---------------------------------------------------------------- values --------------------------------------

@dataclass(frozen=True)
class Media:
    """The video being prompted (probed once when it is loaded)."""

    path: str
    name: str
    width: int
    height: int
    frames: int
    fps: float
    vr_hint: str = ""  # "the name suggests VR180 (sbs)": set when the file name carries VR tokens


@dataclass(frozen=True)
class View:
    """Where the prompted image sits in the full frame (the whole frame in mono, the master eye in VR180)."""

    x: int
    y: int
    w: int
    h: int
    full_w: int
    full_h: int
    layout: str = ""  # VR180: "sbs, left eye first, equirect 180°" (what was detected), for the page


@dataclass(frozen=True, eq=False)
class Upload:
    mask: np.ndarray  # float32 (h, w) of the image shown
    name: str  # the file's own name (never a server path)
    path: str = ""  # where Gradio keeps the upload (shown again in the file box while it is active)


@dataclass(frozen=True)
class Click:
    x: float
    y: float
    label: int  # 1 subject, 0 not subject


@dataclass(frozen=True)
class Box:
    x0: float
    y0: float
    x1: float
    y1: float


@dataclass(frozen=True, eq=False)
class Stroke:
    add: np.ndarray  # bool (h, w): painted in
    sub: np.ndarray  # bool (h, w): erased


Edit = Union[Upload, Click, Box, Stroke]


@dataclass(frozen=True, eq=False)
class FramePrompt:
    """The edits made on one frame, in order, and the mask they give (None: nothing that gives a mask)."""

    edits: tuple = ()
    mask: np.ndarray | None = None
    needs_sam: bool = False  # clicks/box whose segment could not be computed here (no SAM 2 in the app)

    @property
    def clicks(self) -> list[Click]:
        return [e for e in self.edits if isinstance(e, Click)]

    @property
    def box(self) -> Box | None:
        boxes = [e for e in self.edits if isinstance(e, Box)]
        return boxes[-1] if boxes else None

    @property
    def upload(self) -> Upload | None:
        ups = [e for e in self.edits if isinstance(e, Upload)]
        return ups[-1] if ups else None

    @property
    def strokes(self) -> list[Stroke]:
        return [e for e in self.edits if isinstance(e, Stroke)]

    def source(self) -> str:
        """'upload + clicks + brush', for the page."""
        parts = []
        if self.upload:
            parts.append(f"mask {self.upload.name}")
        if self.clicks:
            parts.append("clicks")
        if self.box:
            parts.append("box")
        if self.strokes:
            parts.append("brush")
        return " + ".join(parts)


@dataclass(frozen=True, eq=False)
class PromptState:
    """Everything the Matte tab shows and Run sends. ``image`` is always the frame ``frame`` (checked)."""

    media: Media | None = None
    mode: str = "mono"
    master: str = "left"
    layout: str = "auto"
    frame: int = 0
    image: np.ndarray | None = None  # RGB of the frame (VR180: master eye) shown
    image_frame: int | None = None  # which frame ``image`` was decoded from
    view: View | None = None
    prompts: dict = field(default_factory=dict)  # frame index -> FramePrompt (never empty FramePrompts)
    tool: Tool = "add"
    corner: tuple | None = None  # first corner of a box being drawn (image pixels)
    max_frames: int = 0  # the run's max_frames option (0 = all): prompts beyond it would never be reached
    sam: bool = True  # SAM 2 can run in this app (weights present)
    message: str = ""  # the last refusal or note, one line (shown under the frame, never a server path)
    subjects: tuple = ()  # Subject values added with "Add subject" (several subjects, #16)
    refused: bool = False  # ``message`` is a refusal of the last action (the page shows it once as a toast too)
    key: str = ""  # the random name this prompt is saved under (app/persist.py), kept across every action

    @property
    def here(self) -> FramePrompt:
        return self.prompts.get(self.frame, FramePrompt())


# ---------------------------------------------------------------- actions -------------------------------------

@dataclass(frozen=True, eq=False)
class LoadVideo:
    media: Media
    image: np.ndarray  # frame 0 as shown
    view: View
    mode: str = "mono"


@dataclass(frozen=True)
class LoadFailed:
    reason: str
    refused: bool = True  # False: nothing was refused (the file box was emptied, a saved prompt was dropped)


@dataclass(frozen=True, eq=False)
class ShowFrame:
    """The frame ``index`` (already clamped and decoded by the caller) becomes the frame shown."""

    index: int
    image: np.ndarray
    view: View


@dataclass(frozen=True, eq=False)
class SetView:
    """Mode / master eye / layout changed: the image is another one, so every prompt is dropped."""

    mode: str
    master: str
    layout: str
    image: np.ndarray
    view: View


@dataclass(frozen=True)
class SetTool:
    tool: Tool


@dataclass(frozen=True)
class ClickAt:
    x: float
    y: float


@dataclass(frozen=True, eq=False)
class AddUpload:
    mask: np.ndarray | None  # None: the file was refused (``reason`` says why)
    name: str
    path: str = ""
    reason: str = ""


@dataclass(frozen=True)
class RemoveUpload:
    pass


@dataclass(frozen=True, eq=False)
class AddStroke:
    add: np.ndarray
    sub: np.ndarray


@dataclass(frozen=True)
class Undo:
    pass


@dataclass(frozen=True)
class ClearFrame:
    pass


@dataclass(frozen=True)
class SetMaxFrames:
    max_frames: int


@dataclass(frozen=True)
class SetSam:
    available: bool


@dataclass(frozen=True)
class AddSubject:
    """Several subjects (#16): the prompts made so far become one named subject (its own colour), and the
    page starts the next subject's prompts. Run sends every subject (and the prompts in progress as one more)."""


Action = Union[LoadVideo, LoadFailed, ShowFrame, SetView, SetTool, ClickAt, AddUpload, RemoveUpload, AddStroke,
               Undo, ClearFrame, SetMaxFrames, SetSam, AddSubject]


# ---------------------------------------------------------------- the one update function -------------------

def clamp_frame(state: PromptState, index: float | int | None) -> int:
    """A frame index the video has (typed values, Home/End and out-of-range numbers all land here)."""
    if state.media is None:
        return 0
    try:
        k = int(round(float(index if index is not None else 0)))
    except (TypeError, ValueError):
        k = state.frame
    return max(0, min(k, state.media.frames - 1))


def apply(state: PromptState, action: Action, segment: Segmenter | None = None) -> PromptState:
    """The next state after ``action``. ``segment`` runs SAM 2 on the image shown (None: not available)."""
    st = replace(state, message="", refused=False)
    if isinstance(action, LoadVideo):
        return PromptState(media=action.media, mode=action.mode, master=state.master, layout=state.layout,
                           frame=0, image=action.image, image_frame=0, view=action.view, tool=state.tool,
                           max_frames=state.max_frames, sam=state.sam, message=action.media.vr_hint,
                           key=state.key)
    if isinstance(action, LoadFailed):
        # nothing of the previous video stays active: Run must not start a job on it
        return PromptState(mode=state.mode, master=state.master, layout=state.layout, tool=state.tool,
                           max_frames=state.max_frames, sam=state.sam, message=action.reason,
                           refused=action.refused, key=state.key)
    if isinstance(action, SetMaxFrames):
        return replace(st, max_frames=max(0, int(action.max_frames or 0)))
    if isinstance(action, SetSam):
        st = replace(st, sam=action.available)
        return _recompute_all(st, segment if action.available else None)
    if isinstance(action, SetTool):
        return replace(st, tool=action.tool, corner=None)
    if st.media is None:
        return _refuse(st, "load a video first")
    if isinstance(action, ShowFrame):
        k = clamp_frame(st, action.index)
        return replace(st, frame=k, image=action.image, image_frame=k, view=action.view, corner=None)
    if isinstance(action, SetView):
        dropped = bool(st.prompts or st.subjects)
        return replace(st, mode=action.mode, master=action.master, layout=action.layout, image=action.image,
                       image_frame=st.frame, view=action.view, prompts={}, corner=None, subjects=(),
                       message="prompts cleared: the view changed" if dropped else "")
    if isinstance(action, AddSubject):
        try:
            frames = tuple(run_prompt(replace(st, subjects=())))
        except ValueError as err:
            return _refuse(st, f"cannot add this subject yet: {err}")
        n = len(st.subjects)
        sub = Subject(f"subject{n + 1}", PALETTE[n % len(PALETTE)], frames)
        return replace(st, subjects=(*st.subjects, sub), prompts={}, corner=None,
                       message=f"{sub.name} added: prompt the next subject (on any frame), or Run")
    if isinstance(action, ClickAt):
        return _click(st, action, segment)
    if isinstance(action, AddUpload):
        fp = FramePrompt(tuple(e for e in st.here.edits if not isinstance(e, Upload)))
        if action.mask is None:  # refused: the old upload goes too (the file box is emptied to match)
            return _set_frame_prompt(_refuse(st, action.reason), fp, segment)
        up = Upload(np.asarray(action.mask, np.float32), action.name, action.path)
        return _set_frame_prompt(st, replace(fp, edits=(up, *fp.edits)), segment)
    if isinstance(action, RemoveUpload):
        return _set_frame_prompt(st, FramePrompt(tuple(e for e in st.here.edits if not isinstance(e, Upload))),
                                 segment)
    if isinstance(action, AddStroke):
        stroke = Stroke(np.asarray(action.add, bool), np.asarray(action.sub, bool))
        if not (stroke.add.any() or stroke.sub.any()):
            return _refuse(st, "nothing painted: paint green to add, red to erase")
        return _set_frame_prompt(st, FramePrompt((*st.here.edits, stroke)), segment)
    if isinstance(action, Undo):
        if st.corner is not None:
            return replace(st, corner=None)
        if not st.here.edits:
            return replace(st, message="nothing to undo on this frame")
        return _set_frame_prompt(st, FramePrompt(st.here.edits[:-1]), segment)
    if isinstance(action, ClearFrame):
        return _set_frame_prompt(replace(st, corner=None), FramePrompt(), segment)
    raise TypeError(f"unknown action {action!r}")


def _refuse(st: PromptState, reason: str) -> PromptState:
    return replace(st, message=reason, refused=True)


def _click(st: PromptState, action: ClickAt, segment: Segmenter | None) -> PromptState:
    h, w = st.image.shape[:2]
    x, y = float(action.x), float(action.y)
    if not (0 <= x < w and 0 <= y < h):
        return _refuse(st, f"the click at {x:.0f},{y:.0f} is outside the frame ({w}×{h}): click on the image")
    if st.tool == "box":
        if st.corner is None:
            return replace(st, corner=(x, y), message="box: now click the opposite corner")
        (x0, y0), st = st.corner, replace(st, corner=None)
        if abs(x - x0) < 2 or abs(y - y0) < 2:
            return _refuse(st, "the box is too small: click two opposite corners of the subject")
        box = Box(min(x0, x), min(y0, y), max(x0, x), max(y0, y))
        edits = tuple(e for e in st.here.edits if not isinstance(e, Box))  # one box per frame
        return _set_frame_prompt(st, FramePrompt((*edits, box)), segment)
    click = Click(x, y, 1 if st.tool == "add" else 0)
    return _set_frame_prompt(st, FramePrompt((*st.here.edits, click)), segment)


def _set_frame_prompt(st: PromptState, fp: FramePrompt, segment: Segmenter | None) -> PromptState:
    prompts = dict(st.prompts)
    fp = evaluate(fp, st.image.shape[:2], segment if st.sam else None)
    if fp.edits:
        prompts[st.frame] = fp
    else:
        prompts.pop(st.frame, None)
    return replace(st, prompts=prompts)


def _recompute_all(st: PromptState, segment: Segmenter | None) -> PromptState:
    """Only the shown frame's segment can be recomputed (SAM 2 sees that image); others keep theirs."""
    if st.media is None or st.image is None or st.frame not in st.prompts:
        return st
    return _set_frame_prompt(st, st.prompts[st.frame], segment)


def evaluate(fp: FramePrompt, shape: tuple[int, int], segment: Segmenter | None) -> FramePrompt:
    """The mask of one frame's edits, by the rules in the module docstring."""
    h, w = shape
    up = fp.upload
    clicks, box = fp.clicks, fp.box
    mask: np.ndarray | None = None if up is None else (up.mask >= 0.5)
    needs_sam = False
    if clicks or box:
        if segment is None:
            needs_sam = True
        else:
            pts = [[c.x, c.y, c.label] for c in clicks]
            b = [box.x0, box.y0, box.x1, box.y1] if box else None
            if mask is None:
                mask = segment(pts, b) >= 0.5 if (any(c.label for c in clicks) or box) else None
            else:
                if any(c.label for c in clicks) or box:
                    mask = mask | (segment(pts, b) >= 0.5)
                for c in clicks:
                    if c.label == 0:
                        mask = mask & ~(segment([[c.x, c.y, 1]], None) >= 0.5)
    for s in fp.strokes:
        mask = np.zeros((h, w), bool) if mask is None else mask.copy()
        mask |= s.add
        mask &= ~s.sub
    return replace(fp, mask=None if mask is None else mask.astype(np.float32), needs_sam=needs_sam)


# ---------------------------------------------------------------- reading the state ---------------------------

def consistent(state: PromptState) -> bool:
    """The invariant every action keeps: the image is the frame shown, every prompt is on a real frame."""
    if state.media is None:
        return state.image is None and not state.prompts
    ok = state.image_frame == state.frame and 0 <= state.frame < state.media.frames and state.image is not None
    for k, fp in state.prompts.items():
        ok = ok and 0 <= k < state.media.frames and bool(fp.edits)
        if fp.mask is not None:
            ok = ok and fp.mask.shape == (state.view.h, state.view.w)
    return ok


def problems(state: PromptState) -> list[str]:
    """Why Run is disabled (empty: it is enabled). One short line each, no server paths."""
    if state.media is None:
        return ["choose a video (upload one or pick a file from the volume)"]
    out = []
    if not state.prompts and not state.subjects:
        out.append("no prompt yet: click on the subject, draw a box, upload a mask or paint one")
    limit = state.media.frames if not state.max_frames else min(state.media.frames, state.max_frames)
    for k, fp in sorted(state.prompts.items()):
        if k >= limit:
            out.append(f"frame {k} has a prompt but the run stops after {limit} frames: raise Max frames "
                       "or clear that frame")
        if fp.needs_sam and (fp.upload is not None or fp.strokes):
            out.append(f"frame {k}: clicks can only be combined with a mask when SAM 2 runs in the page "
                       "(its weights are not here yet): remove the clicks or the mask")
        if not fp.needs_sam and (fp.mask is None or not (fp.mask >= 0.5).any()):
            out.append(f"frame {k}: the mask is empty: click on the subject (+), draw a box or paint it")
        if fp.needs_sam and not fp.clicks and fp.box is None:
            out.append(f"frame {k}: nothing to segment")
        if fp.needs_sam and fp.clicks and not any(c.label for c in fp.clicks) and fp.box is None:
            out.append(f"frame {k}: add a subject (+) click, a − click alone selects nothing")
    if state.corner is not None:
        out.append("finish the box: click its opposite corner")
    return out


@dataclass(frozen=True, eq=False)
class FrameRequest:
    """One prompted frame as a job receives it: full-frame pixels (VR180: the other eye left empty)."""

    frame: int
    mask: np.ndarray | None  # float32 (full_h, full_w)
    points: list  # [[x, y, label]] full-frame pixels (only when no mask: the job runs SAM 2)
    box: list | None


def run_prompt(state: PromptState) -> list[FrameRequest]:
    """What Run sends: the anchor first (the earliest prompted frame), then the keyframes in order.

    Raises ValueError when :func:`problems` is not empty: the page never sends a prompt it would not show.
    """
    issues = problems(state)
    if issues:
        raise ValueError(issues[0])
    v = state.view
    out = []
    for k, fp in sorted(state.prompts.items()):
        mask = None
        if fp.mask is not None and not fp.needs_sam:
            mask = np.zeros((v.full_h, v.full_w), np.float32)
            mask[v.y : v.y + v.h, v.x : v.x + v.w] = fp.mask
        points = [] if mask is not None else [[c.x + v.x, c.y + v.y, c.label] for c in fp.clicks]
        box = None
        if mask is None and fp.box is not None:
            box = [fp.box.x0 + v.x, fp.box.y0 + v.y, fp.box.x1 + v.x, fp.box.y1 + v.y]
        out.append(FrameRequest(k, mask, points, box))
    return out


def describe(state: PromptState) -> str:
    """The prompt line under the frame: what is on this frame and which frames carry prompts."""
    if state.media is None:
        return "No video loaded."
    fp = state.here
    pos = sum(1 for c in fp.clicks if c.label == 1)
    bits = [f"frame {state.frame}: {pos} subject click(s), {len(fp.clicks) - pos} not-subject click(s)"]
    if fp.box:
        bits.append("a box")
    if fp.upload:
        bits.append(f"mask {fp.upload.name}")
    if fp.strokes:
        bits.append(f"{len(fp.strokes)} brush stroke(s)")
    text = ", ".join(bits)
    if fp.mask is not None and not fp.needs_sam:
        text += f"; mask covers {100 * float((fp.mask >= 0.5).mean()):.1f}% of the frame"
    if fp.needs_sam:
        text += "; SAM 2 is not loaded here: the clicks go to the job, which turns them into a mask"
    frames = sorted(state.prompts)
    if frames:
        roles = [f"{k} (anchor)" if i == 0 else f"{k} (keyframe)" for i, k in enumerate(frames)]
        text += "\n\nPrompted frames: " + ", ".join(roles)
    return text


# ---------------------------------------------------------------- several subjects (#16) --------------------

@dataclass(frozen=True, eq=False)
class Subject:
    """A subject added with "Add subject": its name, colour and prompted frames (anchor first)."""

    name: str
    color: str
    frames: tuple  # FrameRequest


def run_subjects(state: PromptState) -> list[Subject]:
    """What Run sends with several subjects: the added ones, and the prompts in progress as one more."""
    subs = list(state.subjects)
    if state.prompts:
        frames = tuple(run_prompt(replace(state, subjects=())))
        n = len(subs)
        subs.append(Subject(f"subject{n + 1}", PALETTE[n % len(PALETTE)], frames))
    for sub in subs:
        limit = state.media.frames if not state.max_frames else min(state.media.frames, state.max_frames)
        late = [f.frame for f in sub.frames if f.frame >= limit]
        if late:
            raise ValueError(f"{sub.name}: frame {late[0]} has a prompt but the run stops after {limit} frames")
    return subs


def describe_subjects(state: PromptState) -> str:
    """The subjects line: each added subject in its colour, and the one being prompted."""
    if not state.subjects:
        return ""
    bits = [f"<span style='color:{s.color}'>■</span> {s.name} (frames {', '.join(str(f.frame) for f in s.frames)})"
            for s in state.subjects]
    return "Subjects: " + " · ".join(bits) + f" · now prompting subject{len(state.subjects) + 1}"


# ---------------------------------------------------------------- a plain record (kept across reloads) -------

RECORD_VERSION = 1


def to_record(state: PromptState) -> tuple[dict, dict[str, np.ndarray]]:
    """``state`` as JSON types plus its named masks (the state's own arrays, not copied), for ``app/persist.py``.

    The image is left out: it is the frame ``frame`` of the video and is decoded again on the way back
    (:func:`from_record`). Masks are stored as bool (``mask >= 0.5``): the rules above only ever read them
    thresholded at 0.5, so a soft uploaded mask comes back with the same meaning."""
    arrays: dict[str, np.ndarray] = {}

    def put(name: str, mask: np.ndarray | None) -> str | None:
        if mask is None:
            return None
        arrays[name] = mask
        return name

    def edit(k: int, i: int, e: Edit) -> dict:
        if isinstance(e, Upload):
            return {"kind": "upload", "mask": put(f"p{k}_e{i}_upload", e.mask), "name": e.name, "path": e.path}
        if isinstance(e, Click):
            return {"kind": "click", "x": e.x, "y": e.y, "label": e.label}
        if isinstance(e, Box):
            return {"kind": "box", "x0": e.x0, "y0": e.y0, "x1": e.x1, "y1": e.y1}
        return {"kind": "stroke", "add": put(f"p{k}_e{i}_add", e.add), "sub": put(f"p{k}_e{i}_sub", e.sub)}

    prompts = [{"frame": k, "needs_sam": fp.needs_sam, "mask": put(f"p{k}_mask", fp.mask),
                "edits": [edit(k, i, e) for i, e in enumerate(fp.edits)]} for k, fp in sorted(state.prompts.items())]
    subjects = [{"name": s.name, "color": s.color,
                 "frames": [{"frame": f.frame, "mask": put(f"s{n}_f{f.frame}_mask", f.mask),
                             "points": [list(p) for p in f.points], "box": None if f.box is None else list(f.box)}
                            for f in s.frames]}
                for n, s in enumerate(state.subjects)]
    meta = {"version": RECORD_VERSION, "key": state.key,
            "media": None if state.media is None else vars(state.media).copy(),
            "view": None if state.view is None else vars(state.view).copy(),
            "mode": state.mode, "master": state.master, "layout": state.layout, "frame": state.frame,
            "tool": state.tool, "corner": None if state.corner is None else list(state.corner),
            "max_frames": state.max_frames, "sam": state.sam, "prompts": prompts, "subjects": subjects}
    return meta, arrays


def from_record(meta: dict, arrays: dict[str, np.ndarray], image: np.ndarray | None,
                view: View | None = None) -> PromptState:
    """The state :func:`to_record` described, on ``image`` (the frame ``meta['frame']`` decoded again, in the
    ``view`` it was decoded with). Anything that does not fit -- another version, a mask of another size, a
    prompt beyond the video, a value of the wrong type -- raises ValueError: the caller starts empty."""
    try:
        return _from_record(meta, arrays, image, view)
    except (KeyError, TypeError, AttributeError, IndexError) as err:
        raise ValueError(f"the saved prompt is not readable ({type(err).__name__}: {err})") from None


def _from_record(meta: dict, arrays: dict[str, np.ndarray], image: np.ndarray | None,
                 view: View | None) -> PromptState:
    if meta.get("version") != RECORD_VERSION:
        raise ValueError(f"the saved prompt has version {meta.get('version')!r}, not {RECORD_VERSION}")
    base = dict(mode=_one_of(meta["mode"], ("mono", "vr180")), master=_one_of(meta["master"], ("left", "right")),
                layout=str(meta["layout"]), tool=_one_of(meta["tool"], ("add", "remove", "box")),
                max_frames=max(0, int(meta["max_frames"])), sam=bool(meta["sam"]), key=str(meta.get("key") or ""))
    if meta["media"] is None:
        return PromptState(**base)
    m = meta["media"]
    media = Media(str(m["path"]), str(m["name"]), int(m["width"]), int(m["height"]), int(m["frames"]),
                  float(m["fps"]), str(m.get("vr_hint") or ""))
    v = meta["view"]
    saved_view = View(int(v["x"]), int(v["y"]), int(v["w"]), int(v["h"]), int(v["full_w"]), int(v["full_h"]),
                      str(v.get("layout") or ""))
    view = view or saved_view
    if (view.w, view.h, view.full_w, view.full_h) != (saved_view.w, saved_view.h, saved_view.full_w,
                                                       saved_view.full_h):
        raise ValueError(f"the frame is {view.w}×{view.h} now, the prompt was made on {saved_view.w}×{saved_view.h}")
    if image is None or tuple(image.shape[:2]) != (view.h, view.w):
        raise ValueError("the frame image does not match the saved prompt")
    frame = int(meta["frame"])
    if not 0 <= frame < media.frames:
        raise ValueError(f"frame {frame} is beyond the video's {media.frames} frames")

    def get(name: str | None, shape: tuple[int, int]) -> np.ndarray | None:
        if name is None:
            return None
        a = np.asarray(arrays[str(name)])
        if a.dtype != bool or a.shape != shape:
            raise ValueError(f"mask {name} is {a.shape} {a.dtype}, expected {shape} bool")
        return a

    def num(value) -> float:
        x = float(value)
        if not np.isfinite(x):
            raise ValueError("a coordinate is not a number")
        return x

    shape = (view.h, view.w)
    prompts = {}
    for p in meta["prompts"]:
        k = int(p["frame"])
        if not 0 <= k < media.frames or k in prompts:
            raise ValueError(f"a prompt on frame {k} does not fit the video")
        edits: list = []
        for e in p["edits"]:
            kind = e["kind"]
            if kind == "upload":
                edits.append(Upload(get(e["mask"], shape).astype(np.float32), str(e["name"]), str(e.get("path") or "")))
            elif kind == "click":
                edits.append(Click(num(e["x"]), num(e["y"]), 1 if int(e["label"]) else 0))
            elif kind == "box":
                edits.append(Box(num(e["x0"]), num(e["y0"]), num(e["x1"]), num(e["y1"])))
            elif kind == "stroke":
                edits.append(Stroke(get(e["add"], shape), get(e["sub"], shape)))
            else:
                raise ValueError(f"unknown edit {kind!r}")
        if not edits:
            raise ValueError(f"frame {k} has no edits")
        mask = get(p["mask"], shape)
        prompts[k] = FramePrompt(tuple(edits), None if mask is None else mask.astype(np.float32),
                                 bool(p["needs_sam"]))
    full = (view.full_h, view.full_w)
    subjects = []
    for s in meta["subjects"]:
        frames = []
        for f in s["frames"]:
            mask = get(f["mask"], full)
            box = f["box"]
            frames.append(FrameRequest(int(f["frame"]), None if mask is None else mask.astype(np.float32),
                                       [[num(x), num(y), 1 if int(lab) else 0] for x, y, lab in f["points"]],
                                       None if box is None else [num(b) for b in box][:4]))
        if not frames:
            raise ValueError("a subject has no frames")
        subjects.append(Subject(str(s["name"]), str(s["color"]), tuple(frames)))
    corner = meta.get("corner")
    return PromptState(media=media, frame=frame, image=image, image_frame=frame, view=view, prompts=prompts,
                       corner=None if corner is None else (num(corner[0]), num(corner[1])),
                       subjects=tuple(subjects), **base)


def _one_of(value, allowed: tuple) -> str:
    if value not in allowed:
        raise ValueError(f"{value!r} is not one of {allowed}")
    return value
