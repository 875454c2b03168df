"""ffprobe an input (video file or image-sequence folder) into one dataclass the whole run reads."""

from __future__ import annotations

import json
import logging
import stat
import subprocess
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from mattepod.errors import InputNotFoundError, InvalidMediaError
from mattepod.media.exts import IMAGE_EXTS  # the one extension table
from mattepod.media.tools import binary

log = logging.getLogger("mattepod.probe")
DEFAULT_SEQUENCE_FPS = Fraction(24)


@dataclass
class MediaInfo:
    path: str
    kind: str  # "video" | "images"
    width: int  # as displayed (after rotation)
    height: int
    fps: Fraction
    frame_count: int
    duration: float
    rotation: int = 0
    codec: str = ""
    pix_fmt: str = ""
    vfr: bool = False
    color: dict[str, str] = field(default_factory=dict)
    audio: list[dict[str, Any]] = field(default_factory=list)
    side_data: list[dict[str, Any]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    start_time: float = 0.0
    images: list[str] = field(default_factory=list, repr=False)
    warnings: list[str] = field(default_factory=list)  # doubts about the input that did not stop the run

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["fps"] = f"{self.fps.numerator}/{self.fps.denominator}"
        d["fps_float"] = float(self.fps)
        d.pop("images")
        if self.kind == "images":
            d["image_count"] = len(self.images)
        return d


def _fraction(text: str | None) -> Fraction | None:
    if not text or text in ("0/0", "N/A"):
        return None
    try:
        f = Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None
    return f if f > 0 else None


def _rotation(stream: dict[str, Any]) -> int:
    rot = 0
    for sd in stream.get("side_data_list", []) or []:
        if "rotation" in sd:
            rot = int(round(float(sd["rotation"])))
    if not rot and "rotate" in (stream.get("tags") or {}):
        rot = -int(stream["tags"]["rotate"])  # the tag is clockwise, the display matrix anticlockwise
    return rot % 360


def _ffprobe(path: Path, *args: str) -> dict[str, Any]:
    cmd = [binary("ffprobe"), "-v", "error", "-of", "json", *args, str(path)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        msg = (res.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise InvalidMediaError(f"{path} is not a readable video ({msg})", "check the file plays, or re-export it")
    return json.loads(res.stdout or "{}")


def probe(path: str | Path) -> MediaInfo:
    p = Path(path)
    if not p.exists():
        raise InputNotFoundError(f"input {p} does not exist", "check the path (inside the container: /workspace/...)")
    mode = p.stat().st_mode
    if stat.S_ISDIR(mode):
        return _probe_images(p)
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else \
            "a socket" if stat.S_ISSOCK(mode) else "not a regular file"
        raise InvalidMediaError(f"input {p} is {kind}, not a video file or a folder of images",
                                "give a regular video file (a pipe or device cannot be seeked or resumed)")
    data = _ffprobe(p, "-show_streams", "-show_format")
    streams = data.get("streams", [])
    video = [s for s in streams if s.get("codec_type") == "video"
             and not (s.get("disposition") or {}).get("attached_pic")]
    if not video:
        raise InvalidMediaError(f"{p} has no video stream", "give a video file or a folder of images")
    v = video[0]
    avg = _fraction(v.get("avg_frame_rate"))
    real = _fraction(v.get("r_frame_rate"))
    fps = avg or real
    if fps is None:
        raise InvalidMediaError(f"{p} has no frame rate", "re-export the video with a fixed frame rate")
    duration = float(v.get("duration") or data.get("format", {}).get("duration") or 0.0)
    count = int(v.get("nb_frames") or 0)
    if count <= 0:  # containers such as mkv/webm store no count: count packets (no decode)
        counted = _ffprobe(p, "-select_streams", "v:0", "-count_packets", "-show_entries", "stream=nb_read_packets")
        count = int((counted.get("streams") or [{}])[0].get("nb_read_packets") or 0)
    if count <= 0:
        raise InvalidMediaError(f"{p} has zero video frames", "check the file is not empty or truncated")
    warnings = _doubts(p, data, v, count, fps)
    rotation = _rotation(v)
    w, h = int(v["width"]), int(v["height"])
    if rotation in (90, 270):
        w, h = h, w
    vfr = bool(avg and real and abs(float(avg) - float(real)) > 0.01 * float(real))
    color = {k: v[k] for k in ("color_range", "color_space", "color_transfer", "color_primaries") if k in v}
    audio = [{"index": s["index"], "codec": s.get("codec_name", ""), "channels": s.get("channels"),
              "sample_rate": s.get("sample_rate")} for s in streams if s.get("codec_type") == "audio"]
    side = [dict(sd) for sd in (v.get("side_data_list") or [])]
    return MediaInfo(path=str(p), kind="video", width=w, height=h, fps=fps, frame_count=count,
                     duration=duration or count / float(fps), rotation=rotation, codec=v.get("codec_name", ""),
                     pix_fmt=v.get("pix_fmt", ""), vfr=vfr, color=color, audio=audio, side_data=side,
                     tags={str(k).lower(): str(val) for k, val in (v.get("tags") or {}).items()},
                     start_time=float(v.get("start_time") or 0.0), warnings=warnings)


IMAGE_FORMATS = {"image2", "png_pipe", "jpeg_pipe", "bmp_pipe", "tiff_pipe", "webp_pipe", "exr_pipe", "gif", "apng"}


def _doubts(p: Path, data: dict[str, Any], v: dict[str, Any], count: int, fps: Fraction) -> list[str]:
    """Inputs that decode but are probably not what the user meant: each becomes a logged warning."""
    out = []
    fmt = str((data.get("format") or {}).get("format_name", ""))
    if set(fmt.split(",")) & IMAGE_FORMATS and p.suffix.lower() not in IMAGE_EXTS | {".gif", ".apng"}:
        out.append(f"{p.name} is a {v.get('codec_name', 'still')} image named {p.suffix}, not a video: it is "
                   f"processed as {count} frame(s); rename it, or give a folder of images")
    elif not v.get("nb_frames"):
        # containers without a frame count (mkv/webm): packets were counted; a cut-off file has fewer than
        # its header's duration says (an mp4 cut off fails at decode instead: its index lists every frame)
        declared = float((data.get("format") or {}).get("duration") or 0.0)
        expect = int(declared * float(fps))
        if expect and count < expect - max(2, expect // 50):
            out.append(f"{p.name} looks truncated: {count} frames present, its header says about {expect}; "
                       f"the run processes the {count} present (re-export or repair the file for the rest)")
    for w in out:
        log.warning("%s", w)
    return out


def _probe_images(folder: Path) -> MediaInfo:
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXTS and f.is_file())
    if not files:
        raise InvalidMediaError(f"folder {folder} holds no images ({', '.join(sorted(IMAGE_EXTS))})",
                                "give a folder of numbered frames or a video file")
    data = _ffprobe(files[0], "-show_streams")
    s = data["streams"][0]
    fps = DEFAULT_SEQUENCE_FPS
    return MediaInfo(path=str(folder), kind="images", width=int(s["width"]), height=int(s["height"]), fps=fps,
                     frame_count=len(files), duration=len(files) / float(fps), codec=s.get("codec_name", ""),
                     pix_fmt=s.get("pix_fmt", ""), images=[str(f) for f in files])
