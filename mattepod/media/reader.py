"""Decode one frame at a time: an ffmpeg rawvideo pipe (videos) or one image file at a time (folders).

Rotated phone videos come out upright (ffmpeg's autorotate). Variable-frame-rate inputs are decoded with
``-fps_mode passthrough`` so every coded frame comes out exactly once: frame count in = frame count out.
"""

from __future__ import annotations

import subprocess
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from mattepod.errors import InvalidMediaError
from mattepod.media.probe import MediaInfo
from mattepod.media.tools import binary


def read_frames(info: MediaInfo, start: int = 0, count: int | None = None) -> Iterator[np.ndarray]:
    """Yield RGB uint8 frames ``start .. start+count-1`` (count None = to the end)."""
    end = info.frame_count if count is None else min(info.frame_count, start + count)
    if start >= info.frame_count:
        raise InvalidMediaError(f"start frame {start} is beyond the end ({info.frame_count} frames)",
                                "choose a smaller start frame")
    if info.kind == "images":
        yield from _read_images(info, start, end)
    else:
        yield from _read_video(info, start, end)


def read_frame(info: MediaInfo, index: int) -> np.ndarray:
    """One frame (for prompts and previews): a seek, not a decode of everything before it."""
    for frame in read_frames(info, index, 1):
        return frame
    raise InvalidMediaError(f"frame {index} could not be decoded from {info.path}", "check the file")


def _read_images(info: MediaInfo, start: int, end: int) -> Iterator[np.ndarray]:
    for path in info.images[start:end]:
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise InvalidMediaError(f"image {path} cannot be read", "replace or remove the broken file")
        if img.shape[:2] != (info.height, info.width):
            raise InvalidMediaError(
                f"image {Path(path).name} is {img.shape[1]}x{img.shape[0]}, the sequence is "
                f"{info.width}x{info.height}", "give every frame of a sequence the same size")
        yield cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _read_video(info: MediaInfo, start: int, end: int) -> Iterator[np.ndarray]:
    cmd = [binary("ffmpeg"), "-nostdin", "-hide_banner", "-v", "error"]
    vf = []
    if start and not info.vfr:
        # Input seek lands on the keyframe before the target and decodes forward (accurate_seek): half a
        # frame early so rounding can only keep the wanted frame, never drop it.
        cmd += ["-ss", f"{(start - 0.5) / float(info.fps):.6f}"]
    elif start:
        vf.append(f"select=gte(n\\,{start})")
    cmd += ["-i", info.path, "-map", "0:v:0", "-an", "-sn", "-dn"]
    if vf:
        cmd += ["-vf", ",".join(vf)]
    cmd += ["-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    frame_bytes = info.width * info.height * 3
    wanted = end - start
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=frame_bytes)
    got = 0
    eof = False
    tail: deque[str] = deque(maxlen=5)
    # Drain stderr in a thread: a corrupt stream can log more than a pipe holds and stall the decoder.
    drain = threading.Thread(target=lambda: tail.extend(
        ln.decode(errors="replace").strip() for ln in proc.stderr if ln.strip()), daemon=True)  # type: ignore[union-attr]
    drain.start()
    try:
        assert proc.stdout is not None
        while got < wanted:
            buf = proc.stdout.read(frame_bytes)
            if len(buf) < frame_bytes:
                eof = True  # ffmpeg ended (or broke) before the frames we were promised
                proc.wait()
                drain.join()
                break
            got += 1
            yield np.frombuffer(buf, np.uint8).reshape(info.height, info.width, 3)
    finally:
        # Also reached when the consumer stops early (generator closed): never wait on a writer we abandon.
        proc.kill()
        proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe:
                pipe.close()
    if eof and got < wanted:
        detail = tail[-1] if tail else "the stream ended early"
        raise InvalidMediaError(
            f"{info.path} is truncated or corrupt: decoded {start + got} of {end} frames ({detail})",
            f"re-export or repair the file, or process fewer frames (--max-frames {max(got, 1)})")
