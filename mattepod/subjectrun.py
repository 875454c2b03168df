"""The subjects engine in a run: each subject's prompt frame, backward pass, keyframes and outputs.

``SubjectsRun`` is the ``Run`` (mattepod/run.py) of a config with ``prompt.subjects``: the same steps
(verify -> backward -> forward -> report -> finish), the same encode stage, segments, manifest and
resume, with three parts of its own:

* ``SubjectsTrack`` puts a ``SubjectsEngine`` behind the run's mono protocol (``start`` at frame 0,
  ``step`` for every later frame, ``get_state``/``set_state``) and returns (S, H, W) alphas. Subjects
  have their own prompt frames: a subject prompted on frame k > 0 gets frames 0 .. k-1 from one shared
  backward pass (frames max(k) .. 0 decoded in chunks, every subject joining at its own prompt frame,
  alphas spilled as uint16), and starts afresh on frame k in the forward pass, exactly as the single
  prompt does. Keyframes re-anchor their own subject only.
* ``SubjectOutputs`` is an ``OutputSet`` look-alike over one ``OutputSet`` per subject
  (``<stem>_<name>_alpha.mp4``, ...) and one for the union (``<stem>_alpha.mp4``, ...), plus the ID map
  (``<stem>_idmap_png/``: 8-bit PNGs, pixel = 1 + the index of the subject with the largest alpha,
  0 = background). Its ``formats`` are named ``alpha`` (union), ``<name>.alpha`` (subject), ``idmap``,
  so segment records, publishing and cleanup (mattepod/finalize.py) treat every file like any output.
* previews per subject (``alpha_<name>_*.png``, ``composite_<name>_*.png``, ``subjects_*.png`` with every
  subject tinted in its colour) next to the union's (the single prompt's names).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mattepod.outputs import Format, OutputSet, over
from mattepod.prompts import PromptSpec
from mattepod.run import SPILL_CHUNK_BYTES, Run, _free_prompt_models, _prompt, _spill_path, make_engine
from mattepod.subjects import SubjectPlan, SubjectsEngine, exclude, id_map, plans_from_config, union

IDMAP = Format("idmap", "_idmap_png", "gray", lambda fr, a, c: a, None)


class SubjectsTrack:
    """See the module docstring. ``resolve(spec, frame, preview_name)`` turns a prompt into a mask (the
    frame is decoded when None); prompt masks are resolved once, when first needed."""

    name = "subjects"

    def __init__(self, engine: SubjectsEngine, plans: list[SubjectPlan],
                 resolve: Callable[[PromptSpec, np.ndarray | None, str], np.ndarray | None], spill: Path,
                 chunk: int):
        self.engine, self.plans, self.resolve, self.spill, self.chunk = engine, plans, resolve, spill, chunk
        self.k = {p.name: p.prompt.frame for p in plans}
        self.masks: dict[str, np.ndarray] = {}
        self.i = 0
        self._spill_cache: tuple[int, np.ndarray] | None = None

    def prompt_mask(self, p: SubjectPlan, frame: np.ndarray | None = None) -> np.ndarray:
        if p.name not in self.masks:
            self.masks[p.name] = self.resolve(p.prompt, frame, f"prompt_{p.name}")
        return self.masks[p.name]

    def _masks(self, i: int, frame: np.ndarray, backward: bool) -> dict[str, np.ndarray]:
        out = {}
        for p in self.plans:
            k = self.k[p.name]
            m = None
            if i == k:
                m = self.prompt_mask(p, frame)
            elif (i < k if backward else i > k) and i in p.keyframes:
                m = self.resolve(p.keyframes[i], frame, f"keyframe_{p.name}_{i:06d}")
            if m is not None:
                out[p.name] = m
        return out

    # -------------------------------------------------------------- backward
    @property
    def top(self) -> int:
        """The last prompt frame: the backward pass runs from it down to frame 0 (none when 0)."""
        return max(self.k.values())

    def backward(self, read_chunk: Callable[[int, int], list[np.ndarray]], check: Callable[[], None],
                 on_frame: Callable[[int, int], None]) -> None:
        """Frames max(k) .. 0 in reverse; subject s joins at its prompt frame k_s, its keyframes below
        k_s re-anchor it; every frame's alphas are spilled (uint16); the state is dropped afterwards."""
        self.spill.mkdir(parents=True, exist_ok=True)
        n, done, s = self.chunk, 0, len(self.plans)
        self.engine.reset()
        for chunk in range(self.top // n, -1, -1):
            lo, hi = chunk * n, min(self.top + 1, chunk * n + n)
            frames = read_chunk(lo, hi - lo)  # one bounded chunk
            out = None
            for j in range(hi - lo - 1, -1, -1):
                check()
                alphas = self.engine.step(frames[j], self._masks(lo + j, frames[j], backward=True))
                if out is None:
                    out = np.zeros((n, s, *alphas.shape[1:]), np.uint16)
                out[j] = np.round(alphas * 65535.0)
                done += 1
                on_frame(lo + j, done)
            np.save(_spill_path(self.spill, chunk), out)
            del frames
        self.engine.reset()

    def _spilled(self, i: int) -> np.ndarray:
        n = self.chunk
        if self._spill_cache is None or self._spill_cache[0] != i // n:
            self._spill_cache = (i // n, np.load(_spill_path(self.spill, i // n), mmap_mode="r"))
        return self._spill_cache[1][i % n].astype(np.float32) / 65535.0

    # -------------------------------------------------------------- forward (the run's engine protocol)
    def start(self, frame: np.ndarray, mask: Any = None) -> np.ndarray:
        self.engine.reset()
        self.i = 0
        return self.step(frame)

    def step(self, frame: np.ndarray, mask: Any = None) -> np.ndarray:
        i = self.i
        alphas = self.engine.step(frame, self._masks(i, frame, backward=False))
        before = [s for s, p in enumerate(self.plans) if i < self.k[p.name]]
        if before:
            alphas[before] = self._spilled(i)[before]
            if self.engine.exclusive:
                alphas = exclude(alphas)
        self.i = i + 1
        return alphas

    def get_state(self) -> dict[str, Any]:
        return {"frame": self.i, "engine": self.engine.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.i = state["frame"]
        self.engine.set_state(state["engine"])

    # -------------------------------------------------------------- the engine hook (VR180: per subject)
    def drain_events(self) -> list[dict[str, Any]]:
        out = []
        for name, eng in zip(self.engine.names, self.engine.engines):
            drain = getattr(eng, "drain_events", None)
            out += [{**ev, "subject": name} for ev in (drain() if drain else [])]
        return out

    def report(self, events: Callable[[str], list[dict[str, Any]]]) -> dict[str, Any]:
        """Each subject engine's report sections, per subject: {"stereo": {"subjects": {name: ...}}}."""
        out: dict[str, Any] = {}
        for name, eng in zip(self.engine.names, self.engine.engines):
            report = getattr(eng, "report", None)
            if report is None:
                continue
            mine = report(lambda kind, name=name: [r for r in events(kind) if r.get("subject") == name])
            for section, value in mine.items():
                out.setdefault(section, {"subjects": {}})["subjects"][name] = value
        return out


class SubjectOutputs:
    """The outputs of a subjects run, shaped like one ``OutputSet`` (see the module docstring)."""

    def __init__(self, make_set: Callable[[str, Any], OutputSet], run_dir: Path, stem: str,
                 plans: list[SubjectPlan], cfg: Any):
        """``make_set(stem, outputs_cfg)`` builds an ``OutputSet`` in ``run_dir``."""
        self.run_dir, self.stem, self.plans = run_dir, stem, plans
        self.id_map = IDMAP.name in cfg.formats
        sub_cfg = cfg.model_copy(update={"formats": [f for f in cfg.formats if f != IDMAP.name] or ["alpha"]})
        self.union = make_set(stem, sub_cfg)
        self.fps = self.union.fps
        self.sets: list[OutputSet] = []
        for p in plans:
            s = make_set(f"{stem}_{p.name}", sub_cfg)
            s.segment_path = _segment_path_in(s, run_dir / "segments" / "subjects" / p.name)
            self.sets.append(s)
        # every file as a format of its own: name -> (set or None for the ID map, the set's own format)
        self._route: dict[str, tuple[OutputSet | None, Format]] = {f.name: (self.union, f) for f in self.union.formats}
        for p, s in zip(plans, self.sets):
            self._route.update({f"{p.name}.{f.name}": (s, f) for f in s.formats})
        if self.id_map:
            self._route[IDMAP.name] = (None, IDMAP)
        self.formats = [dataclasses.replace(f, name=n) for n, (_s, f) in self._route.items()]
        self.colors = [np.array([int(p.color[i:i + 2], 16) for i in (1, 3, 5)], np.float32) for p in plans]

    # -- where each file lives (the run's verify and finalize ask these) ------------------------------
    def name(self, fmt: Format) -> str:
        s, own = self._route[fmt.name]
        return f"{self.stem}{IDMAP.suffix}" if s is None else s.name(own)

    def segment_path(self, fmt: Format, index: int) -> Path:
        s, own = self._route[fmt.name]
        assert s is not None, "the ID map is an image sequence"
        return s.segment_path(own, index)

    def sequence_dir(self, fmt: Format) -> Path:
        s, own = self._route[fmt.name]
        return self.run_dir / (self.name(fmt) + ".partial") if s is None else s.sequence_dir(own)

    def sequence_file(self, fmt: Format, index: int) -> Path:
        return self.sequence_dir(fmt) / f"{index:06d}.png"

    # -- the encode stage -----------------------------------------------------------------------------
    def open_segment(self, index: int, first_frame: int) -> None:
        for s in (self.union, *self.sets):
            s.open_segment(index, first_frame)
        if self.id_map:
            self.sequence_dir(IDMAP).mkdir(parents=True, exist_ok=True)

    def write(self, index: int, frame: np.ndarray, alphas: np.ndarray) -> None:
        self.union.write(index, frame, union(alphas))
        for s, a in zip(self.sets, alphas):
            s.write(index, frame, a)
        if self.id_map:
            path = self.sequence_file(IDMAP, index)
            if not cv2.imwrite(str(path), id_map(alphas)):
                raise OSError(f"could not write {path}")

    def close_segment(self) -> None:
        for s in (self.union, *self.sets):
            s.close_segment()

    def abort(self) -> None:
        for s in (self.union, *self.sets):
            s.abort()

    def previews(self, i: int, frame: np.ndarray, alphas: np.ndarray, background: np.ndarray) -> None:
        d = self.run_dir / "previews"
        d.mkdir(exist_ok=True)
        u = union(alphas)
        pics = {f"alpha_{i:06d}.png": np.round(u * 255).astype(np.uint8),
                f"composite_{i:06d}.png": cv2.cvtColor(over(frame, u, background), cv2.COLOR_RGB2BGR)}
        tint = frame.astype(np.float32) * 0.35
        for p, a, c in zip(self.plans, alphas, self.colors):
            pics[f"alpha_{p.name}_{i:06d}.png"] = np.round(a * 255).astype(np.uint8)
            pics[f"composite_{p.name}_{i:06d}.png"] = cv2.cvtColor(over(frame, a, background), cv2.COLOR_RGB2BGR)
            tint += a[..., None] * (0.65 * c)
        pics[f"subjects_{i:06d}.png"] = cv2.cvtColor(np.clip(tint + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
        for name, img in pics.items():
            cv2.imwrite(str(d / name), img)


def _segment_path_in(s: OutputSet, root: Path) -> Callable[[Format, int], Path]:
    def segment_path(fmt: Format, index: int) -> Path:
        return root / fmt.name / f"{index:06d}{Path(s.name(fmt)).suffix}"

    return segment_path


class SubjectsRun(Run):
    """A ``Run`` for ``prompt.subjects``: k = 0 for the run (the track keeps each subject's own prompt
    frame), one shared backward pass, ``SubjectOutputs``."""

    def __post_init__(self) -> None:
        # Run's own setup (events, the union's OutputSet) on the outputs an OutputSet knows (no idmap)
        cfg = self.cfg
        formats = [f for f in cfg.outputs.formats if f != IDMAP.name] or ["alpha"]
        self.cfg = cfg.model_copy(update={"outputs": cfg.outputs.model_copy(update={"formats": formats})})
        super().__post_init__()
        self.cfg = cfg
        self.plans = plans_from_config(self.cfg.prompt)
        self.main_spec = PromptSpec(frame=0)  # the run starts the track on frame 0
        self.keyframes = {}

        def make_set(stem: str, outputs_cfg: Any) -> OutputSet:
            return dataclasses.replace(self.outs, stem=stem, cfg=outputs_cfg)

        self.outs = SubjectOutputs(make_set, self.run_dir, Path(self.info.path).stem, self.plans, self.cfg.outputs)

    def ensure_engine(self) -> SubjectsTrack:
        if self.engine is None:
            factory = self.opts.engine_factory or _default_factory()
            names = [p.name for p in self.plans]
            cfg = self.cfg
            if self.layout is None:
                engine = SubjectsEngine.build(lambda: factory(cfg), names, cfg.prompt.exclusive, cfg.scale)
            else:  # VR180: a stereo engine per subject, all on one network (MatAnyone twins)
                shared = _sharing(lambda: factory(cfg))
                engine = SubjectsEngine(names, [make_engine(cfg, self.info, lambda _c: shared(), p.prompt, self.layout)
                                                for p in self.plans], cfg.prompt.exclusive)

            def resolve(spec: PromptSpec, frame: np.ndarray | None, preview: str) -> np.ndarray | None:
                return _prompt(cfg, self.info, self.first, spec, self.run_dir, preview, frame)

            # a backward chunk holds its frames (3 bytes a pixel) and every subject's alpha (2 bytes each)
            px = self.info.width * self.info.height * (3 + 2 * len(self.plans))
            self.engine = SubjectsTrack(engine, self.plans, resolve, self.spill,
                                        max(1, min(64, SPILL_CHUNK_BYTES // px)))
            self.folder.update(**self._engine_report())
        return self.engine

    def prompt(self) -> np.ndarray:
        """Every subject's prompt mask (SAM 2 / detector freed afterwards unless keyframes need them)."""
        track = self.ensure_engine()
        if len(track.masks) < len(self.plans):
            for p in self.plans:
                track.prompt_mask(p)
            if not self.opts.keep_prompt_models and not any(p.keyframes for p in self.plans):
                _free_prompt_models()
        return np.zeros((0,), np.float32)  # the track holds the masks

    def backward(self) -> None:
        track = self.ensure_engine()
        if track.top == 0 or self.manifest.backward_done:
            return
        self.prompt()
        self.events.trim(lambda r: r.get("pass") == "backward")
        self.progress.begin("backward", 0, total=track.top + 1)
        from mattepod.media.reader import read_frames

        def on_frame(i: int, done: int) -> None:
            self._record_events(i, backward=True)
            self.progress.update(done)

        track.backward(lambda lo, n: list(read_frames(self.info, self.first + lo, n)), self.cancel.check, on_frame)
        self.events.close()
        self.manifest.backward_done = True
        self.manifest.save(self.run_dir)


def _default_factory() -> Callable[[Any], Any]:
    from mattepod.run import build_engine

    return build_engine


def _sharing(factory: Callable[[], Any]) -> Callable[[], Any]:
    """A factory whose engines share one network (MatAnyone twins), for a stereo engine per subject."""
    first: list[Any] = []

    def make() -> Any:
        if not first:
            first.append(factory())
            return first[0]
        return first[0].twin() if hasattr(first[0], "twin") else factory()

    return make
