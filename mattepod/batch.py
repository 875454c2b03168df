"""Batch runs: many videos, one run folder each, through the ``mattepod run`` CLI.

Why a subprocess per video: one broken or crashing video must not take the batch down, and the CLI
already owns run folders, resume and exit codes. This module only decides *what* to run:

* expands the inputs (a video file, a folder of videos, or a list file with one path a line),
* gives every video a deterministic run folder (``<output_dir>/<stem>``) so a re-run finds it,
* skips videos whose ``metadata.json`` says ``completed``, resumes the others (``--resume``),
* reports failures and goes on, and prints a summary table (video, status, frames, fps, outputs).

Exit status: 0 when every video is completed (or was already), 1 when any failed, 130 when cancelled,
and the ``mattepod.errors`` code when the batch itself cannot start (bad config, missing input).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from mattepod import config as cfgmod
from mattepod import settings
from mattepod import request as rq
from mattepod.cli import local_roots
from mattepod.errors import ConfigError, InputNotFoundError, MattePodError, RunStateError
from mattepod.jobs import next_action
from mattepod.media.exts import IMAGE_EXTS, LIST_EXTS, VIDEO_EXTS
from mattepod.paths import confine_run_dir, inside, slug


@dataclass
class VideoJob:
    """One input of the batch and where its run lives."""

    video: Path
    run_dir: Path
    mask: Path | None = None
    problem: str | None = None  # set when the entry is unusable before running (missing file, no mask)


@dataclass
class VideoResult:
    video: str
    run_dir: str
    action: str  # new | resume | skip | none
    status: str  # completed | skipped | failed | cancelled
    frames_done: int | None = None
    frames_total: int | None = None
    fps: float | None = None
    outputs: list[str] = field(default_factory=list)
    error: str | None = None
    exit_code: int = 0
    seconds: float = 0.0


# --------------------------------------------------------------------------- inputs


def _is_hidden(p: Path) -> bool:
    return p.name.startswith(".")


def _read_list(path: Path) -> list[tuple[str, str | None]]:
    """Lines of a list file: ``video`` or ``video<TAB>mask``; blanks and ``#`` comments skipped.

    Relative paths are relative to the list file, so a list can travel with its videos.
    """
    entries = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        video, _, mask = line.partition("\t")
        video, mask = video.strip(), mask.strip() or None
        base = path.parent
        entries.append((str(base / video) if not os.path.isabs(video) else video,
                        (str(base / mask) if mask and not os.path.isabs(mask) else mask)))
    return entries


def expand_inputs(items: Iterable[str]) -> list[tuple[Path, Path | None]]:
    """(video, mask-or-None) for every video named by ``items``; first occurrence wins on duplicates.

    A folder holding videos yields those videos (sorted, not recursive). A folder holding only images is
    one input (an image sequence). A missing top-level item is an error for the whole batch; a missing
    entry *inside* a list file is kept and reported as that video's failure, so the rest still runs.
    """
    out: list[tuple[Path, Path | None]] = []
    seen: set[str] = set()

    def add(p: Path, mask: Path | None) -> None:
        key = str(p.resolve()) if p.exists() else str(p.absolute())
        if key not in seen:
            seen.add(key)
            out.append((p, mask))

    def visit(item: str, mask: str | None, top: bool, depth: int = 0) -> None:
        p = Path(item)
        m = Path(mask) if mask else None
        if not p.exists():
            if top:
                raise InputNotFoundError(
                    f"input {p} not found",
                    "give a video file, a folder of videos, or a list file (.txt, one path a line)")
            add(p, m)
            return
        if p.is_dir():
            children = sorted(c for c in p.iterdir() if c.is_file() and not _is_hidden(c))
            videos = [c for c in children if c.suffix.lower() in VIDEO_EXTS]
            if videos:
                for v in videos:
                    add(v, m)
            elif any(c.suffix.lower() in IMAGE_EXTS for c in children):
                add(p, m)
            elif top:
                raise InputNotFoundError(
                    f"folder {p} holds no videos ({', '.join(sorted(VIDEO_EXTS))}) and no images",
                    "point --input at a folder of videos, a video file or a list file")
            return
        if p.suffix.lower() in LIST_EXTS:
            if depth > 4:
                raise ConfigError(f"list file {p} nests list files too deeply", "list videos, not lists")
            entries = _read_list(p)
            if not entries and top:
                raise InputNotFoundError(f"list file {p} names no videos", "write one video path a line")
            for video, emask in entries:
                visit(video, emask or mask, top=False, depth=depth + 1)
            return
        add(p, m)  # any other file is taken as a video; the pipeline judges it (bad media -> exit 4)

    for item in items:
        visit(item, None, top=True)
    return out


def run_dirs(videos: list[Path], output_dir: Path) -> list[Path]:
    """``<output_dir>/<stem>``, deterministic so a re-run of the same batch finds its folders.

    Two inputs with the same stem (``a/clip.mp4``, ``b/clip.mov``) get ``<stem>-<8 hex of the path>``
    instead, which is just as stable across re-runs.
    """
    stems: dict[str, int] = {}
    for v in videos:
        stems[v.stem] = stems.get(v.stem, 0) + 1
    dirs = []
    for v in videos:
        name = slug(v.stem or v.name)
        if stems[v.stem] > 1:
            name += "-" + hashlib.sha1(str(v.absolute()).encode()).hexdigest()[:8]
        dirs.append(output_dir / name)
    return dirs


def mask_for(video: Path, mask: Path | None) -> tuple[Path | None, str | None]:
    """A mask file is shared by every video; a mask folder holds ``<stem>.png`` (or ``<stem>_mask.png``)."""
    if mask is None or not mask.is_dir():
        return mask, None
    for name in (f"{video.stem}.png", f"{video.stem}_mask.png", f"{video.stem}.mask.png"):
        if (mask / name).is_file():
            return mask / name, None
    return None, f"no mask for {video.name} in {mask} -> add {mask / (video.stem + '.png')}"


# --------------------------------------------------------------------------- run state


def read_metadata(run_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((run_dir / "metadata.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _fps_from(meta: dict[str, Any]) -> float | None:
    """Frames per second of the whole run: ``timings.fps`` (frames / wall seconds, written by the pipeline)."""
    fps = (meta.get("timings") or {}).get("fps") if isinstance(meta.get("timings"), dict) else None
    return float(fps) if isinstance(fps, (int, float)) else None


def result_from_metadata(res: VideoResult, meta: dict[str, Any] | None) -> VideoResult:
    if not meta:
        return res
    frames = meta.get("frames") or {}
    res.frames_done = frames.get("done", res.frames_done)
    res.frames_total = frames.get("total", res.frames_total)
    res.fps = res.fps if res.fps is not None else _fps_from(meta)
    outs = meta.get("outputs") or {}
    res.outputs = [str(v) for v in (outs.values() if isinstance(outs, dict) else outs)]
    err = meta.get("error")
    if isinstance(err, dict) and res.status != "completed":
        res.error = res.error or err.get("message")
        res.exit_code = res.exit_code or int(err.get("exit_code") or 1)
    return res


# --------------------------------------------------------------------------- running


def cli_prefix() -> list[str]:
    """The ``mattepod run`` command; ``MATTEPOD_RUN_CMD`` replaces it (tests, custom installs)."""
    custom = settings.get().run_cmd
    return shlex.split(custom) if custom else [sys.executable, "-m", "mattepod", "run"]


def build_argv(args: argparse.Namespace, job: VideoJob, resume: bool) -> list[str]:
    argv = cli_prefix()
    if resume:  # the run folder holds its own config and prompt; the CLI refuses new ones
        return argv + ["--resume", str(job.run_dir), "--progress-json", "--quiet"]
    if args.config:
        argv.append(args.config)
    argv += ["--input", str(job.video), "--run-dir", str(job.run_dir), "--progress-json", "--quiet"]
    if job.mask:
        argv += ["--mask", str(job.mask)]
    for flag, value in (("--points", args.points), ("--box", args.box), ("--prompt-frame", args.prompt_frame),
                        ("--outputs", args.outputs), ("--weights-dir", args.weights_dir),
                        ("--start-frame", args.start_frame), ("--max-frames", args.max_frames),
                        ("--scale", args.scale)):
        if value is not None:
            argv += [flag, str(value)]
    if args.auto_person:
        argv.append("--auto-person")
    for item in args.set or []:
        argv += ["--set", item]
    return argv


class _Progress:
    """Turns the child's ``--progress-json`` lines into one throttled status line on stderr."""

    def __init__(self, label: str, quiet: bool):
        self.label, self.quiet = label, quiet
        self.last: dict[str, Any] = {}
        self.done: dict[str, Any] | None = None
        self._shown = 0.0

    def feed(self, line: str) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            if line.strip():
                print(f"{self.label}: {line.rstrip()}", file=sys.stderr)
            return
        kind = event.get("event")
        if kind == "progress":
            self.last = event
            now = time.monotonic()
            if not self.quiet and now - self._shown >= 1.0:
                self._shown = now
                fps = event.get("fps")
                eta = event.get("eta")
                print(f"{self.label}: {event.get('stage', '')} {event.get('frame')}/{event.get('total')}"
                      + (f" {fps:.1f} fps" if isinstance(fps, (int, float)) else "")
                      + (f" eta {eta:.0f}s" if isinstance(eta, (int, float)) else ""), file=sys.stderr)
        elif kind == "done":
            self.done = event


def _pump(stream, sink, keep: list[str]) -> None:
    for line in stream:
        keep.append(line.rstrip())
        del keep[:-20]
        sink(line)


def run_one(args: argparse.Namespace, job: VideoJob, resume: bool, label: str) -> tuple[int, _Progress, str]:
    """Run the CLI for one video; (exit code, progress state, last stderr line)."""
    argv = build_argv(args, job, resume)
    progress = _Progress(label, args.quiet)
    err_tail: list[str] = []
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            bufsize=1)
    t = threading.Thread(target=_pump, args=(proc.stderr, lambda s: sys.stderr.write(f"{label}: {s}"),
                                             err_tail), daemon=True)
    t.start()
    out_tail: list[str] = []
    try:
        _pump(proc.stdout, progress.feed, out_tail)
        code = proc.wait()
    except KeyboardInterrupt:
        # Ctrl-C in a terminal reaches the child too (same process group); a signal sent to the batch alone
        # (kill -INT / docker stop) does not, so pass it on. The child records a resumable "cancelled" state.
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    t.join(timeout=5)
    last = next((ln for ln in reversed(err_tail) if ln.strip()), "")
    return code, progress, last


def process(args: argparse.Namespace, job: VideoJob, index: int, count: int) -> VideoResult:
    label = f"[{index}/{count}] {job.video.name}"
    res = VideoResult(video=str(job.video), run_dir=str(job.run_dir), action="none", status="failed")
    if job.problem:
        res.error, res.exit_code = job.problem, InputNotFoundError.exit_code
        print(f"{label}: failed: {job.problem}", file=sys.stderr)
        return res
    meta = read_metadata(job.run_dir)
    action = next_action(job.run_dir)  # the one resume policy: skip completed, resume the rest
    if action == "skip":
        res.action, res.status = "skip", "skipped"
        print(f"{label}: already completed in {job.run_dir}, skipped", file=sys.stderr)
        return result_from_metadata(res, meta)
    if meta and meta.get("status") == "failed" and args.skip_failed:
        res.action = "skip"
        print(f"{label}: failed before, skipped (--skip-failed)", file=sys.stderr)
        return result_from_metadata(res, meta)

    resume = action == "resume"
    res.action = "resume" if resume else "new"
    print(f"{label}: {'resuming' if resume else 'starting'} -> {job.run_dir}", file=sys.stderr)
    t0 = time.monotonic()
    code, progress, last_err = run_one(args, job, resume, label)
    if resume and code == RunStateError.exit_code:
        # The folder cannot be resumed (e.g. it failed before any checkpoint): keep it aside, start over.
        aside = job.run_dir.with_name(f"{job.run_dir.name}.unresumable-{time.strftime('%Y%m%d-%H%M%S')}")
        job.run_dir.rename(aside)
        print(f"{label}: cannot resume ({last_err}); kept as {aside.name}, starting over", file=sys.stderr)
        res.action = "new"
        code, progress, last_err = run_one(args, job, False, label)
    res.seconds = round(time.monotonic() - t0, 2)
    if isinstance(progress.last.get("fps"), (int, float)):
        res.fps = float(progress.last["fps"])
    if isinstance(progress.last.get("total"), int):
        res.frames_total = progress.last["total"]
    meta = read_metadata(job.run_dir)
    status = (progress.done or {}).get("status") or (meta or {}).get("status")
    res.status = "completed" if code == 0 and status in (None, "completed") else "failed"
    if code == 130:
        res.status = "cancelled"
    res.exit_code = code
    result_from_metadata(res, meta)
    if res.status != "completed":
        done_err = (progress.done or {}).get("error")
        if isinstance(done_err, dict):
            res.error = res.error or done_err.get("message")
        res.error = res.error or last_err or f"exit code {code}"
        res.exit_code = code or res.exit_code or 1
        print(f"{label}: FAILED (exit {res.exit_code}): {res.error}", file=sys.stderr)
    else:
        print(f"{label}: completed in {res.seconds:.1f}s", file=sys.stderr)
    return res


# --------------------------------------------------------------------------- summary


def summary_table(results: list[VideoResult]) -> str:
    def frames(r: VideoResult) -> str:
        if r.frames_done is None and r.frames_total is None:
            return "-"
        return f"{r.frames_done if r.frames_done is not None else '?'}/{r.frames_total or '?'}"

    rows = [("video", "status", "frames", "fps", "outputs")]
    for r in results:
        status = r.status + (" (resumed)" if r.action == "resume" and r.status == "completed" else "")
        outs = ", ".join(r.outputs) if r.outputs else "-"
        if r.status in ("failed", "cancelled") and r.error:
            outs = f"error {r.exit_code}: {r.error}"
        rows.append((Path(r.video).name, status, frames(r), f"{r.fps:.1f}" if r.fps else "-", outs))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4] for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 7)
    failed = sum(r.status in ("failed", "cancelled") for r in results)
    lines.append(f"{len(results)} videos: {sum(r.status == 'completed' for r in results)} completed, "
                 f"{sum(r.status == 'skipped' for r in results)} skipped (done before), {failed} failed")
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mattepod.batch",
        description="Matte many videos, one run folder each (<output-dir>/<stem>); re-runs skip completed "
                    "videos and resume interrupted ones.")
    p.add_argument("--config", help="run config YAML (default: built-in defaults)")
    p.add_argument("--input", "-i", action="append", required=True,
                   help="video file, folder of videos, or list file (.txt/.list: one path a line, optional "
                        "TAB + mask path); repeatable")
    p.add_argument("--mask", help="mask PNG for every video, or a folder of <stem>.png masks")
    p.add_argument("--points", help='SAM 2 clicks "x,y,label;x,y,label"')
    p.add_argument("--box", help="SAM 2 box x0,y0,x1,y1")
    p.add_argument("--prompt-frame", type=int, help="frame the prompt is given on")
    p.add_argument("--auto-person", action="store_true", help="find the person automatically")
    p.add_argument("--outputs", help="comma list of output formats (alpha,green,...)")
    p.add_argument("--output-dir", help="where the run folders go (default: config output_dir)")
    p.add_argument("--weights-dir", help="model weights folder")
    p.add_argument("--start-frame", type=int)
    p.add_argument("--max-frames", type=int)
    p.add_argument("--scale", type=float)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override; repeatable")
    p.add_argument("--skip-failed", action="store_true", help="do not retry videos that failed before")
    p.add_argument("--dry-run", action="store_true", help="print the plan (video, run folder, action) only")
    p.add_argument("--summary-json", help="also write the summary here (default <output-dir>/batch-summary.json)")
    p.add_argument("--quiet", "-q", action="store_true", help="no per-frame progress lines")
    return p


def _check_config(args: argparse.Namespace) -> cfgmod.Config:
    """Validate the config once, up front, through the same front door as the CLI (and, with
    MATTEPOD_ALLOWED_ROOTS, the same confinement): a typo must fail the batch, not every video in it.
    The per-video keys (input, mask) are checked per video in ``plan``."""
    prompt: dict[str, Any] = {}
    if args.points:
        prompt["points"] = rq.parse_points(args.points, "--points")
    if args.box:
        prompt["box"] = rq.parse_box(args.box, "--box")
    if args.prompt_frame is not None:
        prompt["frame"] = args.prompt_frame
    req = {"overrides": dict(cfgmod.parse_set(s) for s in args.set or []), "prompt": prompt or None,
           "outputs": [f.strip() for f in args.outputs.split(",") if f.strip()] if args.outputs else None,
           "output_dir": args.output_dir, "weights_dir": args.weights_dir, "start_frame": args.start_frame,
           "max_frames": args.max_frames, "scale": args.scale}
    return rq.to_config(req, base=args.config, roots=local_roots(), source=str(args.config or "batch options"))


def _has_prompt(args: argparse.Namespace, cfg: cfgmod.Config) -> bool:
    p = cfg.prompt
    return bool(args.mask or args.points or args.box or args.auto_person or p.mask or p.points or p.box
                or p.auto_person)


NO_PROMPT_FIX = "give --mask FILE|DIR, --points, --box or --auto-person (or prompt.* in the config)"


def plan(args: argparse.Namespace, output_dir: Path, cfg: cfgmod.Config) -> list[VideoJob]:
    entries = expand_inputs(args.input)
    shared_prompt = _has_prompt(args, cfg)
    if not shared_prompt and not any(mask for _, mask in entries):
        raise ConfigError("no prompt: nothing says which subject to matte", NO_PROMPT_FIX)
    top_mask = Path(args.mask) if args.mask else None
    if top_mask is not None and not top_mask.exists():
        raise InputNotFoundError(f"mask {top_mask} not found", "give a mask PNG or a folder of <stem>.png masks")
    roots = local_roots()
    jobs = []
    for (video, mask), run_dir in zip(entries, run_dirs([v for v, _ in entries], output_dir)):
        if roots is not None:  # the same rule as every face: a refusal stops the batch before anything runs
            inside(video, roots.read, "input")
            for m in (mask, top_mask):
                if m is not None:
                    inside(m, roots.read, "mask")
            confine_run_dir(run_dir, roots)
        job = VideoJob(video=video, run_dir=run_dir)
        if not video.exists():
            job.problem = f"input {video} not found -> fix the path in the list file"
        else:
            chosen = mask or top_mask
            job.mask, problem = mask_for(video, chosen)
            if chosen is not None and not chosen.exists():
                problem = f"mask {chosen} not found -> fix the mask path"
            job.problem = job.problem or problem
            if job.mask is None and not shared_prompt:
                job.problem = job.problem or (f"no prompt for {video.name} -> add TAB + mask to its list line, "
                                              f"or {NO_PROMPT_FIX}")
        jobs.append(job)
    return jobs


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        cfg = _check_config(args)  # --output-dir, else the config's, else $OUTPUT_DIR (mattepod.request)
        output_dir = Path(cfg.output_dir)
        jobs = plan(args, output_dir, cfg)
    except MattePodError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    if args.dry_run:
        for job in jobs:
            action = next_action(job.run_dir)
            print(f"{job.video}\t{job.run_dir}\t{job.problem or action}")
        return 0
    output_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _interrupt)  # docker stop / a pod shutting down: stop like Ctrl-C
    results: list[VideoResult] = []
    cancelled = False
    for i, job in enumerate(jobs, 1):
        try:
            results.append(process(args, job, i, len(jobs)))
        except KeyboardInterrupt:
            results.append(result_from_metadata(
                VideoResult(str(job.video), str(job.run_dir), "new", "cancelled", error="cancelled by user",
                            exit_code=130), read_metadata(job.run_dir)))
            cancelled = True
            break
    print(summary_table(results))
    summary_path = Path(args.summary_json) if args.summary_json else output_dir / "batch-summary.json"
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    if cancelled:
        return 130
    return 1 if any(r.status in ("failed", "cancelled") for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
