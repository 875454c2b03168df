"""Decode one frame at a time: an ffmpeg rawvideo pipe (videos) or one image file at a time (folders).

Rotated phone videos come out upright (ffmpeg's autorotate). Variable-frame-rate inputs are decoded with
``-fps_mode passthrough`` so every coded frame comes out exactly once: frame count in = frame count out.
"""

from __future__ import annotations

import logging
import re
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

log = logging.getLogger("mattepod.reader")


def source_bits(info: MediaInfo) -> int:
    """Bits per sample of the source (8 for 8-bit or unknown; 10, 12, 16 from the pixel format)."""
    m = re.search(r"(9|10|12|14|16)(le|be)$", info.pix_fmt or "")
    if m:
        return int(m.group(1))
    return 16 if (info.pix_fmt or "").startswith(("rgb48", "rgba64", "gray16", "p016")) else (
        10 if (info.pix_fmt or "").startswith(("p010", "x2rgb10", "x2bgr10")) else 8)


def frame_depth(info: MediaInfo, engine: object, keyframes: bool = False) -> int:
    """Bits of the frames a run decodes: 16 when the engine says ``accepts_16bit`` and the source has more
    than 8 bits, else 8. Runs with keyframe prompts stay 8-bit (SAM 2 and the detector take uint8)."""
    return 16 if getattr(engine, "accepts_16bit", False) and source_bits(info) > 8 and not keyframes else 8


def read_frames(info: MediaInfo, start: int = 0, count: int | None = None, depth: int = 8,
                decoder: str = "auto") -> Iterator[np.ndarray]:
    """Yield RGB frames ``start .. start+count-1`` (count None = to the end): uint8, or uint16 with
    ``depth=16`` (rgb48: a 10-bit source keeps its precision). ``decoder``: ``auto`` = NVDEC where
    ffmpeg and the GPU decode this stream (``media.encoders.pick_decoder``), else the CPU; ``cpu``."""
    end = info.frame_count if count is None else min(info.frame_count, start + count)
    if start >= info.frame_count:
        raise InvalidMediaError(f"start frame {start} is beyond the end ({info.frame_count} frames)",
                                "choose a smaller start frame")
    if info.kind == "images":
        for img in _read_images(info, start, end):
            yield img if depth == 8 else img.astype(np.uint16) * 257
        return
    hw_decoder = None
    if decoder == "auto":
        from mattepod.media.encoders import pick_decoder

        hw_decoder = pick_decoder(info.codec, info.width, info.height, info.pix_fmt)
    got = 0
    if hw_decoder is not None:
        try:
            for frame in _read_video(info, start, end, depth, hw_decoder):
                got += 1
                yield frame
            return
        except InvalidMediaError as exc:
            # NVDEC refused the stream part way (a profile or level it lacks): the CPU takes over there.
            log.warning("NVDEC (%s) stopped after %d frames (%s); decoding on the CPU from frame %d",
                        hw_decoder, got, exc, start + got)
    yield from _read_video(info, start + got, end, depth, None)


def read_frame(info: MediaInfo, index: int, depth: int = 8) -> np.ndarray:
    """One frame (for prompts and previews): a seek, not a decode of everything before it."""
    for frame in read_frames(info, index, 1, depth=depth):
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


def _read_video(info: MediaInfo, start: int, end: int, depth: int = 8,
                hw_decoder: str | None = None) -> Iterator[np.ndarray]:
    cmd = [binary("ffmpeg"), "-nostdin", "-hide_banner", "-v", "error"]
    if hw_decoder:
        cmd += ["-c:v", hw_decoder]  # NVDEC; frames come back to system memory, converted below
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
    pix, dtype, sample = ("rgb48le", np.dtype("<u2"), 2) if depth == 16 else ("rgb24", np.dtype(np.uint8), 1)
    cmd += ["-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", pix, "pipe:1"]
    frame_bytes = info.width * info.height * 3 * sample
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
            yield np.frombuffer(buf, dtype).reshape(info.height, info.width, 3)
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
