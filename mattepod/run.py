"""One run as one object: ``Run`` holds the run's state; its steps are short methods.

    Run.execute:  verify -> [prompt -> backward -> forward] -> report -> finish (mattepod/finalize.py)

    decode thread --(bounded queue)--> Run.forward: engine.step --(bounded queue)--> EncodeStage thread

The loop is the same for every engine (mono, VR180, later several subjects). Whatever an engine wants to
say about its frames goes through two optional methods, the *engine hook*:

* ``drain_events() -> list[dict]``: per-frame records since the last call, each with a ``"kind"``
  (``"stereo_consistency"``, ``"scale_change"`` ...). The run stamps the frame index (and
  ``"pass": "backward"`` for the backward pass) and appends them to ``<kind>.jsonl`` in the run folder
  (``EventLog``); on resume the records of frames that are redone are dropped first.
* ``report(events) -> dict``: sections for metadata.json (``events(kind)`` reads a kind's records back),
  written when the forward pass ends; ``metadata.json["events"]`` lists every kind's file and count.

The encode thread commits a segment (files closed, their sizes/hashes recorded, engine state, manifest);
a resumed run first re-checks the committed segments (``verify``) and redoes from the first bad one.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mattepod.checkpoint import (Manifest, check_file, check_files, commit_segment, file_record, files_record,
                                 load_state, serialise_state)
from mattepod.config import Config
from mattepod.engine import Engine, MaskFollowEngine, check_alpha
from mattepod.errors import CancelledError, MaskError
from mattepod.media.probe import MediaInfo
from mattepod.media.reader import read_frame, read_frames
from mattepod.outputs import OutputSet, hex_rgb, over
from mattepod.progress import Progress
from mattepod.prompts import PromptSpec, resolve_prompt, specs_from_config
from mattepod.runfolder import RunFolder, write_atomic

log = logging.getLogger("mattepod.run")

_END = object()
# Fault injection for the crash/resume tests (TEST.md): SIGKILL this process after N frames of matting.
_KILL_AT = int(os.environ.get("MATTEPOD_TEST_KILL_AT_FRAME", "0")) or None
SPILL_CHUNK_BYTES = 256 << 20  # frames decoded at once for the backward pass

# A finish hook: (run, {format: file name}) -> metadata.json fields (or None). Runs after the outputs are
# published, before the run is marked completed; each is recorded in the manifest once done, so a kill
# inside one reruns only that hook (it must be idempotent: write its files atomically).
FinishHook = Callable[["Run", dict[str, str]], "dict[str, Any] | None"]


def fault_point(name: str) -> None:
    """Crash tests: ``MATTEPOD_TEST_KILL_AT_STEP=<name>`` SIGKILLs the run exactly here."""
    if os.environ.get("MATTEPOD_TEST_KILL_AT_STEP") == name:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class RunOptions:
    run_dir: str | Path | None = None
    resume: str | Path | None = None
    progress_json: bool = False
    progress_bar: bool = True
    listener: Callable[[dict[str, Any]], None] | None = None
    engine_factory: Callable[[Config], Engine] | None = None
    # SAM 2 / the detector are freed before matting (GPU memory for 8K); a long-lived worker keeps them.
    keep_prompt_models: bool = False
    finish_hooks: list[tuple[str, FinishHook]] = field(default_factory=list)  # extra steps of this run


def finish_hooks(run: "Run") -> list[tuple[str, FinishHook]]:
    """The finish steps of a run, in order, as (name, hook). Later features add one line here
    (browser proxies, quality against ``--gt``); callers add their own through ``RunOptions.finish_hooks``."""
    from mattepod import proxies, quality

    hooks: list[tuple[str, FinishHook]] = [("quality", quality.finish_hook)]  # issue 17: quality.gt -> quality.json
    hooks.append(("proxies", proxies.finish_hook))  # issue 13: browser-playable previews for the web page
    return hooks + list(run.opts.finish_hooks)


@dataclass
class StageClock:
    """Seconds spent inside each stage (busy time, not waiting on queues)."""

    seconds: dict[str, float] = field(default_factory=lambda: {"decode": 0.0, "engine": 0.0, "encode": 0.0})
    frames: dict[str, int] = field(default_factory=lambda: {"decode": 0, "engine": 0, "encode": 0})

    def add(self, stage: str, dt: float, n: int = 1) -> None:
        self.seconds[stage] += dt
        self.frames[stage] += n

    def report(self, wall: float, frames: int) -> dict[str, Any]:
        out: dict[str, Any] = {"wall_s": round(wall, 3), "fps": round(frames / wall, 3) if wall > 0 else None}
        for k, s in self.seconds.items():
            out[f"{k}_s"] = round(s, 3)
            out[f"{k}_fps"] = round(self.frames[k] / s, 3) if s > 0 else None
        return out


def prefetch(items: Iterable[Any], size: int, clock: StageClock | None = None, stage: str = "decode") -> Iterator[Any]:
    """Run an iterator in a thread behind a bounded queue; its exceptions re-raise in the consumer."""
    q: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def worker() -> None:
        it = iter(items)
        try:
            while not stop.is_set():
                t = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    break
                if clock is not None:
                    clock.add(stage, time.perf_counter() - t)
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
            q.put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put(exc)
        finally:
            close = getattr(it, "close", None)
            if close:
                close()

    thread = threading.Thread(target=worker, daemon=True, name=f"mattepod-{stage}")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)


class Cancel:
    """SIGTERM/SIGINT -> a CancelledError at the next frame boundary (the UI's Cancel signals the process
    group). The run stays resumable: segments committed so far are kept, the open one is redone."""

    def __init__(self) -> None:
        self.flag = threading.Event()
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "Cancel":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, lambda *_: self.flag.set())
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def check(self) -> None:
        if self.flag.is_set():
            raise CancelledError("run cancelled", "resume it later with --resume RUN_FOLDER")


# ---- engines -----------------------------------------------------------------------------------------

def build_engine(cfg: Config) -> Engine:
    """The engine named in config (mono). VR180 wraps two of these per eye (mattepod.stereo)."""
    if cfg.engine.name == "mask":
        return MaskFollowEngine()
    from mattepod.matting import build_engine as build_matting  # torch-heavy; only when asked for

    from mattepod.adaptive import AdaptiveScale

    return build_matting(cfg.engine, cfg.resolved_weights_dir(), AdaptiveScale.from_runtime(cfg.runtime))


class ScaledEngine:
    """Runs an engine at ``scale`` of the input size and brings the alpha back to full size."""

    def __init__(self, inner: Engine, scale: float):
        self.inner, self.scale = inner, scale
        self.name = getattr(inner, "name", "engine")
        self.accepts_16bit = getattr(inner, "accepts_16bit", False)  # cv2.resize keeps uint16

    def _down(self, img: np.ndarray, interp: int) -> np.ndarray:
        if self.scale == 1.0:
            return img
        h, w = img.shape[:2]
        return cv2.resize(img, (max(1, round(w * self.scale)), max(1, round(h * self.scale))), interpolation=interp)

    def _up(self, alpha: np.ndarray, frame: np.ndarray) -> np.ndarray:
        if alpha.shape != frame.shape[:2]:
            alpha = cv2.resize(alpha, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_LINEAR)
        return check_alpha(alpha, frame)

    def start(self, frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self._up(self.inner.start(self._down(frame, cv2.INTER_AREA), self._down(mask, cv2.INTER_LINEAR)), frame)

    def step(self, frame: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        small = None if mask is None else self._down(mask, cv2.INTER_LINEAR)
        return self._up(self.inner.step(self._down(frame, cv2.INTER_AREA), small), frame)

    def get_state(self) -> dict[str, Any]:
        return self.inner.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self.inner.set_state(state)

    # the engine hook passes through (see the module docstring)
    def drain_events(self) -> list[dict[str, Any]]:
        drain = getattr(self.inner, "drain_events", None)
        return drain() if drain else []

    def report(self, events: Callable[[str], list[dict[str, Any]]]) -> dict[str, Any]:
        report = getattr(self.inner, "report", None)
        return report(events) if report else {}


def make_engine(cfg: Config, info: MediaInfo, factory: Callable[[Config], Engine], spec: PromptSpec,
                layout: Any) -> Engine:
    """The engine a run drives: the configured engine at ``scale`` (mono), or a ``StereoEngine`` over two
    of them (VR180: the slave eye's prompt is the master's moved by the subject's disparity, refined by
    SAM 2 when the prompt was clicks or a box)."""
    if layout is None:
        return ScaledEngine(factory(cfg), cfg.scale)
    from mattepod.stereo import StereoEngine, to_eye_coords

    def sam2_refine(eye: np.ndarray, points: Any, box: Any) -> np.ndarray:
        from mattepod.sam import get_prompter

        prompter = get_prompter(cfg.prompt.sam2_model, cfg.resolved_weights_dir(), device(cfg))
        return prompter.mask_for(eye, list(points or []), box)

    engine = StereoEngine.from_config(lambda: factory(cfg), layout, cfg.stereo, scale=cfg.scale,
                                      refine=sam2_refine if spec.points or spec.box else None)
    size = (info.width, info.height)
    if spec.points or spec.box:
        eye_pts = []
        for x, y, label in spec.points:
            px, py = (x * info.width, y * info.height) if spec.normalized else (x, y)
            _eye, ex, ey = to_eye_coords(px, py, layout, size)
            eye_pts.append((ex, ey, label))
        engine.prompt_points = eye_pts
        if spec.box:
            x0, y0, x1, y1 = spec.box
            if spec.normalized:
                x0, x1, y0, y1 = x0 * info.width, x1 * info.width, y0 * info.height, y1 * info.height
            _e, ex0, ey0 = to_eye_coords(x0, y0, layout, size)
            _e, ex1, ey1 = to_eye_coords(x1, y1, layout, size)
            engine.prompt_box = (ex0, ey0, ex1, ey1)
    return engine


def device(cfg: Config) -> str:
    from mattepod.device import resolve  # the one device resolver

    return resolve(cfg.engine.device)


# ---- engine events -------------------------------------------------------------------------------------

class EventLog:
    """Engine events as JSON lines, one file per kind (``<kind>.jsonl``) in the run folder."""

    def __init__(self, run_dir: Path):
        self.dir = run_dir
        self._files: dict[str, Any] = {}

    def path(self, kind: str) -> Path:
        return self.dir / f"{kind}.jsonl"

    def kinds(self) -> list[str]:
        return sorted(p.name[:-len(".jsonl")] for p in self.dir.glob("*.jsonl"))

    def read(self, kind: str) -> list[dict[str, Any]]:
        """The records of ``kind`` (a line cut short by a kill is skipped)."""
        out = []
        try:
            lines = self.path(kind).read_bytes().decode("utf-8", "replace").splitlines()
        except OSError:
            return []
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out

    def trim(self, drop: Callable[[dict[str, Any]], bool]) -> None:
        """Drop the records of frames about to be redone (resume, replay, a restarted backward pass)."""
        self.close()
        for kind in self.kinds():
            recs = self.read(kind)
            keep = [r for r in recs if not drop(r)]
            if len(keep) != len(recs) or self.path(kind).read_bytes()[-1:] not in (b"\n", b""):
                write_atomic(self.path(kind), "".join(json.dumps(r) + "\n" for r in keep))

    def write(self, frame: int, events: list[dict[str, Any]], backward: bool = False) -> None:
        for ev in events:
            rec = {k: v for k, v in ev.items() if k != "kind"}
            rec["frame"] = frame
            if backward:
                rec["pass"] = "backward"
            kind = str(ev.get("kind", "events"))
            f = self._files.get(kind)
            if f is None:
                f = self._files[kind] = self.path(kind).open("a")
            f.write(json.dumps(rec) + "\n")
            f.flush()

    def summary(self) -> dict[str, Any]:
        return {kind: {"file": self.path(kind).name, "count": len(self.read(kind))} for kind in self.kinds()}

    def close(self) -> None:
        files, self._files = self._files, {}
        for f in files.values():
            f.close()


# ---- the encode stage ----------------------------------------------------------------------------------

class EncodeStage:
    """The encode thread: owns the writers (``OutputSet``), takes open/frame/close items from a bounded
    queue, and commits each finished segment (files closed and recorded, state, manifest)."""

    def __init__(self, run: "Run", outs: OutputSet):
        self.run, self.outs = run, outs
        self.q: queue.Queue = queue.Queue(maxsize=run.cfg.runtime.queue_size)
        self.error: list[BaseException] = []
        self._stop = threading.Event()
        self.preview_at = _preview_frames(run.count, run.cfg.outputs.previews)
        self.thread = threading.Thread(target=self._work, daemon=True, name="mattepod-encode")

    def start(self) -> "EncodeStage":
        self.thread.start()
        return self

    def open(self, segment: int, frame: int) -> None:
        self._put(("open", segment, frame))

    def frame(self, i: int, frame: np.ndarray, alpha: np.ndarray) -> None:
        self._put(("frame", i, frame, alpha))

    def close(self, segment: int, done: int, state: bytes | None) -> None:
        self._put(("close", segment, done, state))

    def finish(self) -> None:
        self._put(_END)
        self.thread.join()
        if self.error:
            raise self.error[0]

    def abort(self, keep_queued: bool = False) -> None:
        """Stop after an error or a cancel; the open segment's writers are killed (it is redone on resume).

        ``keep_queued``: segments already complete in the queue are still committed (an engine error loses
        only the open segment); a cancel drops the queue instead, to stop within a frame or two."""
        if keep_queued and not self.error and self.thread.is_alive():
            deadline = time.monotonic() + 60
            while self.thread.is_alive() and time.monotonic() < deadline:
                try:
                    self.q.put(_END, timeout=0.2)
                    break
                except queue.Full:
                    continue
            self.thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._stop.set()
        while True:
            try:
                self.q.get_nowait()
            except queue.Empty:
                break
        try:
            self.q.put_nowait(_END)
        except queue.Full:
            pass
        self.thread.join(timeout=5)
        self.outs.abort()

    def _put(self, item: Any) -> None:
        while True:
            if self.error:
                raise self.error[0]
            self.run.cancel.check()
            try:
                self.q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _work(self) -> None:
        run, outs, clock = self.run, self.outs, self.run.clock
        segment_start = 0
        try:
            while True:
                item = self.q.get()
                if item is _END or self._stop.is_set():
                    return
                kind = item[0]
                t = time.perf_counter()
                if kind == "open":
                    segment_start = item[2]
                    outs.open_segment(item[1], run.first + item[2])
                elif kind == "frame":
                    _, i, frame, alpha = item
                    outs.write(i, frame, alpha)
                    if i in self.preview_at and hasattr(outs, "previews"):  # several subjects (#16)
                        outs.previews(i, frame, alpha, hex_rgb(run.cfg.outputs.color))
                    elif i in self.preview_at:
                        _write_previews(run.run_dir, i, frame, alpha, run.cfg)
                    clock.add("encode", time.perf_counter() - t)
                elif kind == "close":
                    _, seg, done, blob = item
                    outs.close_segment()
                    record = segment_record(outs, seg, segment_start, done)
                    commit_segment(run.run_dir, run.manifest, seg, done, blob, record)
                    run.folder.update(frames={"total": run.count, "done": done})
                    clock.add("encode", time.perf_counter() - t, 0)
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            self.error.append(exc)
            outs.abort()
            while self.q.get() is not _END:
                pass


def segment_record(outs: OutputSet, segment: int, lo: int, hi: int) -> dict[str, Any]:
    """What segment ``segment`` (frames lo..hi-1) must look like on resume: frames, size, hash per format."""
    files = {}
    for fmt in outs.formats:
        if fmt.is_sequence:
            files[fmt.name] = files_record([outs.sequence_file(fmt, i) for i in range(lo, hi)])
        else:
            files[fmt.name] = file_record(outs.segment_path(fmt, segment), hi - lo)
    return {"frames": hi - lo, "first": lo, "files": files}


def segment_problem(outs: OutputSet, segment: int, rec: dict[str, Any], skip: set[str]) -> str | None:
    """None if every file of a committed segment matches its record, else what is wrong (first found)."""
    files = rec.get("files") or {}
    lo, n = int(rec.get("first", 0)), int(rec.get("frames", 0))
    for fmt in outs.formats:
        if fmt.name in skip:
            continue
        frec = files.get(fmt.name)
        if not isinstance(frec, dict):
            return f"{fmt.name}: not recorded"
        if fmt.is_sequence:
            problem = check_files([outs.sequence_file(fmt, i) for i in range(lo, lo + n)], frec)
        else:
            problem = check_file(outs.segment_path(fmt, segment), frec)
        if problem:
            return f"{fmt.name}: {problem}"
    return None


# ---- the run -------------------------------------------------------------------------------------------

@dataclass
class Run:
    """A run of one input: its config, probe, frame range, folder, manifest and the engine that mattes it.

    ``execute`` walks the steps; each step reads and writes only the fields below, so what a step needs
    and what it leaves behind is visible here (and what resume restores is exactly the manifest)."""

    cfg: Config
    info: MediaInfo
    first: int  # input frame of output frame 0
    count: int  # frames processed
    folder: RunFolder
    manifest: Manifest
    progress: Progress
    cancel: Cancel
    opts: RunOptions
    encoders: dict[str, str]
    layout: Any = None  # stereo.Layout in vr180 mode
    engine: Engine | None = None
    prompt_mask: np.ndarray | None = None
    started: bool = False  # the engine holds a state (started at k, or restored)
    clock: StageClock = field(default_factory=StageClock)
    events: EventLog = field(init=False)
    outs: OutputSet = field(init=False)
    main_spec: PromptSpec = field(init=False)
    keyframes: dict[int, PromptSpec] = field(init=False)
    timings: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.events = EventLog(self.run_dir)
        specs = specs_from_config(self.cfg.prompt)
        self.main_spec = specs[0]
        self.keyframes = {s.frame: s for s in specs[1:]}
        if self.cfg.prompt.reprompt_every:
            from mattepod.prompts import auto_spec

            every = self.cfg.prompt.reprompt_every
            for f in range(self.main_spec.frame + every, self.count, every):
                self.keyframes.setdefault(f, auto_spec(self.cfg.prompt, f))
        self.outs = OutputSet(self.run_dir, Path(self.info.path).stem, self.info.width, self.info.height,
                              self.info.fps, self.cfg.outputs, self.encoders, self.layout, self.cfg.stereo.fov,
                              self.info.color, device=device(self.cfg))

    @property
    def run_dir(self) -> Path:
        return self.folder.path

    @property
    def seg_len(self) -> int:
        return self.manifest.segment_frames

    @property
    def k(self) -> int:
        """The prompt frame (relative to ``first``)."""
        return self.main_spec.frame

    def execute(self) -> dict[str, str]:
        from mattepod.finalize import finish

        self.verify()
        if self.manifest.frames_done < self.count:
            self.backward()
            self.forward()
        if "report" not in self.manifest.finalize:
            self.report()
        return finish(self)

    # -- verify --------------------------------------------------------------------------------------

    def verify(self) -> None:
        """Re-check every committed segment against its record; redo from the first bad one."""
        m = self.manifest
        if "cleanup" in m.finalize:
            return
        published = {s.split(":", 1)[1] for s in m.finalize if s.startswith("publish:")}
        for seg in range(min(m.segments_done, len(m.segments))):
            rec = m.segments[seg]
            if not rec:
                continue  # a manifest from before segments were recorded: nothing to check against
            problem = segment_problem(self.outs, seg, rec, published)
            if problem:
                log.warning("segment %d is bad (%s): redoing from frame %d", seg, problem, seg * self.seg_len)
                from mattepod.finalize import unpublish

                unpublish(self)
                m.rollback(self.run_dir, seg)
                self.folder.update(frames={"total": self.count, "done": m.frames_done})
                return

    # -- engine and prompt -----------------------------------------------------------------------------

    def ensure_engine(self) -> Engine:
        if self.engine is None:
            factory = self.opts.engine_factory or build_engine
            self.engine = make_engine(self.cfg, self.info, factory, self.main_spec, self.layout)
            self.folder.update(**self._engine_report())
        return self.engine

    def depth(self) -> int:
        """16 when the engine asks for 16-bit frames and the source has more than 8 bits (hook, #15)."""
        from mattepod.media.reader import frame_depth

        return frame_depth(self.info, self.ensure_engine(), bool(self.keyframes))

    def prompt(self) -> np.ndarray:
        """The prompt mask on frame k (SAM 2 / detector freed afterwards unless keyframes need them)."""
        if self.prompt_mask is None:
            self.ensure_engine()
            self.prompt_mask = _prompt(self.cfg, self.info, self.first, self.main_spec, self.run_dir, "prompt")
            if not self.opts.keep_prompt_models and not self.keyframes:
                _free_prompt_models()
        return self.prompt_mask

    def _keyframe_mask(self, i: int, frame: np.ndarray) -> np.ndarray | None:
        spec = self.keyframes.get(i)
        if spec is None:
            return None
        return _prompt(self.cfg, self.info, self.first, spec, self.run_dir, f"keyframe_{i:06d}", frame)

    def _record_events(self, i: int, backward: bool = False) -> None:
        drain = getattr(self.engine, "drain_events", None)
        if drain is not None:
            self.events.write(i, drain(), backward)

    # -- backward ----------------------------------------------------------------------------------------

    @property
    def spill(self) -> Path:
        return self.run_dir / "spill"

    def backward(self) -> None:
        """Frames k-1 .. 0 in reverse, decoded in chunks (never the whole video), alphas spilled as uint16."""
        k, info = self.k, self.info
        if k == 0 or self.manifest.backward_done:
            return
        engine = self.ensure_engine()
        mask = self.prompt()
        self.events.trim(lambda r: r.get("pass") == "backward")
        self.spill.mkdir(exist_ok=True)
        self.progress.begin("backward", 0, total=k)
        engine.start(read_frame(info, self.first + k, depth=self.depth()), mask)
        self.started = True
        _ = getattr(engine, "drain_events", lambda: [])()  # frame k is recorded by the forward pass
        done = 0
        n = _chunk_len(info)
        for chunk in range((k - 1) // n, -1, -1):
            lo = chunk * n
            hi = min(k, lo + n)
            frames = list(read_frames(info, self.first + lo, hi - lo, depth=self.depth()))  # one bounded chunk
            out = np.zeros((n, info.height, info.width), np.uint16)
            for j in range(hi - lo - 1, -1, -1):
                self.cancel.check()
                i = lo + j
                out[j] = np.round(engine.step(frames[j], self._keyframe_mask(i, frames[j])) * 65535.0)
                self._record_events(i, backward=True)
                done += 1
                self.progress.update(done)
            np.save(_spill_path(self.spill, chunk), out)
            del frames
        self.events.close()
        self.manifest.backward_done = True
        self.manifest.save(self.run_dir)

    # -- forward -----------------------------------------------------------------------------------------

    def _resume_point(self) -> int:
        """Restore the engine state saved with the manifest; returns the frame decoding starts at.

        Without a usable state past the prompt frame (lost, unreadable, or a bad segment rolled back),
        the engine is replayed from the prompt frame: frames before ``frames_done`` are stepped again but
        not re-encoded, which gives the same bytes as an uninterrupted run."""
        done, k = self.manifest.frames_done, self.k
        state = load_state(self.run_dir, self.manifest) if done > 0 else None
        if state is not None:
            self.ensure_engine().set_state(state)
            self.started = True
            return done
        self.started = False
        if done > k:
            log.warning("no engine state for frame %d: replaying the engine from the prompt frame %d", done, k)
            return k
        return done

    def forward(self) -> None:
        """Frames 0 .. N-1 through decode -> engine -> encode; frames before k come from the spill."""
        encode_from = self.manifest.frames_done
        decode_from = self._resume_point()
        if not self.started:
            self.prompt()
        engine = self.ensure_engine()
        self.events.trim(lambda r: r.get("pass") != "backward" and r.get("frame", 0) >= decode_from)
        self.progress.begin("matting", encode_from, total=self.count)
        seg, count = self.seg_len, self.count
        t_wall = time.perf_counter()
        stage = EncodeStage(self, self.outs).start()
        frames = prefetch(read_frames(self.info, self.first + decode_from, count - decode_from, depth=self.depth()),
                          self.cfg.runtime.queue_size, self.clock)
        try:
            for i, frame in enumerate(frames, start=decode_from):
                self.cancel.check()
                encode = i >= encode_from
                if encode and i % seg == 0:
                    stage.open(i // seg, i)
                t = time.perf_counter()
                alpha = self._alpha(engine, i, frame)
                self.clock.add("engine", time.perf_counter() - t)
                self._record_events(i)
                done = i + 1
                if encode:
                    stage.frame(i, frame, alpha)
                    if _KILL_AT is not None and done == _KILL_AT:
                        os.kill(os.getpid(), signal.SIGKILL)
                    if done % seg == 0 or done == count:
                        blob = serialise_state(engine.get_state()) if self.started else None
                        stage.close(i // seg, done, blob)
                    self.progress.update(done)
            stage.finish()
        except BaseException as exc:
            stage.abort(keep_queued=not (isinstance(exc, (CancelledError, KeyboardInterrupt)) or self.cancel.flag.is_set()))
            raise
        finally:
            frames.close()  # stops the decode thread and its ffmpeg now, not when the traceback is freed
            self.events.close()
        self.progress.update(count, force=True)
        self.timings = self.clock.report(time.perf_counter() - t_wall, count - encode_from)

    def _alpha(self, engine: Engine, i: int, frame: np.ndarray) -> np.ndarray:
        if i < self.k:
            return _read_spill(self.spill, i, self.info)
        if i == self.k and not self.started:
            self.started = True
            return engine.start(frame, self.prompt())
        return engine.step(frame, self._keyframe_mask(i, frame) if i > self.k else None)

    # -- report --------------------------------------------------------------------------------------------

    def _engine_report(self) -> dict[str, Any]:
        report = getattr(self.engine, "report", None)
        return dict(report(self.events.read)) if report else {}

    def report(self) -> None:
        """metadata.json after the last frame: the engine's report, its event files, timings, frame counts.
        After a kill between the last segment and this step, the engine is rebuilt from its last state."""
        if self.engine is None:
            state = load_state(self.run_dir, self.manifest)
            if state is not None:
                self.ensure_engine().set_state(state)
        fields: dict[str, Any] = {**self._engine_report(), "frames": {"total": self.count, "done": self.count}}
        events = self.events.summary()
        if events:
            fields["events"] = events
        if self.timings is not None:
            fields["timings"] = self.timings
        self.folder.update(**fields)
        self.manifest.finalize.append("report")
        self.manifest.save(self.run_dir)


# ---- helpers (prompts, spill, previews) ----------------------------------------------------------------

def _free_prompt_models() -> None:
    """SAM 2 and the detector are done once the prompts are resolved: give their memory to matting."""
    import sys

    for mod in ("mattepod.sam", "mattepod.detect"):
        if mod in sys.modules:
            sys.modules[mod].clear_cache()


def _prompt(cfg: Config, info: MediaInfo, first: int, spec: PromptSpec, run_dir: Path, name: str,
            frame: np.ndarray | None = None) -> np.ndarray:
    if frame is None:
        frame = read_frame(info, first + spec.frame)
    try:
        res = resolve_prompt(spec, frame, cfg.resolved_weights_dir(), sam2_model=cfg.prompt.sam2_model,
                             device=device(cfg))
    except MaskError:
        if getattr(spec, "kind", "") == "auto_person" and spec.frame != cfg.prompt.frame and cfg.prompt.reprompt_every:
            log.warning("re-prompt at frame %d found nobody; keeping the current matte", spec.frame)
            return None  # type: ignore[return-value]
        raise
    (run_dir / "previews").mkdir(exist_ok=True)
    cv2.imwrite(str(run_dir / "previews" / f"{name}.png"), cv2.cvtColor(res.preview, cv2.COLOR_RGB2BGR))
    return res.mask.astype(np.float32)


def _chunk_len(info: MediaInfo) -> int:
    return max(1, min(64, SPILL_CHUNK_BYTES // (info.width * info.height * 3)))


def _spill_path(spill: Path, chunk: int) -> Path:
    return spill / f"{chunk:06d}.npy"


def _read_spill(spill: Path, i: int, info: MediaInfo) -> np.ndarray:
    n = _chunk_len(info)
    arr = np.load(_spill_path(spill, i // n), mmap_mode="r")
    return arr[i % n].astype(np.float32) / 65535.0


def _preview_frames(count: int, n: int) -> set[int]:
    if n <= 0:
        return set()
    return {int(round(x)) for x in np.linspace(0, count - 1, num=min(n, count))}


def _write_previews(run_dir: Path, i: int, frame: np.ndarray, alpha: np.ndarray, cfg: Config) -> None:
    d = run_dir / "previews"
    d.mkdir(exist_ok=True)
    cv2.imwrite(str(d / f"alpha_{i:06d}.png"), np.round(alpha * 255).astype(np.uint8))
    comp = over(frame, alpha, hex_rgb(cfg.outputs.color))
    cv2.imwrite(str(d / f"composite_{i:06d}.png"), cv2.cvtColor(comp, cv2.COLOR_RGB2BGR))
