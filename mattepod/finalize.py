"""Finalisation as a recorded state machine: publish each output, run the finish hooks, clean up.

Every step is idempotent and is appended to ``manifest.finalize`` (atomically) once done, so a kill at any
instant resumes at the first step not recorded and ends with the same bytes:

* ``publish:<format>`` video: the segments are joined into ``<name>.partial<ext>`` (fixed names: a rerun
  overwrites them), the joined file's frames are counted (frames out must equal frames in), then it is
  renamed into place. Image sequence: the ``.partial`` folder's frames are counted and it is renamed; if
  the rename already happened, the final folder is counted instead.
* ``hook:<name>``: each finish hook (``mattepod.run.finish_hooks``); its metadata fields are merged.
* ``cleanup``: segments (with their concat lists), the backward spill, engine states, stray ``.partial``
  files. Only then does the caller mark the run ``completed``.
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING

from mattepod.errors import EncodeError
from mattepod.media.writer import join_segments
from mattepod.outputs import Format

if TYPE_CHECKING:
    from mattepod.run import Run


def finish(run: "Run") -> dict[str, str]:
    """Publish every output, run the finish hooks, clean up; returns {format: file name in the run folder}."""
    from mattepod.run import fault_point, finish_hooks

    m, outs = run.manifest, run.outs
    outputs = {fmt.name: outs.name(fmt) for fmt in outs.formats}
    todo = [fmt for fmt in outs.formats if f"publish:{fmt.name}" not in m.finalize]
    if todo:
        run.progress.emit({"event": "progress", "stage": "joining", "frame": run.count, "total": run.count,
                           "fps": None, "eta": None})
    for fmt in todo:
        step = f"publish:{fmt.name}"
        run.cancel.check()
        fault_point(f"{step}:before")
        if fmt.is_sequence:
            _publish_sequence(run, fmt)
        else:
            _publish_video(run, fmt, lambda step=step: fault_point(f"{step}:joined"))
        fault_point(f"{step}:done")
        _mark(run, step)
    for name, hook in finish_hooks(run):
        step = f"hook:{name}"
        if step in m.finalize:
            continue
        run.cancel.check()
        fields = hook(run, dict(outputs))
        if fields:
            run.folder.update(**fields)
        fault_point(f"{step}:done")
        _mark(run, step)
    if "cleanup" not in m.finalize:
        fault_point("cleanup:before")
        cleanup(run)
        fault_point("cleanup:done")
        _mark(run, "cleanup")
    run.folder.update(previews=sorted(str(p.relative_to(run.run_dir)) for p in (run.run_dir / "previews").glob("*.png")))
    return outputs


def _mark(run: "Run", step: str) -> None:
    run.manifest.finalize.append(step)
    run.manifest.save(run.run_dir)


def _publish_video(run: "Run", fmt: Format, before_rename) -> None:
    outs, info = run.outs, run.info
    segments = -(-run.count // run.seg_len)
    audio = info.path if (run.cfg.outputs.copy_audio and info.audio and info.kind == "video") else None
    join_segments([outs.segment_path(fmt, i) for i in range(segments)], run.run_dir / outs.name(fmt), audio,
                  [a["codec"] for a in info.audio], run.first / float(info.fps), run.count / float(outs.fps),
                  expect_frames=run.count, before_rename=before_rename)


def _publish_sequence(run: "Run", fmt: Format) -> None:
    partial, final = run.outs.sequence_dir(fmt), run.run_dir / run.outs.name(fmt)
    if partial.is_dir():
        _count_sequence(partial, run.count, final.name)
        if final.exists():  # an earlier, unfinished publish of this same run (never a completed run)
            shutil.rmtree(final)
        os.replace(partial, final)
    elif final.is_dir():
        _count_sequence(final, run.count, final.name)  # renamed before the kill: just check it
    else:
        raise EncodeError(f"the frames of {final.name} are gone (neither {partial.name} nor {final.name} exists)",
                          "--resume the run (it redoes missing frames)")


def _count_sequence(folder, count: int, name: str) -> None:
    want = {f"{i:06d}.png" for i in range(count)}
    have = {p.name for p in folder.iterdir() if p.name.endswith(".png")}
    if have != want:
        missing = sorted(want - have)
        raise EncodeError(f"{name} has {len(have & want)} of {count} frames" + (f" ({missing[0]} missing)" if missing else ""),
                          "--resume the run (it re-checks and redoes bad segments)")


def unpublish(run: "Run") -> None:
    """Before segments are redone: image sequences already renamed go back to ``.partial`` (videos are
    simply joined again). Only ever for a run that is not completed."""
    for fmt in run.outs.formats:
        if fmt.is_sequence and f"publish:{fmt.name}" in run.manifest.finalize:
            partial, final = run.outs.sequence_dir(fmt), run.run_dir / run.outs.name(fmt)
            if final.is_dir() and not partial.exists():
                os.replace(final, partial)


def cleanup(run: "Run") -> None:
    d = run.run_dir
    for sub in ("segments", "spill", "state"):
        shutil.rmtree(d / sub, ignore_errors=True)
    for fmt in run.outs.formats:
        if not fmt.is_sequence:
            final = d / run.outs.name(fmt)
            final.with_name(final.stem + ".partial" + final.suffix).unlink(missing_ok=True)
    # temp files of atomic writes cut short by a kill (write_atomic names them ".<name><random>")
    for p in d.glob(".*"):
        if p.is_file() and p.name.startswith((".metadata.json", ".manifest.json", ".progress.json", ".config.yaml")):
            p.unlink(missing_ok=True)
