"""The run: reader -> prompt -> engine -> outputs, with bounded queues, segments, checkpoints and metadata.

This is the only module that knows every other one. The loop itself stays short:

    decode thread --(bounded queue)--> main thread: engine.step --(bounded queue)--> encode thread

The encode thread owns the output writers; at each segment boundary the main thread hands it the engine
state (serialised at that frame), and the encode thread commits the segment (files closed, state written,
manifest replaced) before it takes the next frame. A prompt on frame k > 0 first runs backward from k to 0,
spilling alphas to disk in chunks; the forward pass then emits frames in normal order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

import mattepod
from mattepod import config as config_mod
from mattepod import proxies
from mattepod.checkpoint import Manifest, commit_segment, load_state, serialise_state
from mattepod.config import Config
from mattepod.engine import Engine, MaskFollowEngine, check_alpha
from mattepod.errors import CancelledError, DiskFullError, InvalidMediaError, MaskError, MattePodError, RunStateError
from mattepod.media.probe import MediaInfo, probe
from mattepod.media.reader import read_frame, read_frames
from mattepod.media.tools import binary
from mattepod.outputs import OutputSet, over, hex_rgb
from mattepod.progress import Progress
from mattepod.prompts import PromptSpec, resolve_prompt, specs_from_config
from mattepod.runfolder import CONFIG, RunFolder, open_for_new_run, read_json

log = logging.getLogger("mattepod.pipeline")

_END = object()
# Fault injection for the crash/resume tests (TEST.md): SIGKILL this process after N frames of matting.
_KILL_AT = int(os.environ.get("MATTEPOD_TEST_KILL_AT_FRAME", "0")) or None
SPILL_CHUNK_BYTES = 256 << 20  # frames decoded at once for the backward pass


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


def build_engine(cfg: Config) -> Engine:
    """The engine named in config (mono). VR180 wraps two of these per eye (mattepod.stereo)."""
    if cfg.engine.name == "mask":
        return MaskFollowEngine()
    from mattepod.matting import build_engine as build_matting  # torch-heavy; only when asked for

    return build_matting(cfg.engine, cfg.resolved_weights_dir())


class ScaledEngine:
    """Runs an engine at ``scale`` of the input size and brings the alpha back to full size."""

    def __init__(self, inner: Engine, scale: float):
        self.inner, self.scale = inner, scale
        self.name = getattr(inner, "name", "engine")

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


@dataclass
class RunResult:
    run_dir: Path
    status: str
    outputs: dict[str, str]
    metadata: dict[str, Any]


def plan(cfg: Config) -> dict[str, Any]:
    """What a run would do (``--dry-run``): validated config + input probe + frame range; creates nothing."""
    info = _probe_input(cfg)
    first, count = _frame_range(cfg, info)
    return {"input": info.to_json(), "start_frame": first, "frames": count, "engine": cfg.engine.name,
            "outputs": list(cfg.outputs.formats), "prompt_frame": cfg.prompt.frame,
            "segments": -(-count // cfg.recovery.segment_frames), "stereo": cfg.stereo.mode,
            "weights_dir": str(cfg.resolved_weights_dir())}


def _probe_input(cfg: Config) -> MediaInfo:
    if not cfg.input:
        raise config_mod.ConfigError("no input given", "pass --input VIDEO or set input: in the config")
    binary("ffmpeg")
    return probe(cfg.input)


def _frame_range(cfg: Config, info: MediaInfo) -> tuple[int, int]:
    if cfg.start_frame >= info.frame_count:
        raise InvalidMediaError(f"start_frame {cfg.start_frame} is beyond the end ({info.frame_count} frames)",
                                f"choose a start frame below {info.frame_count}")
    count = info.frame_count - cfg.start_frame
    if cfg.max_frames:
        count = min(count, cfg.max_frames)
    for spec in [cfg.prompt.frame, *(k.frame for k in cfg.prompt.keyframes)]:
        if spec >= count:
            raise MaskError(f"prompt frame {spec} is beyond the last processed frame ({count - 1})",
                            "choose a prompt frame inside the processed range")
    return cfg.start_frame, count


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import torch

    try:
        ff = subprocess.run([binary("ffmpeg"), "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    except MattePodError:
        ff = "missing"
    return {"mattepod": mattepod.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "ffmpeg": ff, "cuda": str(torch.cuda.is_available())}


def _pick_encoders(cfg: Config) -> dict[str, str]:
    try:
        from mattepod.media.encoders import pick_encoder  # GPU probe (NVENC where it really works)
    except ImportError:
        return {"h264": "libx264", "hevc": "libx265"}
    return {"h264": pick_encoder("h264", cfg.outputs.encoder), "hevc": pick_encoder("hevc", cfg.outputs.encoder)}


class _Cancel:
    """SIGTERM/SIGINT -> a CancelledError at the next frame (the UI's Cancel kills the process group)."""

    def __init__(self) -> None:
        self.flag = threading.Event()
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_Cancel":
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


def run(cfg: Config, opts: RunOptions | None = None) -> RunResult:
    """Run a job to completion (or a clear failure recorded in metadata.json). Resumable."""
    opts = opts or RunOptions()
    if opts.resume:
        folder, cfg, manifest = _reopen(Path(opts.resume))
    else:
        info = _probe_input(cfg)
        _frame_range(cfg, info)
        if cfg.recovery.auto_resume and opts.run_dir is None:
            found = find_resumable(Path(cfg.output_dir), cfg)
            if found is not None:
                log.info("auto_resume: continuing %s", found)
                return run(cfg, RunOptions(**{**opts.__dict__, "resume": found}))
        stem = Path(cfg.input or "input").stem
        folder = open_for_new_run(Path(cfg.output_dir), stem, opts.run_dir)
        manifest = None
        (folder.path / CONFIG).write_text(config_mod.dump(cfg))
    handler = folder.attach_log()
    progress: Progress | None = None
    try:
        with _Cancel() as cancel:
            meta_base = {"status": "running", "error": None, "config_file": CONFIG, "versions": _versions(),
                         "pid": os.getpid(), "started": folder.metadata().get("started") or time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            folder.update(**meta_base)
            info = _probe_input(cfg)
            first, count = _frame_range(cfg, info)
            folder.update(input=info.to_json(), frames={"total": count, "done": manifest.frames_done if manifest else 0})
            progress = Progress(count, folder.path, opts.progress_json, opts.progress_bar, opts.listener)
            progress.emit({"event": "start", "run_dir": str(folder.path), "total": count})
            outputs = _execute(cfg, info, first, count, folder, manifest, progress, cancel, opts)
            folder.update(proxies=proxies.write_for_run(folder.path, outputs))  # browser previews (app, #13)
        meta = folder.update(status="completed", outputs=outputs, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        progress.emit({"event": "done", "status": "completed", "run_dir": str(folder.path), "outputs": outputs, "error": None})
        return RunResult(folder.path, "completed", outputs, meta)
    except BaseException as exc:
        err = exc if isinstance(exc, MattePodError) else None
        if isinstance(exc, OSError) and getattr(exc, "errno", None) == 28:
            err = DiskFullError("disk full", "free space in the output volume, then --resume the run")
        status = "cancelled" if isinstance(exc, (CancelledError, KeyboardInterrupt)) else "failed"
        error = {"type": type(err or exc).__name__, "message": str(err or exc) or type(exc).__name__,
                 "exit_code": err.exit_code if err else 1}
        log.error("run %s: %s", status, error["message"])
        folder.update(status=status, error=error)
        event = {"event": "done", "status": status, "run_dir": str(folder.path), "outputs": {}, "error": error}
        if progress is not None:
            progress.emit(event)
        elif opts.progress_json or opts.listener:
            Progress(0, None, opts.progress_json, False, opts.listener).emit(event)
        if err is not None and err is not exc:
            raise err from exc
        raise
    finally:
        if progress is not None:
            progress.close()
        logging.getLogger("mattepod").removeHandler(handler)
        handler.close()


def _reopen(path: Path) -> tuple[RunFolder, Config, Manifest | None]:
    folder = RunFolder(path)
    meta = folder.metadata()
    if not (path / CONFIG).is_file() or not meta:
        raise RunStateError(f"{path} is not a MattePod run folder (no {CONFIG} / metadata.json)",
                            "give the run folder printed when the run started")
    if meta.get("status") == "completed":
        raise RunStateError(f"run {path} is already completed", "nothing to resume; start a new run for new output")
    cfg = config_mod.load(path / CONFIG)
    return folder, cfg, Manifest.load(path)


def find_resumable(output_dir: Path, cfg: Config) -> Path | None:
    """Newest unfinished run of the same input and config (recovery.auto_resume)."""
    if not output_dir.is_dir():
        return None
    want = config_mod.dump(cfg)
    candidates = []
    for meta_path in output_dir.glob("*/metadata.json"):
        meta = read_json(meta_path) or {}
        if meta.get("status") in ("running", "failed", "cancelled") and (meta_path.parent / "manifest.json").exists():
            if (meta_path.parent / CONFIG).read_text() == want:
                candidates.append(meta_path.parent)
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def _weights_used(cfg: Config) -> list[dict[str, str]]:
    """Every weights file this run reads, with its sha256 (metadata.json: which exact model made this)."""
    from mattepod import weights
    from mattepod.download import read_record

    wdir = cfg.resolved_weights_dir()
    files: list[tuple[str, Path]] = []
    if cfg.engine.name == "matanyone":
        from mattepod.matting import find_matanyone_weights

        src = find_matanyone_weights(cfg.engine.model, wdir)
        files += [(cfg.engine.model, f) for f in (sorted(src.iterdir()) if src.is_dir() else [src])
                  if f.is_file() and not f.name.startswith(".")]
    p = cfg.prompt
    if p.points or p.box or p.auto_person or p.reprompt_every or any(k.points or k.box or k.auto_person for k in p.keyframes):
        names = [f"sam2.1_{p.sam2_model}"] + (["person_detector"] if p.auto_person or p.reprompt_every
                                               or any(k.auto_person for k in p.keyframes) else [])
        for name in names:
            folder = weights.model_dir(name, wdir)
            files += [(name, folder / wf.filename) for wf in weights.MODELS[name].files if (folder / wf.filename).is_file()]
    out = []
    for model, f in files:
        rec = (read_record(f.parent).get("files") or {}).get(f.name, {})
        st = f.stat()
        known = rec.get("sha256") if rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns else None
        out.append({"model": model, "file": str(f), "sha256": known or _sha256(f)})
    return out


def _execute(cfg: Config, info: MediaInfo, first: int, count: int, folder: RunFolder, manifest: Manifest | None,
             progress: Progress, cancel: _Cancel, opts: RunOptions) -> dict[str, str]:
    run_dir = folder.path
    stem = Path(info.path).stem
    seg_len = cfg.recovery.segment_frames
    if manifest is None:
        manifest = Manifest(segment_frames=seg_len, total_frames=count)
        manifest.save(run_dir)
    elif manifest.total_frames != count:
        raise RunStateError(f"the input of {run_dir} changed ({count} frames now, {manifest.total_frames} before)",
                            "resume only with the same input; start a new run otherwise")
    encoders = _pick_encoders(cfg)
    folder.update(encoder=encoders, weights=_weights_used(cfg), segment_frames=seg_len)
    factory = opts.engine_factory or build_engine
    specs = specs_from_config(cfg.prompt)
    main_spec = specs[0]
    keyframes = {s.frame: s for s in specs[1:]}
    if cfg.prompt.reprompt_every:
        from mattepod.prompts import auto_spec

        for f in range(main_spec.frame + cfg.prompt.reprompt_every, count, cfg.prompt.reprompt_every):
            keyframes.setdefault(f, auto_spec(cfg.prompt, f))
    k = main_spec.frame
    layout = None
    stereo_log = None
    if cfg.stereo.mode == "vr180":
        engine, layout = _stereo_engine(cfg, info, factory, main_spec)
        stereo_log = (run_dir / "stereo_consistency.jsonl").open("a")
        folder.update(stereo={"layout": layout.to_dict()})
        log.info("VR180 layout %s (from %s)", layout.arrangement, layout.origin)
    else:
        engine = ScaledEngine(factory(cfg), cfg.scale)
    prompt_mask = _prompt(cfg, info, first, main_spec, run_dir, "prompt")
    if not opts.keep_prompt_models and not keyframes:
        _free_prompt_models()

    spill = run_dir / "spill"
    if k > 0 and not manifest.backward_done:
        _backward(cfg, info, first, k, engine, prompt_mask, keyframes, spill, progress, cancel, run_dir)
        manifest.backward_done = True
        manifest.save(run_dir)

    outs = OutputSet(run_dir, stem, info.width, info.height, info.fps, cfg.outputs, encoders, layout, cfg.stereo.fov,
                     info.color)
    preview_at = _preview_frames(count, cfg.outputs.previews)
    clock = StageClock()
    i0 = manifest.frames_done
    state = load_state(run_dir, manifest)
    if state is not None:
        engine.set_state(state)
    started = state is not None
    progress.begin("matting", i0, total=count)
    t_wall = time.perf_counter()

    encode_q: queue.Queue = queue.Queue(maxsize=cfg.runtime.queue_size)
    writer_error: list[BaseException] = []

    def encode_worker() -> None:
        try:
            while True:
                item = encode_q.get()
                if item is _END:
                    return
                kind = item[0]
                t = time.perf_counter()
                if kind == "open":
                    outs.open_segment(item[1], first + item[2])
                elif kind == "frame":
                    _, i, frame, alpha = item
                    outs.write(i, frame, alpha)
                    if i in preview_at:
                        _write_previews(run_dir, i, frame, alpha, cfg)
                    clock.add("encode", time.perf_counter() - t)
                elif kind == "close":
                    _, seg, done, blob = item
                    outs.close_segment()
                    commit_segment(run_dir, manifest, seg, done, blob)
                    folder.update(frames={"total": count, "done": done})
                    clock.add("encode", time.perf_counter() - t, 0)
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            writer_error.append(exc)
            outs.abort()
            while encode_q.get() is not _END:
                pass

    writer = threading.Thread(target=encode_worker, daemon=True, name="mattepod-encode")
    writer.start()

    def put(item: Any) -> None:
        while True:
            if writer_error:
                raise writer_error[0]
            try:
                encode_q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    try:
        frames = prefetch(read_frames(info, first + i0, count - i0), cfg.runtime.queue_size, clock)
        for i, frame in enumerate(frames, start=i0):
            cancel.check()
            if i % seg_len == 0:
                put(("open", i // seg_len, i))
            t = time.perf_counter()
            if i < k:
                alpha = _read_spill(spill, i, info)
            elif i == k and not started:
                alpha = engine.start(frame, prompt_mask)
                started = True
            else:
                spec = keyframes.get(i)
                mask = _prompt(cfg, info, first, spec, run_dir, f"keyframe_{i:06d}", frame) if spec and i > k else None
                alpha = engine.step(frame, mask)
            clock.add("engine", time.perf_counter() - t)
            if stereo_log is not None:
                _log_consistency(engine, stereo_log, i, k)
            put(("frame", i, frame, alpha))
            done = i + 1
            if _KILL_AT is not None and done == _KILL_AT:
                os.kill(os.getpid(), signal.SIGKILL)
            if done % seg_len == 0 or done == count:
                blob = serialise_state(engine.get_state()) if started else None
                put(("close", i // seg_len, done, blob))
            progress.update(done)
        put(_END)
        writer.join()
        if writer_error:
            raise writer_error[0]
    except BaseException:
        if writer.is_alive():
            try:
                encode_q.put_nowait(_END)
            except queue.Full:
                pass
            writer.join(timeout=30)
        raise
    wall = time.perf_counter() - t_wall
    progress.update(count, force=True)
    if stereo_log is not None:
        stereo_log.close()
        folder.update(stereo={"layout": layout.to_dict(), "consistency": engine.summary(),
                              "consistency_file": "stereo_consistency.jsonl",
                              "flagged_frames": _flagged(run_dir / "stereo_consistency.jsonl")})
    folder.update(timings=clock.report(wall, count - i0), frames={"total": count, "done": count})
    progress.emit({"event": "progress", "stage": "joining", "frame": count, "total": count, "fps": None, "eta": None})
    result = outs.finalize(-(-count // seg_len), info, first, count)
    shutil.rmtree(spill, ignore_errors=True)
    shutil.rmtree(run_dir / "state", ignore_errors=True)
    folder.update(previews=sorted(str(p.relative_to(run_dir)) for p in (run_dir / "previews").glob("*.png")))
    return result


def _stereo_engine(cfg: Config, info: MediaInfo, factory: Callable[[Config], Engine], spec: PromptSpec):
    """VR180: two engines (one per eye) behind the mono Engine protocol; the slave eye's prompt is the
    master's moved by the subject's disparity, refined by SAM 2 when the prompt was clicks or a box."""
    from mattepod.stereo import StereoEngine, detect_layout

    layout = detect_layout(info.path, info.width, info.height, info.side_data, tags=info.tags, config=cfg.stereo)
    def sam2_refine(eye: np.ndarray, points: Any, box: Any) -> np.ndarray:
        from mattepod.sam import get_prompter

        prompter = get_prompter(cfg.prompt.sam2_model, cfg.resolved_weights_dir(), _device(cfg))
        return prompter.mask_for(eye, list(points or []), box)

    engine = StereoEngine.from_config(lambda: factory(cfg), layout, cfg.stereo, scale=cfg.scale,
                                      refine=sam2_refine if spec.points or spec.box else None)
    if spec.points or spec.box:
        from mattepod.stereo import to_eye_coords

        eye_pts = []
        for x, y, label in spec.points:
            px, py = (x * info.width, y * info.height) if spec.normalized else (x, y)
            _eye, ex, ey = to_eye_coords(px, py, layout, (info.width, info.height))
            eye_pts.append((ex, ey, label))
        engine.prompt_points = eye_pts
        if spec.box:
            x0, y0, x1, y1 = spec.box
            if spec.normalized:
                x0, x1, y0, y1 = x0 * info.width, x1 * info.width, y0 * info.height, y1 * info.height
            _e, ex0, ey0 = to_eye_coords(x0, y0, layout, (info.width, info.height))
            _e, ex1, ey1 = to_eye_coords(x1, y1, layout, (info.width, info.height))
            engine.prompt_box = (ex0, ey0, ex1, ey1)
    return engine, layout


def _log_consistency(engine: Any, out: Any, i: int, k: int) -> None:
    for rec in engine.drain_consistency():
        rec = dict(rec)
        rec["frame"] = i
        out.write(json.dumps(rec) + "\n")


def _flagged(path: Path) -> list[int]:
    if not path.is_file():
        return []
    recs = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return [r["frame"] for r in recs if r.get("flagged")]


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
                             device=_device(cfg))
    except MaskError:
        if getattr(spec, "kind", "") == "auto_person" and spec.frame != cfg.prompt.frame and cfg.prompt.reprompt_every:
            log.warning("re-prompt at frame %d found nobody; keeping the current matte", spec.frame)
            return None  # type: ignore[return-value]
        raise
    (run_dir / "previews").mkdir(exist_ok=True)
    cv2.imwrite(str(run_dir / "previews" / f"{name}.png"), cv2.cvtColor(res.preview, cv2.COLOR_RGB2BGR))
    return res.mask.astype(np.float32)


def _device(cfg: Config) -> str:
    if cfg.engine.device != "auto":
        return cfg.engine.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _chunk_len(info: MediaInfo) -> int:
    return max(1, min(64, SPILL_CHUNK_BYTES // (info.width * info.height * 3)))


def _spill_path(spill: Path, chunk: int) -> Path:
    return spill / f"{chunk:06d}.npy"


def _read_spill(spill: Path, i: int, info: MediaInfo) -> np.ndarray:
    n = _chunk_len(info)
    arr = np.load(_spill_path(spill, i // n), mmap_mode="r")
    return arr[i % n].astype(np.float32) / 65535.0


def _backward(cfg: Config, info: MediaInfo, first: int, k: int, engine: Engine, mask: np.ndarray,
              keyframes: dict[int, PromptSpec], spill: Path, progress: Progress, cancel: _Cancel, run_dir: Path) -> None:
    """Frames k-1 .. 0 in reverse, decoded in chunks (never the whole video), alphas spilled as uint16."""
    spill.mkdir(exist_ok=True)
    progress.begin("backward", 0, total=k)
    engine.start(read_frame(info, first + k), mask)
    done = 0
    n = _chunk_len(info)
    for chunk in range((k - 1) // n, -1, -1):
        lo = chunk * n
        hi = min(k, lo + n)
        frames = list(read_frames(info, first + lo, hi - lo))  # one bounded chunk
        out = np.zeros((n, info.height, info.width), np.uint16)
        for j in range(hi - lo - 1, -1, -1):
            cancel.check()
            i = lo + j
            spec = keyframes.get(i)
            kmask = _prompt(cfg, info, first, spec, run_dir, f"keyframe_{i:06d}", frames[j]) if spec else None
            out[j] = np.round(engine.step(frames[j], kmask) * 65535.0)
            done += 1
            progress.update(done)
        np.save(_spill_path(spill, chunk), out)
        del frames
    if hasattr(engine, "drain_consistency"):
        engine.drain_consistency()  # the forward pass restarts at k and records its own series


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
