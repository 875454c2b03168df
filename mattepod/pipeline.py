"""The entry point of a run: open (or reopen) and lock its folder, drive ``mattepod.run.Run``, and record
how it ended in metadata.json (completed, failed, cancelled), whatever happens.

The run itself (steps, threads, segments, engine hook) is ``mattepod/run.py``; the join is
``mattepod/finalize.py``. Here lives what surrounds it: the probe and frame range (done once), resume and
auto-resume, the one-writer lock, the pre-reserved space that lets the failure record land on a full
disk, and the mapping of every failure to its one-line error and exit code.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

import mattepod
from mattepod import config as config_mod, quality
from mattepod.checkpoint import Manifest, ManifestDamaged, sha256_file
from mattepod.config import Config
from mattepod.errors import CancelledError, InvalidMediaError, MaskError, MattePodError, RunStateError
from mattepod.media.probe import MediaInfo, probe
from mattepod.media.tools import binary
from mattepod.progress import Progress
from mattepod.run import (Cancel, Run, RunOptions, ScaledEngine, StageClock, build_engine,  # noqa: F401 - API
                          prefetch)
from mattepod.runfolder import CONFIG, RunFolder, open_for_new_run, os_error, read_json, write_atomic, writing
from mattepod.runlock import RunLock, in_use

log = logging.getLogger("mattepod.pipeline")


@dataclass
class RunResult:
    run_dir: Path
    status: str
    outputs: dict[str, str]
    metadata: dict[str, Any]


# plan / probe / frame range live in mattepod/plan.py: a dry run must not import torch (issue 12)
from mattepod.plan import frame_range as _frame_range  # noqa: E402,F401
from mattepod.plan import plan  # noqa: E402,F401
from mattepod.plan import probe_input as _probe_input  # noqa: E402,F401


def run(cfg: Config, opts: RunOptions | None = None) -> RunResult:
    """Run a job to completion (or a clear failure recorded in metadata.json). Resumable."""
    opts = opts or RunOptions()
    info: MediaInfo | None = None
    if not opts.resume:  # a new run: bad input fails before any folder exists
        info = _probe_input(cfg)
        first, count = _frame_range(cfg, info)
        quality.precheck(cfg, info, first, count)  # issue 17: a ground truth that does not fit stops here
        if cfg.recovery.auto_resume and opts.run_dir is None:
            found = find_resumable(Path(cfg.output_dir), cfg)
            if found is not None:
                log.info("auto_resume: continuing %s", found)
                opts = replace(opts, resume=found)
    if opts.resume:
        folder, lock = _reopen(Path(opts.resume))
    else:
        folder, lock = open_for_new_run(Path(cfg.output_dir), Path(cfg.input or "input").stem, opts.run_dir)
    try:
        return _run_locked(folder, cfg, info, opts)
    finally:
        folder.release_reserve()
        lock.release()


def _run_locked(folder: RunFolder, cfg: Config, info: MediaInfo | None, opts: RunOptions) -> RunResult:
    handler: logging.Handler | None = None
    progress: Progress | None = None
    with Cancel() as cancel:
        try:
            with writing():
                handler = folder.attach_log()
                folder.reserve()
                if opts.resume:
                    cfg = _load_run_config(folder.path)
                else:
                    write_atomic(folder.path / CONFIG, config_mod.dump(cfg))
                folder.update(status="running", error=None, config_file=CONFIG, versions=_versions(), pid=os.getpid(),
                              started=folder.metadata().get("started") or time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            if info is None:
                info = _probe_input(cfg)  # the probe and frame range are done once per process
            first, count = _frame_range(cfg, info)
            manifest = _manifest(folder.path, cfg, count)
            folder.update(input=info.to_json(), frames={"total": count, "done": manifest.frames_done})
            progress = Progress(count, folder.path, opts.progress_json, opts.progress_bar, opts.listener)
            progress.emit({"event": "start", "run_dir": str(folder.path), "total": count})
            the_run = _make_run(cfg, info, first, count, folder, manifest, progress, cancel, opts)
            outputs = the_run.execute()
            meta = folder.update(status="completed", outputs=outputs, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            progress.emit({"event": "done", "status": "completed", "run_dir": str(folder.path), "outputs": outputs,
                           "error": None})
            return RunResult(folder.path, "completed", outputs, meta)
        except BaseException as exc:
            raise _record_failure(folder, exc, cancel, progress, opts) from None
        finally:
            if progress is not None:
                progress.close()
            if handler is not None:
                logging.getLogger("mattepod").removeHandler(handler)
                handler.close()


def _record_failure(folder: RunFolder, exc: BaseException, cancel: Cancel, progress: Progress | None,
                    opts: RunOptions) -> BaseException:
    """Write how the run ended (never raising, also on a full disk) and return the error to raise."""
    err: BaseException = exc
    if isinstance(exc, OSError):
        err = os_error(exc)
    cancelled = isinstance(exc, (CancelledError, KeyboardInterrupt)) or cancel.flag.is_set()
    if cancelled and not isinstance(err, CancelledError):
        # SIGTERM reaches the ffmpeg children too: their broken pipes are the cancel, not a failure
        err = CancelledError("run cancelled", f"resume it later with --resume {folder.path}")
    status = "cancelled" if cancelled else "failed"
    known = err if isinstance(err, MattePodError) else None
    error = {"type": type(err).__name__, "message": str(err) or type(err).__name__,
             "exit_code": known.exit_code if known else 1}
    folder.release_reserve()  # room for the log line and the record on a full disk
    log.error("run %s: %s", status, error["message"])
    folder.record_end(status=status, error=error)
    event = {"event": "done", "status": status, "run_dir": str(folder.path), "outputs": {}, "error": error}
    try:
        if progress is not None:
            progress.emit(event)
        elif opts.progress_json or opts.listener:
            Progress(0, None, opts.progress_json, False, opts.listener).emit(event)
    except Exception:  # noqa: BLE001 - stdout gone (closed pipe) must not hide the run's own error
        pass
    if err is not exc:
        err.__cause__ = exc if not cancelled else None
    return err


def _make_run(cfg: Config, info: MediaInfo, first: int, count: int, folder: RunFolder, manifest: Manifest,
              progress: Progress, cancel: Cancel, opts: RunOptions) -> Run:
    layout = None
    if cfg.stereo.mode == "vr180":
        from mattepod.stereo import detect_layout

        layout = detect_layout(info.path, info.width, info.height, info.side_data, tags=info.tags, config=cfg.stereo)
        log.info("VR180 layout %s (from %s)", layout.arrangement, layout.origin)
    encoders = _pick_encoders(cfg)
    folder.update(encoder=encoders, weights=_weights_used(cfg), segment_frames=manifest.segment_frames)
    if cfg.prompt.subjects:  # several subjects (#16)
        from mattepod.subjectrun import SubjectsRun

        return SubjectsRun(cfg, info, first, count, folder, manifest, progress, cancel, opts, encoders, layout)
    return Run(cfg, info, first, count, folder, manifest, progress, cancel, opts, encoders, layout)


def _manifest(run_dir: Path, cfg: Config, count: int) -> Manifest:
    """The run's manifest: new, loaded, or (damaged) started afresh in the same folder with a warning."""
    try:
        manifest = Manifest.load(run_dir)
    except ManifestDamaged as exc:
        log.warning("manifest.json of %s is damaged (%s): redoing the run from the first frame", run_dir, exc)
        manifest = None
    if manifest is not None and manifest.total_frames != count:
        raise RunStateError(f"the input of {run_dir} changed ({count} frames now, {manifest.total_frames} before)",
                            "resume only with the same input; start a new run otherwise")
    if manifest is None:
        manifest = Manifest(segment_frames=cfg.recovery.segment_frames, total_frames=count)
        manifest.save(run_dir)
    return manifest


def _reopen(path: Path) -> tuple[RunFolder, RunLock]:
    if path.exists() and not path.is_dir():
        raise RunStateError(f"{path} is a file, not a run folder", "give the run folder printed when the run started")
    folder = RunFolder(path)
    if not (path / CONFIG).is_file() or not (path / "metadata.json").is_file():
        raise RunStateError(f"{path} is not a MattePod run folder (no {CONFIG} / metadata.json)",
                            "give the run folder printed when the run started")
    with writing():
        lock = RunLock.acquire(path)
    if folder.status() == "completed":
        lock.release()
        raise RunStateError(f"run {path} is already completed", "nothing to resume; start a new run for new output")
    return folder, lock


def _load_run_config(path: Path) -> Config:
    try:
        return config_mod.load(path / CONFIG)
    except MattePodError as exc:
        raise RunStateError(f"the config.yaml of run {path} cannot be used ({exc.problem})",
                            "start a new run with your config") from None


def find_resumable(output_dir: Path, cfg: Config) -> Path | None:
    """Newest unfinished run of the same input and config (recovery.auto_resume); runs in use are skipped."""
    if not output_dir.is_dir():
        return None
    want = config_mod.dump(cfg)
    candidates = []
    for meta_path in output_dir.glob("*/metadata.json"):
        run_dir = meta_path.parent
        meta = read_json(meta_path) or {}
        if meta.get("status") in ("running", "failed", "cancelled") and (run_dir / "manifest.json").exists():
            try:
                same = (run_dir / CONFIG).read_bytes() == want.encode()
            except OSError:
                same = False
            if same and not in_use(run_dir):
                candidates.append(run_dir)
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


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
    prompts = [p, *p.keyframes, *p.subjects, *(k for s in p.subjects for k in s.keyframes)]  # subjects: #16
    if p.reprompt_every or any(q.points or q.box or q.auto_person for q in prompts):
        names = [f"sam2.1_{p.sam2_model}"] + (["person_detector"] if p.reprompt_every
                                               or any(q.auto_person for q in prompts) else [])
        for name in names:
            folder = weights.model_dir(name, wdir)
            files += [(name, folder / wf.filename) for wf in weights.MODELS[name].files if (folder / wf.filename).is_file()]
    out = []
    for model, f in files:
        rec = (read_record(f.parent).get("files") or {}).get(f.name, {})
        st = f.stat()
        known = rec.get("sha256") if rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns else None
        out.append({"model": model, "file": str(f), "sha256": known or sha256_file(f)})
    return out
