"""Several subjects in one engine: a matte per subject, one pass over the video.

Each subject keeps its own memory and state (its own ``InferenceCore`` for MatAnyone, exactly as a
separate single-subject engine would), and subjects start, re-anchor on keyframes and resume on their
own. What they share is the frame: per frame the image encoder (ResNet-50 + key projection, the
biggest cost) runs **once** for all subjects, and the subjects whose states are *in phase* (same frame
counters and memory layout: all subjects prompted on the same frame, the normal case) are stepped as
one batch along the batch axis (readout, uncertainty gate, fusion, object transformer, decoder, mask
encoder), then split back. Subjects out of phase (started or re-anchored on another frame) share the
encoder pass only. Batch rows never mix, so with the exclusion off every subject's alpha equals a
separate single-subject run to float rounding (tests/test_subjects.py).

**Mutual exclusion** (``exclusive``, on by default): two subjects should never both claim a pixel.
Where the subjects' alphas add up to more than 1 each is divided by the sum (soft: a pixel owned by one
subject is untouched; one claimed 0.8 + 0.6 becomes 0.57 + 0.43). On the batched MatAnyone path this
happens between the decoder and the memory update, so each subject *remembers* the shared pixel as
only partly its own, which keeps mattes from leaking into a neighbour over time; on a frame where a
subject is (re-)prompted, its prompt chain stays as given and the exclusion applies to the outputs.

Engines without a shared network (``MaskFollowEngine``, a ``StereoEngine`` per subject for VR180)
run one engine per subject, stepped one after the other, with the exclusion on the outputs.

Frames are uint8 RGB (H, W, 3); masks float32 (H, W) in [0, 1]; ``step`` returns float32 (S, H, W),
a subject not yet started has an all-zero alpha (the pipeline fills frames before a subject's prompt
from its backward pass).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

STATE_VERSION = 1
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
ID_MIN_ALPHA = 0.5  # an ID map pixel belongs to a subject when its largest alpha is at least this


def check_name(name: str) -> str:
    """Subject names become file names (``<stem>_<name>_alpha.mp4``): letters, digits, ``_``, ``-``."""
    if not NAME_RE.fullmatch(name):
        raise ValueError(f"subject name {name!r} must be 1-32 letters, digits, '_' or '-' (starting with a "
                         "letter or digit)")
    return name


# ---------------------------------------------------------------------------------------------
# config -> one plan per subject

PALETTE = ("#FF4040", "#40A0FF", "#40D060", "#FFC020", "#C060FF", "#20D0D0", "#FF80C0", "#A0A0A0")


@dataclass
class SubjectPlan:
    """A subject as the run sees it: its prompt, its keyframes (by frame) and its colour."""

    name: str
    prompt: Any  # prompts.PromptSpec
    keyframes: dict[int, Any]
    color: str


def plans_from_config(cfg: Any) -> list[SubjectPlan]:
    """``prompt.subjects`` (a ``PromptConfig``) as plans. Subjects share the prompt's ``normalized``,
    ``sam2_model`` and ``person_min_score``; ``auto_person`` picks the ``person_rank``-th largest person."""
    from mattepod.prompts import PromptSpec

    out = []
    for i, s in enumerate(cfg.subjects):
        person = {"person_select": "rank", "person_count": s.person_rank, "person_min_score": cfg.person_min_score}
        main = PromptSpec(frame=cfg.frame if s.frame is None else s.frame, points=[(p.x, p.y, p.label) for p in s.points],
                          box=tuple(s.box) if s.box is not None else None, mask=s.mask, normalized=cfg.normalized,
                          auto_person=s.auto_person, **person)
        keys = {k.frame: PromptSpec(frame=k.frame, points=[(p.x, p.y, p.label) for p in k.points],
                                    box=tuple(k.box) if k.box is not None else None, mask=k.mask,
                                    normalized=cfg.normalized, auto_person=k.auto_person, keyframe=True, **person)
                for k in s.keyframes}
        out.append(SubjectPlan(s.name, main, dict(sorted(keys.items())), s.color or PALETTE[i % len(PALETTE)]))
    return out


SUBJECT_ARG_HELP = ('NAME[@FRAME]:points=x,y,l;x,y,l | box=x0,y0,x1,y1 | mask=FILE | person=RANK '
                    '[:color=#RRGGBB]; the first flag of a NAME is its prompt, later ones (@FRAME) its keyframes')


def parse_subject_args(items: Sequence[str]) -> list[dict[str, Any]]:
    """``--subject`` flags -> ``prompt.subjects`` entries (see ``SUBJECT_ARG_HELP``). ``points`` and
    ``box`` may be combined (``a:box=...:points=...``); ``mask=`` takes the rest of the flag as the path."""
    from mattepod.errors import ConfigError
    from mattepod.request import parse_box, parse_points

    fix = 'write --subject "alice:points=640,360,1" or --subject "bob@40:mask=bob40.png"'
    subjects: dict[str, dict[str, Any]] = {}
    for item in items:
        head, sep, rest = item.partition(":")
        name, at, frame_txt = head.partition("@")
        if not sep or not rest:
            raise ConfigError(f"--subject {item!r} has no prompt after NAME:", fix)
        try:
            check_name(name)
            frame = int(frame_txt) if at else None
            if frame is not None and frame < 0:
                raise ValueError(f"frame {frame} is negative")
        except ValueError as exc:
            raise ConfigError(f"--subject {item!r}: {exc}", fix) from None
        entry: dict[str, Any] = {}
        color = None
        while rest:
            kind, eq, value = rest.partition("=")
            if not eq:
                raise ConfigError(f"--subject {item!r}: {kind!r} is not KIND=VALUE", fix)
            if kind == "mask":
                entry["mask"], rest = value, ""
                continue
            value, _, rest = value.partition(":")
            if kind == "points":
                entry["points"] = parse_points(value, f"--subject {name} points")
            elif kind == "box":
                entry["box"] = parse_box(value, f"--subject {name} box")
            elif kind == "person":
                if not value.isdigit() or int(value) < 1:
                    raise ConfigError(f"--subject {item!r}: person={value} is not a rank 1, 2, ...", fix)
                entry["auto_person"] = True
                if int(value) > 1 or name not in subjects:
                    entry["person_rank"] = int(value)
            elif kind == "color":
                color = value
            else:
                raise ConfigError(f"--subject {item!r}: unknown {kind!r}", "use points=, box=, mask=, person=, color=")
        if name not in subjects:
            subjects[name] = {"name": name, **({"frame": frame} if frame is not None else {}), **entry,
                              **({"color": color} if color else {})}
        else:
            if frame is None:
                raise ConfigError(f"--subject {item!r}: {name} already has its prompt; a keyframe needs @FRAME", fix)
            entry.pop("person_rank", None)  # keyframes share the subject's person selection
            subjects[name].setdefault("keyframes", []).append({"frame": frame, **entry})
    return list(subjects.values())


def person_subjects(count: int) -> list[dict[str, Any]]:
    """``--auto-person --person-count N``: person1..N, the largest detected person first."""
    return [{"name": f"person{i}", "auto_person": True, "person_rank": i} for i in range(1, count + 1)]


# ---------------------------------------------------------------------------------------------
# alphas of several subjects -> exclusion, union, ID map (numpy; the pipeline's outputs use these)

def exclude(alphas: np.ndarray) -> np.ndarray:
    """(S, H, W): where the subjects' alphas add up to more than 1, divide each by the sum."""
    total = alphas.sum(0, keepdims=True, dtype=np.float32)
    return (alphas / np.maximum(total, 1.0)).astype(np.float32)


def union(alphas: np.ndarray) -> np.ndarray:
    """(S, H, W) -> (H, W): the matte of all subjects together, ``min(1, sum)`` (with the exclusion
    on the sum never exceeds 1, so this is exactly the sum)."""
    return np.minimum(alphas.sum(0, dtype=np.float32), 1.0)


def id_map(alphas: np.ndarray, min_alpha: float = ID_MIN_ALPHA) -> np.ndarray:
    """(S, H, W) -> uint8 (H, W): 1 + the index of the subject with the largest alpha, 0 where no
    subject reaches ``min_alpha`` (background). Ties go to the first subject."""
    if alphas.shape[0] > 255:
        raise ValueError("an ID map holds at most 255 subjects")
    best = alphas.argmax(0)
    return np.where(alphas.max(0) >= min_alpha, best + 1, 0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# MatAnyone cores: one encoder pass, in-phase subjects as one batch

def _cat(ts: list) -> Any:
    import torch

    return None if ts[0] is None else torch.cat(ts, 0)


_TENSORS = ("sensory", "obj_mem", "last_mask", "last_pix_feat", "last_msk_value")


def merge_states(states: list, max_mem_frames: int):
    """One batch-of-n state from n in-phase states (row i = state i)."""
    from mattepod.matanyone.memory import StreamState, WorkingMemory

    mems = [s.memory for s in states]
    mem = WorkingMemory(max_mem_frames, _cat([m.key for m in mems]), _cat([m.shrinkage for m in mems]),
                        _cat([m.value for m in mems]), mems[0].perm_tokens, mems[0].frame_tokens)
    return StreamState(mem, *(_cat([getattr(s, n) for s in states]) for n in _TENSORS),
                       states[0].curr_ti, states[0].last_mem_ti)


def _batch_core(lead, n: int):
    """A core on the lead's network for a batch of n rows; the readout block is split per row so the
    similarity block of the batch stays that of one subject."""
    import dataclasses

    from mattepod.matanyone.core import InferenceCore

    cfg = dataclasses.replace(lead.cfg, block_elements=max(1, lead.cfg.block_elements // n))
    core = InferenceCore(lead.net, cfg, autocast_dtype=lead.autocast_dtype)
    core.pad = lead.pad
    return core


def _rows(f, n: int):
    """The features of one frame as a batch of n identical rows (views, no copies)."""
    from mattepod.matanyone.core import _Feats

    def rep(t):
        return t.expand(n, *t.shape[1:]).contiguous()

    return _Feats(rep(f.image), tuple(rep(t) for t in f.ms), rep(f.pix_feat), rep(f.key), rep(f.shrinkage),
                  rep(f.selection))


def _phase_groups(cores: list, idx: list[int]) -> list[list[int]]:
    from mattepod.matanyone.pair import in_phase

    groups: list[list[int]] = []
    for i in idx:
        for g in groups:
            if in_phase(cores[g[0]], cores[i]):
                g.append(i)
                break
        else:
            groups.append([i])
    return groups


def step_cores(cores: Sequence, image, masks255: Sequence, warmup: int, exclusive: bool) -> list:
    """One frame for every subject's core: ``masks255[i]`` (0..255, internal size) (re-)starts core i
    with the prompt chain, ``None`` steps it when it has started (else its alpha is ``None``).

    The image encoder runs once; in-phase stepping cores and all starting cores each run as one batch.
    Returns per core the internal-size alpha (H, W) or None. With ``exclusive`` the stepping cores'
    alphas are normalised where they overlap before they enter memory."""
    from mattepod.matanyone.core import pad_amounts
    from mattepod.matanyone.pair import split_state

    lead = cores[0]
    for c in cores[1:]:
        if c.net is not lead.net or vars(c.cfg) != vars(lead.cfg) or c.autocast_dtype != lead.autocast_dtype:
            raise ValueError("the subjects' cores must share one network and configuration")
    n_mem = lead.cfg.max_mem_frames
    pad = pad_amounts(*image.shape[-2:])
    starting = [i for i, m in enumerate(masks255) if m is not None]
    stepping = [i for i, m in enumerate(masks255) if m is None and cores[i].state.memory.key is not None]
    for i in stepping:
        if cores[i].pad != pad:
            raise ValueError("frame size changed mid-stream; start the subjects again")
    out: list = [None] * len(cores)
    enc = _batch_core(lead, 1)
    with lead._ctx():
        f = enc._encode(image)
        # stepping subjects: predict per phase group, exclusion, then memory
        groups = _phase_groups(list(cores), stepping)
        merged, feats, alphas = [], [], []
        for g in groups:
            core = cores[g[0]] if len(g) == 1 else _batch_core(cores[g[0]], len(g))
            if len(g) > 1:
                core.state = merge_states([cores[i].state for i in g], n_mem)
            fg = f if len(g) == 1 else _rows(f, len(g))
            merged.append(core)
            feats.append(fg)
            alphas.append(core._predict(fg))
        if exclusive and len(stepping) > 1:
            import torch

            total = torch.cat(alphas, 0).sum(0, keepdim=True)
            alphas = [a / total.clamp(min=1.0) for a in alphas]
        for g, core, fg, a in zip(groups, merged, feats, alphas):
            core._remember(fg, a)
            res = core._output(a)
            if len(g) == 1:
                out[g[0]] = res
                continue
            for row, i in enumerate(g):
                cores[i].state = split_state(core.state, row, n_mem)
                cores[i].pad = pad
                out[i] = res[row]
        # starting subjects: one batch through the prompt chain (their states restart, so in phase)
        if starting:
            import torch

            core = _batch_core(lead, len(starting))
            core.pad = pad
            fs = f if len(starting) == 1 else _rows(f, len(starting))
            res = core._start_chain(fs, torch.stack([masks255[i] for i in starting]), warmup)
            for row, i in enumerate(starting):
                cores[i].state = split_state(core.state, row, n_mem)
                cores[i].pad = pad
                out[i] = res if len(starting) == 1 else res[row]
    return out


# ---------------------------------------------------------------------------------------------
# the engine

@dataclass
class SubjectsEngine:
    """Named subjects, each with its own engine; see the module docstring.

    ``engines`` are ``MatAnyoneEngine`` twins on one network (batched path) or any ``Engine`` objects
    (one after the other). ``scale`` < 1 mattes at that fraction of the frame size."""

    names: list[str]
    engines: list[Any]
    exclusive: bool = True
    scale: float = 1.0

    name = "subjects"

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("at least one subject is needed")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"subject names repeat: {self.names}")
        for n in self.names:
            check_name(n)
        if len(self.engines) != len(self.names):
            raise ValueError("one engine per subject")
        self.started = [False] * len(self.names)
        self.batched = _shares_network(self.engines)

    @classmethod
    def build(cls, factory: Callable[[], Any], names: Sequence[str], exclusive: bool = True,
              scale: float = 1.0) -> "SubjectsEngine":
        """One engine from ``factory``; MatAnyone's twins share its network (one copy of the weights)."""
        first = factory()
        if hasattr(first, "twin"):
            engines = [first] + [first.twin() for _ in names[1:]]
        else:
            engines = [first] + [factory() for _ in names[1:]]
        return cls(list(names), engines, exclusive, scale)

    def reset(self) -> None:
        """Every subject back to not started (its next mask starts it afresh)."""
        self.started = [False] * len(self.names)

    # -------------------------------------------------------------- stepping
    def step(self, frame: np.ndarray, masks: Mapping[str, np.ndarray | None] | None = None) -> np.ndarray:
        """Alphas (S, H, W) of one frame. ``masks[name]`` (re-)anchors that subject on this frame (its
        prompt or a keyframe); subjects that have not started yet give zeros."""
        masks = dict(masks or {})
        unknown = set(masks) - set(self.names)
        if unknown:
            raise KeyError(f"unknown subjects {sorted(unknown)} (known: {self.names})")
        h, w = frame.shape[:2]
        small = self._down(frame, True)
        mlist = [None if masks.get(n) is None else self._down(masks[n], False) for n in self.names]
        if self.batched:
            alphas = self._step_batched(small, mlist)
        else:
            alphas = [self._step_one(i, small, m) for i, m in enumerate(mlist)]
        out = np.zeros((len(self.names), h, w), np.float32)
        for i, a in enumerate(alphas):
            if a is not None:
                out[i] = self._up(a, h, w)
        return exclude(out) if self.exclusive and len(self.names) > 1 else out

    def _step_one(self, i: int, frame: np.ndarray, mask: np.ndarray | None) -> np.ndarray | None:
        eng = self.engines[i]
        if mask is not None:
            self.started[i] = True
            return eng.start(frame, mask)
        return eng.step(frame) if self.started[i] else None

    def _step_batched(self, frame: np.ndarray, masks: list[np.ndarray | None]) -> list[np.ndarray | None]:
        """One network pass for every subject. The matting size is chosen once, at the first prompt, by
        the first subject's adaptive-scale policy (its memory model counts every subject as a stream) and
        shared by all, so their images are one tensor. An out-of-memory error is not stepped down here
        (lower ``runtime.max_scale`` or ``engine.max_size`` for many subjects at a large size)."""
        engines = self.engines
        img = None
        for i, m in enumerate(masks):
            if m is None:
                continue
            e = engines[i]
            shared = next((o.scale for o in engines if o.scale is not None), None)
            if e.scale is None and shared is not None:
                e.scale = shared  # every subject at the size the first one chose
            e.streams = len(engines)
            img = e._frame(frame, starting=True)  # frame_hw, internal_hw (the scale on the first anchor)
        active = [i for i, m in enumerate(masks) if m is not None or self.started[i]]
        if not active:
            return [None] * len(engines)
        if len({engines[i].internal_hw for i in active}) > 1:
            raise RuntimeError(f"subjects at different matting sizes: {[engines[i].internal_hw for i in active]}")
        if img is None:
            img = engines[active[0]]._frame(frame)  # one resize/transfer for all; checks the size
        m255 = [None if m is None else engines[i]._mask(m) for i, m in enumerate(masks)]
        cores = [e.core for e in engines]
        res = step_cores(cores, img, m255, engines[0].cfg.warmup, self.exclusive)
        out: list[np.ndarray | None] = []
        for i, a in enumerate(res):
            if masks[i] is not None:
                self.started[i] = True
            if a is not None:
                engines[i].frames_out += 1
            out.append(None if a is None else engines[i]._alpha(a))
        return out

    def _down(self, img: np.ndarray, is_frame: bool) -> np.ndarray:
        if self.scale == 1.0:
            return img
        import cv2

        h, w = img.shape[:2]
        size = (max(1, round(w * self.scale)), max(1, round(h * self.scale)))
        return cv2.resize(img, size, interpolation=cv2.INTER_AREA if is_frame else cv2.INTER_LINEAR)

    @staticmethod
    def _up(alpha: np.ndarray, h: int, w: int) -> np.ndarray:
        if alpha.shape != (h, w):
            import cv2

            alpha = cv2.resize(alpha, (w, h), interpolation=cv2.INTER_LINEAR)
        return np.clip(alpha.astype(np.float32, copy=False), 0.0, 1.0)

    # -------------------------------------------------------------- state
    def get_state(self) -> dict[str, Any]:
        """Per subject its own engine's state (None before it started): the same dicts as separate
        engines, so a resumed run continues bit-identically."""
        return {"engine": self.name, "version": STATE_VERSION, "names": list(self.names),
                "exclusive": self.exclusive, "scale": self.scale,
                "subjects": {n: (e.get_state() if s else None)
                             for n, e, s in zip(self.names, self.engines, self.started)}}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("engine") != self.name or state.get("version") != STATE_VERSION:
            raise ValueError(f"state of engine {state.get('engine')!r} v{state.get('version')} "
                             f"cannot be restored into {self.name} v{STATE_VERSION}")
        if state["names"] != self.names or state["exclusive"] != self.exclusive or state["scale"] != self.scale:
            raise ValueError(f"subjects changed since the state was saved: {state['names']} "
                             f"(exclusive={state['exclusive']}, scale={state['scale']}) vs {self.names} "
                             f"(exclusive={self.exclusive}, scale={self.scale})")
        for i, n in enumerate(self.names):
            sub = state["subjects"][n]
            self.started[i] = sub is not None
            if sub is not None:
                self.engines[i].set_state(sub)


def _shares_network(engines: list[Any]) -> bool:
    """MatAnyone engines on one network and one configuration can be batched."""
    if not all(hasattr(e, "twin") and hasattr(e, "core") for e in engines):
        return False  # no torch import for engines that cannot batch
    from mattepod.matting import MatAnyoneEngine

    if not all(type(e) is MatAnyoneEngine for e in engines):
        return False
    first = engines[0]
    return all(e.net is first.net and e.cfg == first.cfg for e in engines)
