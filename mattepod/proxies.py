"""Browser-playable previews of a run's video outputs, written once when the run finishes.

Why: the outputs are made for editing (10-bit HEVC alpha, ProRes, 16-bit PNG, 8K VR180), which no browser
plays. Gradio's Video component probes every file it is given and, when the container/codec pair is not one
a browser plays, re-encodes it to H.264 in the app process -- every time the result is shown. So the run
writes one small 8-bit H.264 MP4 per video output (``proxies/<output stem>.mp4``, at most ``MAX_WIDTH`` wide,
no audio, faststart) and records them in metadata.json as ``proxies``; the app shows only those (or an
output that already is 8-bit H.264 MP4) and never transcodes.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

MAX_WIDTH = 960
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi"}
_PLAYABLE_PIX = {"yuv420p", "yuvj420p"}


def is_browser_playable(path: str | Path) -> bool:
    """True for 8-bit 4:2:0 H.264 in MP4: what every browser plays and what Gradio passes through as is."""
    p = Path(path)
    if p.suffix.lower() != ".mp4" or not p.is_file():
        return False
    try:
        out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                              "stream=codec_name,pix_fmt", "-of", "json", str(p)],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        stream = (json.loads(out).get("streams") or [{}])[0]
    except (OSError, subprocess.SubprocessError, ValueError):
        return False
    return stream.get("codec_name") == "h264" and stream.get("pix_fmt") in _PLAYABLE_PIX


def write_proxy(src: str | Path, dest: str | Path, max_width: int = MAX_WIDTH) -> Path:
    """One 8-bit H.264 proxy of ``src`` (scaled down to ``max_width``, even sizes), written atomically."""
    src, dest = Path(src), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.stem + ".part.mp4")
    vf = f"scale='min({max_width},iw)':-2:flags=bilinear,format=yuv420p"
    cmd = ["ffmpeg", "-v", "error", "-nostdin", "-y", "-i", str(src), "-map", "0:v:0", "-an", "-vf", vf,
           "-c:v", "libx264", "-preset", "veryfast", "-crf", "26", "-pix_fmt", "yuv420p",
           "-movflags", "+faststart", str(tmp)]
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=None)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def write_for_run(run_dir: str | Path, outputs: dict[str, str]) -> dict[str, str]:
    """Proxies for every video output of a finished run: {format: path relative to the run folder}.

    Best effort: a proxy that cannot be written is logged and left out (the run's real outputs are what
    counts; the page then offers the download only).
    """
    run_dir = Path(run_dir)
    made: dict[str, str] = {}
    for fmt, name in (outputs or {}).items():
        src = run_dir / str(name)
        if src.suffix.lower() not in VIDEO_SUFFIXES or not src.is_file():
            continue
        dest = run_dir / "proxies" / f"{src.stem}.mp4"
        try:
            write_proxy(src, dest)
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("no browser preview for %s: %s", src.name, exc)
            continue
        made[str(fmt)] = dest.relative_to(run_dir).as_posix()
    return made


def finish_hook(run, outputs: dict[str, str]) -> dict[str, dict[str, str]]:
    """The run's finish step (``mattepod.run.finish_hooks``): metadata.json gets ``proxies``."""
    return {"proxies": write_for_run(run.run_dir, outputs)}
