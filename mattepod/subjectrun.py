"""The subjects engine in a run: each subject's prompt frame, backward pass, keyframes and outputs.

``SubjectsTrack`` puts a ``SubjectsEngine`` behind the pipeline's mono protocol (``start`` at frame 0,
``step`` for every later frame, ``get_state``/``set_state``) and returns (S, H, W) alphas. Subjects
have their own prompt frames: a subject prompted on frame k > 0 gets frames 0 .. k-1 from one shared
backward pass (frames max(k) .. 0 decoded in chunks, every subject joining at its own prompt frame,
alphas spilled as uint16), and starts afresh on frame k in the forward pass, exactly as the single
prompt does. Keyframes re-anchor their own subject only.

``SubjectOutputs`` drives one ``OutputSet`` per subject (``<stem>_<name>_alpha.mp4``, ...) and one for
the union (``<stem>_alpha.mp4``, ...), plus the ID map (``<stem>_idmap_png/``: 8-bit PNGs, pixel = 1 +
the index of the subject with the largest alpha, 0 = background) and per-subject previews.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mattepod.subjects import SubjectPlan, SubjectsEngine, exclude, id_map, union

SPILL_CHUNK_BYTES = 256 << 20
DONE = "backward.done"
IDMAP = "idmap"


def chunk_len(width: int, height: int) -> int:
    """Frames decoded at once for the backward pass (the pipeline's bound)."""
    return max(1, min(64, SPILL_CHUNK_BYTES // (width * height * 3)))


class SubjectsTrack:
    """See the module docstring. ``resolve(name, spec, frame)`` turns a prompt into a mask (the frame
    is decoded by the caller when None); ``masks`` are the subjects' resolved main prompts."""

    name = "subjects"

    def __init__(self, engine: SubjectsEngine, plans: list[SubjectPlan], masks: dict[str, np.ndarray],
                 resolve: Callable[[str, Any, np.ndarray | None], np.ndarray | None], spill: Path,
                 size: tuple[int, int]):
        self.engine, self.plans, self.masks, self.resolve, self.spill = engine, plans, masks, resolve, spill
        self.width, self.height = size
        self.k = {p.name: p.prompt.frame for p in plans}
        self.i = 0
        self._spill_cache: tuple[int, np.ndarray] | None = None

    # -------------------------------------------------------------- backward
    @property
    def needs_backward(self) -> bool:
        return max(self.k.values()) > 0 and not (self.spill / DONE).exists()

    def backward(self, read_chunk: Callable[[int, int], list[np.ndarray]], check: Callable[[], None],
                 on_frame: Callable[[int], None]) -> None:
        """Frames max(k) .. 0 in reverse; subject s joins at its prompt frame k_s, its keyframes below
        k_s re-anchor it; every frame's alphas are spilled (uint16), the state is thrown away after."""
        top = max(self.k.values())
        self.spill.mkdir(parents=True, exist_ok=True)
        n = chunk_len(self.width, self.height)
        done = 0
        for chunk in range(top // n, -1, -1):
            lo, hi = chunk * n, min(top + 1, chunk * n + n)
            frames = read_chunk(lo, hi - lo)
            out = np.zeros((n, len(self.plans), self.height, self.width), np.uint16)
            for j in range(hi - lo - 1, -1, -1):
                check()
                i = lo + j
                masks = {}
                for p in self.plans:
                    if i == self.k[p.name]:
                        masks[p.name] = self.masks[p.name]
                    elif i < self.k[p.name] and i in p.keyframes:
                        masks[p.name] = self.resolve(p.name, p.keyframes[i], frames[j])
                out[j] = np.round(self.engine.step(frames[j], {k: v for k, v in masks.items() if v is not None})
                                  * 65535.0)
                done += 1
                on_frame(done)
            np.save(self.spill / f"{chunk:06d}.npy", out)
            del frames
        self.engine.reset()
        (self.spill / DONE).write_text("done\n")

    def _spilled(self, i: int) -> np.ndarray:
        n = chunk_len(self.width, self.height)
        if self._spill_cache is None or self._spill_cache[0] != i // n:
            self._spill_cache = (i // n, np.load(self.spill / f"{i // n:06d}.npy", mmap_mode="r"))
        return self._spill_cache[1][i % n].astype(np.float32) / 65535.0

    # -------------------------------------------------------------- forward (the Engine protocol)
    def start(self, frame: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        self.engine.reset()
        self.i = 0
        return self.step(frame)

    def step(self, frame: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        i = self.i
        masks = {}
        for p in self.plans:
            if i == self.k[p.name]:
                masks[p.name] = self.masks[p.name]
            elif i > self.k[p.name] and i in p.keyframes:
                m = self.resolve(p.name, p.keyframes[i], frame)
                if m is not None:
                    masks[p.name] = m
        alphas = self.engine.step(frame, masks)
        before = [s for s, p in enumerate(self.plans) if i < self.k[p.name]]
        if before:
            spilled = self._spilled(i)
            alphas[before] = spilled[before]
            if self.engine.exclusive:
                alphas = exclude(alphas)
        self.i = i + 1
        return alphas

    def get_state(self) -> dict[str, Any]:
        return {"frame": self.i, "engine": self.engine.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.i = state["frame"]
        self.engine.set_state(state["engine"])

    # -------------------------------------------------------------- VR180 consistency (one record per subject)
    def drain_consistency(self) -> list[dict[str, Any]]:
        out = []
        for name, eng in zip(self.engine.names, self.engine.engines):
            if hasattr(eng, "drain_consistency"):
                out += [{"subject": name, **rec} for rec in eng.drain_consistency()]
        return out

    def summary(self) -> dict[str, Any]:
        return {name: eng.summary() for name, eng in zip(self.engine.names, self.engine.engines)
                if hasattr(eng, "summary")}


class SubjectOutputs:
    """The outputs of a subjects run: the same interface as ``OutputSet`` with (S, H, W) alphas."""

    def __init__(self, make_set: Callable[..., Any], run_dir: Path, stem: str, plans: list[SubjectPlan],
                 cfg: Any, width: int, height: int):
        """``make_set(stem, outputs_cfg)`` builds an ``OutputSet``; the subjects' sets keep their
        segments apart (``segments.<name>/``)."""
        self.run_dir, self.stem, self.plans = run_dir, stem, plans
        self.id_map = IDMAP in cfg.formats
        formats = [f for f in cfg.formats if f != IDMAP] or ["alpha"]
        sub_cfg = cfg.model_copy(update={"formats": formats})
        self.union = make_set(stem, sub_cfg)
        self.sets = []
        for p in plans:
            s = make_set(f"{stem}_{p.name}", sub_cfg)
            s.segment_path = _segment_path_in(s, run_dir / f"segments.{p.name}")
            self.sets.append(s)
        self.colors = [np.array([int(p.color[i:i + 2], 16) for i in (1, 3, 5)], np.float32) for p in plans]

    @property
    def id_dir(self) -> Path:
        return self.run_dir / f"{self.stem}_idmap_png.partial"

    def open_segment(self, index: int, first_frame: int) -> None:
        self.union.open_segment(index, first_frame)
        for s in self.sets:
            s.open_segment(index, first_frame)
        if self.id_map:
            self.id_dir.mkdir(parents=True, exist_ok=True)

    def write(self, index: int, frame: np.ndarray, alphas: np.ndarray) -> None:
        self.union.write(index, frame, union(alphas))
        for s, a in zip(self.sets, alphas):
            s.write(index, frame, a)
        if self.id_map and not cv2.imwrite(str(self.id_dir / f"{index:06d}.png"), id_map(alphas)):
            raise OSError(f"could not write {self.id_dir / f'{index:06d}.png'}")

    def close_segment(self) -> None:
        self.union.close_segment()
        for s in self.sets:
            s.close_segment()

    def abort(self) -> None:
        self.union.abort()
        for s in self.sets:
            s.abort()

    def finalize(self, segments: int, info: Any, start_frame: int, frames: int) -> dict[str, str]:
        """{format: union file, "<name>.<format>": subject file, "idmap": folder}."""
        done = self.union.finalize(segments, info, start_frame, frames)  # first: each set clears segments/
        for p, s in zip(self.plans, self.sets):
            done.update({f"{p.name}.{k}": v for k, v in s.finalize(segments, info, start_frame, frames).items()})
            shutil.rmtree(self.run_dir / f"segments.{p.name}", ignore_errors=True)
        if self.id_map:
            name = f"{self.stem}_idmap_png"
            os.replace(self.id_dir, self.run_dir / name)
            done[IDMAP] = name
        return done

    def previews(self, i: int, frame: np.ndarray, alphas: np.ndarray, background: np.ndarray) -> None:
        """Per subject its alpha and composite, the union's (the single-prompt names), and one picture
        with every subject tinted in its colour."""
        from mattepod.outputs import over

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


def _segment_path_in(s: Any, root: Path) -> Callable[[Any, int], Path]:
    def segment_path(fmt: Any, index: int) -> Path:
        ext = Path(s.name(fmt)).suffix
        return root / fmt.name / f"{index:06d}{ext}"

    return segment_path


def stereo_engines_share(factory: Callable[[], Any]) -> Callable[[], Any]:
    """A factory whose engines share one network (MatAnyone twins), for a stereo engine per subject."""
    first: list[Any] = []

    def make() -> Any:
        if not first:
            first.append(factory())
            return first[0]
        return first[0].twin() if hasattr(first[0], "twin") else factory()

    return make

