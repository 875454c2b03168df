"""Jobs: every run is its own process, queued one GPU job at a time, and readable again after a restart.

The UI (and anything else that wants background runs) creates a run folder, writes the job's config into it
and hands it to a ``JobManager``. The manager starts ``scripts/run_inference.py <run>/config.yaml --run-dir
<run> --progress-json`` in a new session (its own process group), so an out-of-memory crash kills only that
job, the GPU memory goes with the process, and Cancel can kill the whole group (ffmpeg children included).

The job's stdout (one JSON object per line) goes to ``<run>/job.stdout.jsonl`` and stderr to
``<run>/job.stderr.log`` -- files, not pipes, so a job keeps running when the app is closed or restarted,
and a restarted app can still follow it. ``<run>/job.json`` holds what only the job layer knows (queued,
pid, cancelled, exit code); the CLI's ``metadata.json`` holds the rest. ``read_job`` merges both, so the job
list is rebuilt from the output folder alone.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from mattepod import config as configmod
from mattepod import paths, settings
from mattepod.errors import ConfigError, InputNotFoundError, MattePodError, RunStateError
from mattepod.runfolder import METADATA, new_run_dir

if TYPE_CHECKING:
    import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SCRIPT = REPO_ROOT / "scripts" / "run_inference.py"

class Status(str, Enum):
    """Every status a run or job can have (metadata.json, job.json, the UI, the batch summary, the worker)."""

    QUEUED = "queued"  # job layer only: waiting for a slot
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"  # stopped on purpose; resumable
    INTERRUPTED = "interrupted"  # the process is gone without a final status (kill -9, pod restart); resumable


# plain strings in files and JSON
QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED, INTERRUPTED = (s.value for s in Status)
FINAL = {COMPLETED, FAILED, CANCELLED, INTERRUPTED}
JOB_FILE, STDOUT_FILE, STDERR_FILE = "job.json", "job.stdout.jsonl", "job.stderr.log"


# ---------------------------------------------------------------- resume policy -------------------------------

def resume_command(run: str | os.PathLike) -> list[str]:
    """The command that continues an unfinished run folder (its own config.yaml and prompt are inside)."""
    return ["python", "-m", "mattepod", "run", "--resume", str(run)]


def resume_hint(run: str | os.PathLike) -> str:
    return "resume it: " + shlex.join(resume_command(run))


def next_action(run: str | os.PathLike) -> str:
    """The one resume policy of a deterministic run folder (batch, serverless retries): ``skip`` a completed
    run (finished work is never redone or overwritten), ``resume`` any other run that left metadata, ``new``
    when the folder holds no run yet."""
    try:
        meta = json.loads((Path(run) / METADATA).read_text())
    except (OSError, ValueError):
        return "new"
    if not isinstance(meta, dict):
        return "new"
    return "skip" if meta.get("status") == COMPLETED else "resume"


# ---------------------------------------------------------------- paths ---------------------------------------

@dataclass(frozen=True)
class Roots:
    """The only folders a web-facing job may read from or write to."""

    input: Path
    output: Path
    weights: Path

    @classmethod
    def from_env(cls) -> "Roots":
        """INPUT_DIR, OUTPUT_DIR, MODEL_CACHE_DIR; without INPUT_DIR the input folder sits next to the output
        folder (``/workspace/input`` beside ``/workspace/output``: uploads land on the same volume)."""
        env = settings.get()
        output = Path(env.output_dir or "output").resolve()
        default_input = output.parent / "input" if env.output_dir else Path("input")
        return cls(Path(env.input_dir or default_input).resolve(), output,
                   Path(env.model_cache_dir or "weights").resolve())

    def all(self) -> list[Path]:
        return [self.input, self.output, self.weights]

    def confinement(self) -> paths.Roots:
        """The app's confinement rule: read the input and output folders, write run folders into the output
        folder, weights only from the weights folder; a relative path names a file in the input folder."""
        return paths.Roots.of(read=[self.input], write=[self.output], weights=[self.weights], base=self.input)


inside = paths.inside  # every path that arrives over the web goes through the one rule (mattepod.paths)


def check_job_id(job_id: str) -> str:
    """A job id is a run folder's bare name; anything else (slashes, '..') is refused."""
    try:
        return paths.safe_name((job_id or "").strip(), "job id")
    except ConfigError:
        raise RunStateError(f"{job_id!r} is not a job id", "use an id returned by submit or listed by list_jobs") from None


# ---------------------------------------------------------------- run folders ---------------------------------

def create_run(cfg: configmod.Config, output_dir: str | Path, stem: str | None = None,
               mask: "np.ndarray | None" = None, keyframe_masks: "dict[int, np.ndarray] | None" = None,
               subjects: "list[dict] | None" = None,
               subject_masks: "dict[tuple[str, int], np.ndarray] | None" = None, kind: str = "run") -> Path:
    """Make ``<output>/<stem>_<YYYYmmdd-HHMMSS>/`` (a suffix when taken), write config.yaml and job.json.

    ``mask`` (float (H, W) in [0, 1], e.g. SAM 2 + brush edits from the UI) is saved as the run's own
    ``prompt_mask.png`` and becomes ``prompt.mask``, so the job needs no SAM 2 and the run is repeatable.
    ``keyframe_masks`` ({frame: mask}, corrections made on other frames) become ``keyframe_NNNNNN.png``
    entries of ``prompt.keyframes`` the same way. ``kind`` is recorded in job.json: ``run``, or ``preview``
    for the page's short low-resolution check of a prompt (kept apart from the Jobs list, see app/preview.py).
    """
    output_dir = Path(output_dir).resolve()
    run = new_run_dir(output_dir, paths.slug(stem or Path(cfg.input or "run").stem))  # the one naming
    data = cfg.model_dump(mode="json")
    data["output_dir"] = str(output_dir)
    if mask is not None:
        import cv2
        import numpy as np

        png = run / "prompt_mask.png"
        cv2.imwrite(str(png), (np.clip(np.asarray(mask, np.float32), 0, 1) * 255).round().astype(np.uint8))
        data["prompt"].update(mask=str(png), points=[], box=None)
    for frame, kmask in sorted((keyframe_masks or {}).items()):
        import cv2
        import numpy as np

        png = run / f"keyframe_{int(frame):06d}.png"
        cv2.imwrite(str(png), (np.clip(np.asarray(kmask, np.float32), 0, 1) * 255).round().astype(np.uint8))
        data["prompt"]["keyframes"] = [k for k in data["prompt"].get("keyframes") or [] if k["frame"] != frame]
        data["prompt"]["keyframes"].append({"frame": int(frame), "mask": str(png)})
    if subjects:  # several subjects (#16): masks saved as subject_<name>_NNNNNN.png, like the prompt mask
        import cv2
        import numpy as np

        subs = [dict(sub) for sub in subjects]
        for (name, frame), smask in sorted((subject_masks or {}).items()):
            png = run / f"subject_{name}_{int(frame):06d}.png"
            cv2.imwrite(str(png), (np.clip(np.asarray(smask, np.float32), 0, 1) * 255).round().astype(np.uint8))
            sub = next(s for s in subs if s["name"] == name)
            if int(sub.get("frame") or 0) == int(frame):
                sub.update(mask=str(png), points=[], box=None)
            else:
                sub["keyframes"] = [*sub.get("keyframes", []), {"frame": int(frame), "mask": str(png)}]
        data["prompt"]["subjects"] = subs
    cfg = configmod.validate(data, "job config")
    (run / "config.yaml").write_text(configmod.dump(cfg))
    _write_json(run / JOB_FILE, {"status": QUEUED, "created": time.time(), "input": cfg.input, "kind": kind,
                                 "pid": None, "exit_code": None, "error": None})
    return run


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _update_job_file(run: Path, **changes: Any) -> dict:
    data = _read_json(run / JOB_FILE)
    data.update(changes)
    _write_json(run / JOB_FILE, data)
    return data


def last_events(run: Path, max_bytes: int = 65536) -> tuple[dict | None, dict | None]:
    """The latest ``progress`` event and the ``done`` event (if any) from the job's stdout file."""
    progress = done = None
    try:
        with open(run / STDOUT_FILE, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - max_bytes))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None, None
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            if event.get("event") == "progress":
                progress = event
            elif event.get("event") == "done":
                done = event
    return progress, done


def _stderr_tail(run: Path, lines: int = 1) -> str:
    try:
        text = (run / STDERR_FILE).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def _pid_alive_for(pid: int | None, run: Path) -> bool:
    """True when ``pid`` is still the job of ``run`` (guards against a recycled pid after a reboot)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return str(run) in cmdline


# ---------------------------------------------------------------- job view ------------------------------------

@dataclass
class JobInfo:
    """What the UI and the API show for one run folder."""

    id: str
    run_dir: str
    status: str
    position: int | None = None  # 1 = next to start, while queued
    frame: int | None = None
    total: int | None = None
    fps: float | None = None
    eta: float | None = None
    stage: str | None = None
    error: dict | None = None
    outputs: dict[str, str] = field(default_factory=dict)  # format -> absolute path
    previews: list[str] = field(default_factory=list)  # absolute paths
    input: str | None = None
    created: float | None = None
    exit_code: int | None = None
    started: float | None = None
    finished: float | None = None
    elapsed: float | None = None  # seconds running (so far, or in all when it ended)
    cancelling: bool = False  # Cancel was pressed; the job is stopping at a frame boundary
    resumable: bool = False  # interrupted/cancelled/failed with a run the CLI can --resume (or never started)
    proxies: dict[str, str] = field(default_factory=dict)  # format -> browser-playable 8-bit H.264 preview
    kind: str = "run"  # "preview": the page's short check of a prompt (app/preview.py), never listed as a job

    def to_dict(self) -> dict:
        return asdict(self)

    def files(self) -> list[str]:
        """What can be downloaded one by one: the output files and previews (a PNG-sequence output is a
        folder: it is in :meth:`folders` and in the zip, not here)."""
        return [p for p in self.outputs.values() if Path(p).is_file()] + list(self.previews)

    def folders(self) -> dict[str, str]:
        """Outputs that are folders (png, alpha16, idmap sequences): format -> path."""
        return {fmt: p for fmt, p in self.outputs.items() if Path(p).is_dir()}

    def summary(self) -> str:
        """One line: 'running · matting 4/79 frames · 2.35 fps · ETA 0:00:32 · 0:00:10 elapsed'."""
        if self.status == QUEUED:
            return f"queued (position {self.position})" if self.position else "queued"
        if self.status == RUNNING:
            bits = ["cancelling" if self.cancelling else "running"]
            if self.total:
                bits.append(f"{self.stage or 'matting'} {self.frame or 0}/{self.total} frames")
            elif not self.cancelling:
                bits.append("starting")
            if self.fps:
                bits.append(f"{fmt_fps(self.fps)} fps")
            if self.eta is not None and not self.cancelling:
                bits.append(f"ETA {fmt_duration(self.eta)}")
            if self.elapsed is not None:
                bits.append(f"{fmt_duration(self.elapsed)} elapsed")
            return " · ".join(bits)
        tail = f" · {fmt_duration(self.elapsed)}" if self.elapsed is not None else ""
        if self.error and self.status in (FAILED, INTERRUPTED):
            return f"{self.status}: {self.error.get('message', '')}{tail}"
        if self.status in (CANCELLED, INTERRUPTED) and self.total:
            return f"{self.status} at {self.frame or 0}/{self.total} frames{tail}"
        return f"{self.status}{tail}"


def fmt_duration(seconds: float | None) -> str:
    """h:mm:ss (2099 -> '0:34:59')."""
    if seconds is None:
        return "?"
    s = max(0, int(round(float(seconds))))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def fmt_fps(fps: float) -> str:
    """Three significant digits, so a slow CPU job reads 0.0412 fps rather than 0.0."""
    fps = float(fps)
    if fps >= 100:
        return f"{fps:.0f}"
    if fps >= 10:
        return f"{fps:.1f}"
    if fps >= 1:
        return f"{fps:.2f}"
    return f"{fps:.3g}"


def _files_in(run: Path, names: Iterable[str], folders: bool = False) -> list[Path]:
    """The named entries of the run folder that exist (files; also folders with ``folders``)."""
    out = []
    for name in names:
        try:
            p = inside(run / str(name), [run])
        except MattePodError:
            continue  # a metadata entry pointing outside its own run folder is never served
        if p.is_file() or (folders and p.is_dir()):
            out.append(p)
    return out


def _folder_files(run: Path, folder: Path) -> list[Path]:
    """The regular files of an output folder, sorted; symlinks and anything resolving outside the run are
    skipped (a zip never carries files from elsewhere)."""
    out = []
    for p in sorted(folder.rglob("*")):
        if p.is_symlink() or not p.is_file():
            continue
        try:
            out.append(inside(p, [run]))
        except MattePodError:
            continue
    return out


def read_job(run: Path, live_status: str | None = None, position: int | None = None) -> JobInfo:
    """Merge job.json (job layer), metadata.json (the pipeline) and the progress lines into one view."""
    run = Path(run)
    job = _read_json(run / JOB_FILE)
    meta = _read_json(run / "metadata.json")
    progress, done = last_events(run)
    if not progress:
        progress = _read_json(run / "progress.json") or None

    job_status, meta_status = job.get("status"), meta.get("status")
    done_status = (done or {}).get("status")
    if job_status in FINAL:
        status = job_status  # written by the manager after the process ended: it saw everything
    elif live_status:
        status = live_status
    elif meta_status in (COMPLETED, FAILED, CANCELLED):
        status = meta_status
    elif done_status in (COMPLETED, FAILED, CANCELLED):
        status = done_status
    elif job_status == QUEUED:
        status = QUEUED
    elif _pid_alive_for(job.get("pid"), run.resolve()):
        status = RUNNING
    elif job or meta:
        status = INTERRUPTED
    else:
        status = "unknown"

    error = job.get("error") or meta.get("error") or (done or {}).get("error")
    if status == INTERRUPTED and not error:
        error = {"type": "Interrupted", "exit_code": None,
                 "message": "the job stopped without finishing (app or pod restarted?): press Resume, or " + resume_hint(run)}
    if error is not None and not isinstance(error, dict):
        error = {"type": "Error", "message": str(error), "exit_code": job.get("exit_code")}

    outputs_meta = meta.get("outputs") or (done or {}).get("outputs") or {}
    outputs: dict[str, str] = {}
    if isinstance(outputs_meta, dict):
        for fmt, name in outputs_meta.items():
            found = _files_in(run, [name], folders=True)
            if found:
                outputs[str(fmt)] = str(found[0])
    previews = [str(p) for p in _files_in(run, meta.get("previews") or [])]
    if not previews and (run / "previews").is_dir():
        previews = [str(p) for p in sorted((run / "previews").glob("*.png"))]

    frames = meta.get("frames") or {}
    p = progress or {}
    started, finished = job.get("started"), job.get("finished")
    elapsed = None
    if started:
        end = finished if (finished and status in FINAL) else (time.time() if status == RUNNING else finished)
        elapsed = max(0.0, float(end) - float(started)) if end else None
    proxies = {}
    for fmt, name in ((meta.get("proxies") or {}).items() if isinstance(meta.get("proxies"), dict) else []):
        found = _files_in(run, [name])
        if found:
            proxies[str(fmt)] = str(found[0])
    resumable = status in (INTERRUPTED, CANCELLED, FAILED) and (run / "config.yaml").is_file() and (
        not (run / "metadata.json").exists() or meta.get("status") != COMPLETED)
    return JobInfo(
        id=run.name, run_dir=str(run), status=status, position=position if status == QUEUED else None,
        frame=p.get("frame", frames.get("done")), total=p.get("total", frames.get("total")),
        fps=p.get("fps"), eta=p.get("eta"), stage=p.get("stage"), error=error,
        outputs=outputs, previews=previews, input=job.get("input") or (meta.get("input") or {}).get("path"),
        created=job.get("created") or (run.stat().st_mtime if run.exists() else None),
        exit_code=job.get("exit_code"), started=started, finished=finished, elapsed=elapsed,
        cancelling=bool(job.get("cancel_requested")) and status == RUNNING, resumable=resumable,
        proxies=proxies, kind=str(job.get("kind") or "run"))


# ---------------------------------------------------------------- manager -------------------------------------

@dataclass
class _Live:
    run: Path
    proc: subprocess.Popen | None = None
    pid: int | None = None
    cancel: bool = False
    finished: threading.Event = field(default_factory=threading.Event)


class JobManager:
    """A queue of run folders executed by at most ``max_running`` job processes at once.

    ``command(run)`` builds the argv (default: the real CLI script); tests pass a small fake script there.
    On start the manager adopts what an earlier app left behind: jobs still running keep their slot until
    they exit, queued ones are queued again in their original order.
    """

    def __init__(self, output_dir: str | Path, max_running: int | None = None,
                 command: Callable[[Path], list[str]] | None = None, env: dict[str, str] | None = None,
                 kill_grace: float = 10.0, poll: float = 0.25, recover: bool = True,
                 resume_command: Callable[[Path], list[str]] | None = None):
        self.output_dir = Path(output_dir).resolve()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.max_running = max_running or settings.get().max_jobs
        self.command = command or default_command
        self.resume_command = resume_command or default_resume_command
        self.env = env
        self.kill_grace = kill_grace
        self.poll = poll
        self._lock = threading.Condition()
        self._queue: deque[str] = deque()
        self._live: dict[str, _Live] = {}
        self._running = 0
        self._closed = False
        if recover:
            self._recover()
        self._dispatcher = threading.Thread(target=self._dispatch, name="mattepod-jobs", daemon=True)
        self._dispatcher.start()

    # -- public ------------------------------------------------------------------------------------------------

    def run_path(self, job_id: str) -> Path:
        run = inside(self.output_dir / check_job_id(job_id), [self.output_dir])
        if not run.is_dir():
            raise InputNotFoundError(f"no job {job_id!r} in {self.output_dir}", "list the jobs to see their ids")
        return run

    def submit(self, run: str | Path) -> str:
        """Queue a run folder made by ``create_run``; returns the job id (the folder name)."""
        run = inside(run, [self.output_dir])
        if not (run / "config.yaml").is_file():
            raise RunStateError(f"{run} has no config.yaml", "create the run with mattepod.jobs.create_run")
        with self._lock:
            live = self._live.get(run.name)
            if live is not None and not live.finished.is_set():
                return run.name  # already queued (e.g. picked up from disk when the manager started)
            if read_job(run).status != QUEUED:
                raise RunStateError(f"job {run.name} has already run", "create a new run folder for a new job")
            self._live[run.name] = _Live(run)
            self._queue.append(run.name)
            self._lock.notify_all()
        return run.name

    def status(self, job_id: str) -> JobInfo:
        run = self.run_path(job_id)
        with self._lock:
            live = self._live.get(run.name)
            position = self._queue.index(run.name) + 1 if run.name in self._queue else None
            live_status = None
            if live is not None and not live.finished.is_set():
                live_status = QUEUED if position else RUNNING
        return read_job(run, live_status, position)

    def list_jobs(self) -> list[JobInfo]:
        """Every run folder in the output folder, newest first."""
        runs = [p for p in self.output_dir.iterdir()
                if p.is_dir() and ((p / JOB_FILE).exists() or (p / "metadata.json").exists())]
        infos = []
        for run in runs:
            try:
                infos.append(self.status(run.name))
            except MattePodError:
                continue
        return sorted(infos, key=lambda j: j.created or 0, reverse=True)

    def cancel(self, job_id: str, wait: bool = True) -> JobInfo:
        """Stop a job: dequeue it, or SIGTERM its process group -- the run stops at a frame boundary and stays
        resumable -- escalating to SIGKILL after ``kill_grace`` seconds. ``wait=False`` returns at once with
        the job marked ``cancelling`` (the page shows that while the job winds down)."""
        run = self.run_path(job_id)
        with self._lock:
            live = self._live.get(run.name)
            orphan = live is None or live.finished.is_set()
        if orphan:
            info = read_job(run)
            if info.status in (QUEUED, RUNNING):  # left by an earlier app process
                pid = _read_json(run / JOB_FILE).get("pid")
                if info.status == RUNNING and _pid_alive_for(pid, run):
                    _update_job_file(run, cancel_requested=time.time())
                    if not wait:
                        def stop_orphan() -> None:
                            _kill_group(pid, self.kill_grace)
                            _update_job_file(run, status=CANCELLED, finished=time.time())

                        threading.Thread(target=stop_orphan, name=f"cancel-{run.name}", daemon=True).start()
                        return read_job(run)
                    _kill_group(pid, self.kill_grace)
                _update_job_file(run, status=CANCELLED, finished=time.time())
            return read_job(run)
        with self._lock:
            live.cancel = True
            if run.name in self._queue:
                self._queue.remove(run.name)
                _update_job_file(run, status=CANCELLED, finished=time.time())
                live.finished.set()
                self._lock.notify_all()
                return read_job(run)
            pid = live.pid
        _update_job_file(run, cancel_requested=time.time())
        if pid:
            if wait:
                _kill_group(pid, self.kill_grace)
            else:
                threading.Thread(target=_kill_group, args=(pid, self.kill_grace), name=f"cancel-{run.name}",
                                 daemon=True).start()
        if wait:
            live.finished.wait(self.kill_grace + 5)
        return self.status(run.name)

    def resume(self, job_id: str) -> JobInfo:
        """Queue an interrupted, cancelled or failed job again: the CLI's ``run --resume RUN_DIR`` continues
        from its last checkpoint (a job that never started is simply run)."""
        run = self.run_path(job_id)
        with self._lock:
            live = self._live.get(run.name)
            if live is not None and not live.finished.is_set():
                raise RunStateError(f"job {run.name} is still {read_job(run).status}", "wait for it or cancel it")
            info = read_job(run)
            if not info.resumable:
                raise RunStateError(f"job {run.name} is {info.status} and cannot be resumed",
                                    "start a new run instead")
            started_before = (run / "metadata.json").exists()
            _update_job_file(run, status=QUEUED, resume=started_before, pid=None, exit_code=None, error=None,
                             cancel_requested=None, finished=None, queued=time.time())
            self._live[run.name] = _Live(run)
            self._queue.append(run.name)
            self._lock.notify_all()
        return self.status(run.name)

    def delete(self, job_id: str) -> None:
        """Remove a finished job's run folder (never one that is queued or running)."""
        import shutil

        run = self.run_path(job_id)
        with self._lock:
            live = self._live.get(run.name)
            if live is not None and not live.finished.is_set():
                raise RunStateError(f"job {run.name} is still {read_job(run).status}", "cancel it first")
            if read_job(run).status in (QUEUED, RUNNING):
                raise RunStateError(f"job {run.name} is still running", "cancel it first")
            self._live.pop(run.name, None)
        if run == self.output_dir or self.output_dir not in run.parents:  # never the volume itself
            raise RunStateError(f"{job_id!r} is not a job folder", "use an id listed by list_jobs")
        shutil.rmtree(run)

    def zip_outputs(self, job_id: str) -> Path:
        """``<run>/<id>.zip`` with the outputs, previews, config and metadata (rebuilt when they changed)."""
        import zipfile

        run = self.run_path(job_id)
        info = read_job(run)
        if not info.outputs:
            raise RunStateError(f"job {run.name} has no outputs yet", "wait until it has completed")
        members = [Path(p) for p in info.files()]
        for folder in info.folders().values():  # PNG / alpha16 / idmap sequences: every frame
            members += _folder_files(run, Path(folder))
        members += [run / n for n in ("config.yaml", "metadata.json", "prompt_mask.png") if (run / n).is_file()]
        dest = run / f"{run.name}.zip"
        newest = max(p.stat().st_mtime for p in members)
        if dest.is_file() and dest.stat().st_mtime >= newest:
            return dest
        tmp = dest.with_suffix(".zip.tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:  # videos do not deflate
            for p in members:
                zf.write(p, p.relative_to(run).as_posix())
        os.replace(tmp, dest)
        return dest

    def wait(self, job_id: str, timeout: float | None = None) -> JobInfo:
        with self._lock:
            live = self._live.get(check_job_id(job_id))
        if live is not None:
            live.finished.wait(timeout)
        return self.status(job_id)

    def close(self, cancel_running: bool = False) -> None:
        with self._lock:
            self._closed = True
            lives = list(self._live.values())
            self._lock.notify_all()
        if cancel_running:
            for live in lives:
                if live.pid and not live.finished.is_set():
                    _kill_group(live.pid, self.kill_grace)

    # -- internals ---------------------------------------------------------------------------------------------

    def _recover(self) -> None:
        queued = []
        for run in self.output_dir.iterdir():
            job = _read_json(run / JOB_FILE) if run.is_dir() else {}
            if job.get("status") == QUEUED:
                queued.append((job.get("created") or 0, run))
            elif job.get("status") == RUNNING and _pid_alive_for(job.get("pid"), run):
                live = _Live(run, pid=job["pid"])
                self._live[run.name] = live
                self._running += 1
                threading.Thread(target=self._adopt, args=(live,), daemon=True).start()
        for _, run in sorted(queued):
            self._live[run.name] = _Live(run)
            self._queue.append(run.name)

    def _adopt(self, live: _Live) -> None:
        """Hold a slot for a job started by an earlier app process until its pid is gone."""
        while _pid_alive_for(live.pid, live.run):
            time.sleep(self.poll)
        self._finish(live, None)

    def _dispatch(self) -> None:
        while True:
            with self._lock:
                while not self._closed and (not self._queue or self._running >= self.max_running):
                    self._lock.wait()
                if self._closed:
                    return
                job_id = self._queue.popleft()
                live = self._live[job_id]
                self._running += 1
            threading.Thread(target=self._execute, args=(live,), name=f"job-{job_id}", daemon=True).start()

    def _execute(self, live: _Live) -> None:
        run = live.run
        argv = self.resume_command(run) if _read_json(run / JOB_FILE).get("resume") else self.command(run)
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env.setdefault("PYTHONUNBUFFERED", "1")
        try:
            with open(run / STDOUT_FILE, "ab") as out, open(run / STDERR_FILE, "ab") as err:
                proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                        cwd=str(REPO_ROOT), env=env, start_new_session=True)
        except OSError as exc:
            _update_job_file(run, status=FAILED, finished=time.time(), exit_code=None,
                             error={"type": "LaunchError", "message": f"cannot start the job: {exc}",
                                    "exit_code": None})
            self._finish(live, None, already_written=True)
            return
        with self._lock:
            live.proc, live.pid = proc, proc.pid
            cancelled_early = live.cancel
        _update_job_file(run, status=RUNNING, pid=proc.pid, started=time.time(), argv=argv)
        if cancelled_early:
            _kill_group(proc.pid, self.kill_grace)
        rc = proc.wait()
        self._finish(live, rc)

    def _finish(self, live: _Live, rc: int | None, already_written: bool = False) -> None:
        run = live.run
        if not already_written:
            meta = _read_json(run / "metadata.json")
            _, done = last_events(run)
            if live.cancel:
                status, error = CANCELLED, None
            elif meta.get("status") in (COMPLETED, FAILED, CANCELLED):
                status, error = meta["status"], meta.get("error")
            elif done and done.get("status") in (COMPLETED, FAILED, CANCELLED):
                status, error = done["status"], done.get("error")
            elif rc == 0:
                status, error = COMPLETED, None
            elif rc is None:  # adopted job whose exit we could not see
                status, error = INTERRUPTED, None
            else:
                status = CANCELLED if rc in (130, -signal.SIGTERM, -signal.SIGINT) else FAILED
                error = None if status == CANCELLED else {
                    "type": "JobFailed", "exit_code": rc,
                    "message": _stderr_tail(run) or f"the job exited with code {rc}"}
            if status == INTERRUPTED:
                _update_job_file(run, status=INTERRUPTED, finished=time.time())
            else:
                _update_job_file(run, status=status, finished=time.time(), exit_code=rc, error=error)
        with self._lock:
            self._running -= 1
            live.finished.set()
            self._lock.notify_all()


def default_command(run: Path) -> list[str]:
    """The real job: the CLI script on the run folder's own config (env MATTEPOD_JOB_SCRIPT overrides)."""
    script = settings.get().job_script or str(DEFAULT_SCRIPT)
    entry = [script] if Path(script).is_file() else ["-m", "mattepod", "run"]
    return [sys.executable, *entry, str(run / "config.yaml"), "--run-dir", str(run), "--progress-json"]


def default_resume_command(run: Path) -> list[str]:
    """The CLI's own resume: ``run --resume RUN_DIR`` continues from the run's last checkpoint."""
    script = os.environ.get("MATTEPOD_JOB_SCRIPT") or str(DEFAULT_SCRIPT)
    entry = [script] if Path(script).is_file() else ["-m", "mattepod", "run"]
    return [sys.executable, *entry, "--resume", str(run), "--progress-json"]


def _kill_group(pid: int, grace: float) -> None:
    """SIGTERM the job's process group (the CLI and its ffmpeg children), SIGKILL what is left after ``grace``."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    if pgid == os.getpgrp():  # never signal our own group (a job must run in its own session)
        os.kill(pid, signal.SIGKILL)
        return
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
