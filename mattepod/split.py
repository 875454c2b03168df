"""Long videos over many workers: plan time ranges, give each its own prompt, join the pieces by stream copy.

Why: one serverless worker matting a two-hour video for hours is fragile and slow; N workers each matting
1/N of it finish ~N times sooner. The price is paid at the seams (see BUILD.md): every range starts
with a fresh matting memory, so the matte can change character at a range's first frame.

* ``plan_ranges``: frame ranges from ``ranges: N`` or ``segment_seconds: S``.
* ``range_prompts``: the prompt of each range. ``auto_person`` is simply repeated per range; a mask/clicks
  prompt is carried to every range's first frame by a *quick pass* (the whole video matted once at a low
  ``scale``, alpha only), whose alpha at those frames, thresholded, becomes each range's mask prompt.
* ``join``: the finished range runs' outputs concatenated with the ffmpeg concat demuxer (``-c copy``, no
  re-encode), with the source's audio copied in once for the whole length.
* ``run_split``: a client-side driver (submit the range jobs in parallel, then the join job).
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from mattepod import config as cfgmod
from mattepod.errors import ConfigError, InvalidMediaError, MaskError, RunStateError
from mattepod.media.probe import probe
from mattepod.media.reader import read_frame
from mattepod.media.writer import join_segments
from mattepod.outputs import FORMATS
from mattepod.paths import inside
from mattepod.runfolder import CONFIG, METADATA, write_atomic

log = logging.getLogger("mattepod.split")



def video_formats() -> set[str]:
    """Formats written as one video file (stream-copy joinable); PNG sequences are not."""
    return {name for name, fmt in FORMATS.items() if fmt.args is not None}


@dataclass
class Range:
    index: int
    start_frame: int  # absolute frame index in the input
    frames: int
    start_time: float
    end_time: float


def plan_ranges(total_frames: int, fps: float, first: int = 0, ranges: int | None = None,
                segment_seconds: float | None = None, min_frames: int = 1) -> list[Range]:
    """Split ``total_frames`` (from ``first``) into contiguous ranges; the last one takes the remainder.

    ``ranges`` splits into N near-equal parts (at most one per frame); ``segment_seconds`` into parts of that
    length, where a tail shorter than ``min_frames`` is merged into the range before it.
    """
    if (ranges is None) == (segment_seconds is None):
        raise ConfigError("split needs exactly one of ranges or segment_seconds",
                          'write split: {"ranges": 4} or split: {"segment_seconds": 60}')
    if total_frames < 1:
        raise InvalidMediaError("nothing to split: the input has no frames", "check the input video")
    if ranges is not None:
        if ranges < 1:
            raise ConfigError(f"split.ranges must be >= 1, got {ranges}", "use a positive count")
        n = min(ranges, total_frames)
        bounds = [round(i * total_frames / n) for i in range(n + 1)]
    else:
        if not segment_seconds or segment_seconds <= 0:
            raise ConfigError(f"split.segment_seconds must be > 0, got {segment_seconds}", "use seconds, e.g. 60")
        step = max(1, round(segment_seconds * fps))
        bounds = list(range(0, total_frames, step)) + [total_frames]
    if segment_seconds is not None and len(bounds) > 2 and bounds[-1] - bounds[-2] < min_frames:
        del bounds[-2]
    out = []
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        out.append(Range(i, first + a, b - a, round((first + a) / fps, 6), round((first + b) / fps, 6)))
    return out


# --------------------------------------------------------------------------- prompts per range


def _absolute_prompt_frame(cfg: cfgmod.Config) -> int:
    return cfg.start_frame + cfg.prompt.frame


def range_prompts(cfg: cfgmod.Config, ranges: list[Range], plan_dir: Path,
                  quick_pass: Callable[[cfgmod.Config, Path], Path] | None,
                  quick_scale: float = 0.25) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(prompt section for each range job, notes about how they were made).

    The range holding the user's prompt frame keeps the user's prompt (moved to range-relative frame numbers);
    every other range gets a mask PNG taken from a quick pass at its first frame.
    """
    p = cfg.prompt
    base = {"sam2_model": p.sam2_model, "normalized": p.normalized}
    if p.auto_person and not (p.mask or p.points or p.box):
        return ([{**base, "auto_person": True, "person_select": p.person_select, "person_count": p.person_count,
                  "frame": 0} for _ in ranges], {"method": "auto_person"})
    if p.keyframes:
        raise ConfigError("split does not carry prompt.keyframes over ranges",
                          "drop the keyframes or run without split")
    k = _absolute_prompt_frame(cfg)
    own = next(r for r in ranges if r.start_frame <= k < r.start_frame + r.frames)
    user = p.model_dump(mode="json", exclude={"keyframes", "reprompt_every"})
    user["frame"] = k - own.start_frame
    prompts: list[dict[str, Any]] = [{} for _ in ranges]
    prompts[own.index] = user
    others = [r for r in ranges if r.index != own.index]
    notes: dict[str, Any] = {"method": "quick_pass" if others else "user", "prompt_range": own.index}
    if not others:
        return prompts, notes
    if quick_pass is None:
        raise ConfigError("a mask/clicks prompt over several ranges needs the quick pass",
                          "use prompt.auto_person, or let the plan job run its quick pass")
    qcfg = cfg.model_copy(deep=True)
    qcfg.scale = min(cfg.scale, quick_scale)
    qcfg.outputs.formats = ["alpha"]
    qcfg.outputs.alpha_codec = "ffv1"  # lossless and cheap on CPU: the masks come from these values
    qcfg.outputs.previews = 0
    qcfg.outputs.copy_audio = False
    t0 = time.monotonic()
    alpha_video = quick_pass(qcfg, plan_dir / "quick_pass")
    notes["quick_pass_seconds"] = round(time.monotonic() - t0, 2)
    notes["quick_pass_scale"] = qcfg.scale
    info = probe(alpha_video)
    masks_dir = plan_dir / "masks"
    masks_dir.mkdir(parents=True, exist_ok=True)
    empty = []
    for r in others:
        alpha = read_frame(info, r.start_frame - cfg.start_frame)[..., 0]
        mask = np.where(alpha >= 128, 255, 0).astype(np.uint8)
        path = masks_dir / f"range_{r.index:03d}.png"
        cv2.imwrite(str(path), mask)
        if not mask.any():
            empty.append(r.index)
        prompts[r.index] = {**base, "mask": str(path.resolve()), "frame": 0}
    if empty:
        raise MaskError(f"the quick pass lost the subject at the start of range(s) {empty} (empty mask)",
                        "split at other points (segment_seconds), or use prompt.auto_person")
    return prompts, notes


# --------------------------------------------------------------------------- join


def join(segment_dirs: list[Path], out_dir: Path, formats: list[str] | None = None,
         audio_from: str | None = None) -> dict[str, Any]:
    """Concatenate the outputs of finished range runs (in order) into ``out_dir`` without re-encoding.

    Every range must be completed and hold every joined format. The joined file's frame count is checked
    against the sum of the ranges (a wrong concat fails loudly instead of shipping a short video).
    """
    if not segment_dirs:
        raise ConfigError("join needs at least one segment run folder", "pass join.segments or join.plan")
    metas = []
    for d in segment_dirs:
        try:
            meta = json.loads((d / METADATA).read_text())
        except (OSError, ValueError):
            raise RunStateError(f"segment {d} has no readable metadata.json",
                                "join only after every range job finished") from None
        if meta.get("status") != "completed":
            raise RunStateError(f"segment {d} is {meta.get('status')}, not completed",
                                "re-run that range job (it resumes), then join again")
        metas.append(meta)
    have = [set(m.get("outputs") or {}) for m in metas]
    videos = video_formats()
    wanted = formats or sorted(set.intersection(*have) & videos)
    bad = [f for f in wanted if f not in videos]
    if bad:
        raise ConfigError(f"join cannot stream-copy {bad} (image sequences)",
                          f"join only video formats: {', '.join(sorted(videos))}")
    if not wanted:
        raise ConfigError("the segments share no video output to join", "give the ranges the same outputs")
    audio_codecs: list[str] = []
    start_s, duration = 0.0, None
    if audio_from:
        src = probe(audio_from)
        audio_codecs = [a.get("codec", "") for a in src.audio]
        first = cfgmod.load(segment_dirs[0] / CONFIG).start_frame
        start_s = first / float(src.fps) if first else 0.0
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs, audio = {}, {}
    total = sum(int((m.get("frames") or {}).get("total") or 0) for m in metas)
    for fmt in wanted:
        missing = [str(d) for d, h in zip(segment_dirs, have) if fmt not in h]
        if missing:
            raise RunStateError(f"segments {missing} have no {fmt} output", "give every range the same outputs")
        # a segment's metadata names files of its own folder; anything else is never read (or uploaded)
        files = [inside(d / str(m["outputs"][fmt]), [d], f"segment {d.name} output {fmt}")
                 for d, m in zip(segment_dirs, metas)]
        target = out_dir / files[0].name  # every range has the same input, so the same file names
        if audio_from:
            duration = total / float(probe(files[0]).fps) if total else None
        audio[fmt] = join_segments(files, target, audio_from, audio_codecs, start_s, duration)
        got = probe(target).frame_count
        if total and got != total:
            raise InvalidMediaError(f"joined {target.name} has {got} frames, the ranges {total}",
                                    "the segments do not share codec settings; re-run them with one config")
        outputs[fmt] = target.name
    meta = {"status": "completed", "error": None, "kind": "join", "outputs": outputs, "audio": audio,
            "frames": {"total": total, "done": total}, "segments": [str(d) for d in segment_dirs],
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_atomic(out_dir / METADATA, json.dumps(meta, indent=2))
    return meta


# --------------------------------------------------------------------------- client driver


def run_split(submit: Callable[[dict[str, Any]], dict[str, Any]], job_input: dict[str, Any],
              parallel: int = 8) -> dict[str, Any]:
    """Plan -> all range jobs in parallel -> join, through ``submit`` (one job input -> its output dict).

    ``submit`` is e.g. ``lambda inp: runpod.Endpoint(ID).run_sync(inp, timeout=3600)`` or a POST to a local
    worker's ``/runsync``. RunPod's queue hands each range job to the next free worker.
    """
    plan = submit({**job_input, "action": "plan"}) or {}
    if "jobs" not in plan:
        raise RunStateError(f"plan job failed: {plan.get('error') or plan}", "fix the job input")
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(plan["jobs"])))) as pool:
        results = [r or {} for r in pool.map(submit, plan["jobs"])]
    failed = [i for i, r in enumerate(results) if r.get("status") != "completed"]
    if failed:
        raise RunStateError(f"range jobs {failed} failed: {[results[i].get('error') for i in failed]}",
                            "re-submit those range jobs (they resume), then the join job")
    joined = submit(plan["join"])
    return {"plan": plan, "ranges": results, "join": joined}


def ranges_json(ranges: list[Range]) -> list[dict[str, Any]]:
    return [asdict(r) for r in ranges]


def main(argv: list[str] | None = None) -> int:
    """``python -m mattepod.split --endpoint ID job.json``: plan, fan the ranges out over the endpoint's workers,
    join; prints the join result. Needs RUNPOD_API_KEY."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m mattepod.split", description=main.__doc__)
    p.add_argument("job", help="JSON file with the job input (the object under \"input\", with a split section)")
    p.add_argument("--endpoint", required=True, help="RunPod endpoint id")
    p.add_argument("--parallel", type=int, default=8, help="range jobs in flight at once")
    p.add_argument("--timeout", type=int, default=6 * 3600, help="seconds to wait for each job")
    args = p.parse_args(argv)
    import runpod

    from mattepod import settings

    endpoint = runpod.Endpoint(args.endpoint, api_key=settings.get().runpod_api_key)
    job = json.loads(Path(args.job).read_text())
    try:
        out = run_split(lambda inp: endpoint.run_sync({"input": inp}, timeout=args.timeout), job, args.parallel)
    except RunStateError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    print(json.dumps(out["join"], indent=2))
    return 0 if (out["join"] or {}).get("status") == "completed" else 1


if __name__ == "__main__":
    raise SystemExit(main())
