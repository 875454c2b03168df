"""Encode frames through an ffmpeg pipe, and join finished segments into the final file without re-encoding.

The pipeline feeds each writer from its own thread via a bounded queue; a writer only knows bytes, sizes and
an ffmpeg argument list (the per-format table lives in mattepod/outputs.py).
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
from collections import deque
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np

from mattepod.errors import DiskFullError, EncodeError
from mattepod.media.tools import binary

# Which source audio codecs each container can carry without re-encoding.
AUDIO_OK = {
    ".mp4": {"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"},
    ".mov": {"aac", "mp3", "ac3", "eac3", "alac", "pcm_s16le", "pcm_s24le", "pcm_s16be", "pcm_s24be"},
    ".mkv": None,  # anything
    ".webm": {"opus", "vorbis"},
}


def _raise_for_stderr(what: str, text: str) -> None:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if any("No space left on device" in ln for ln in lines):
        raise DiskFullError(f"disk full while writing {what}", "free space in the output volume, then --resume the run")
    raise EncodeError(f"ffmpeg failed writing {what}: {lines[-1] if lines else 'unknown error'}",
                      "check the output settings (outputs.*) and the log")


class FFmpegWriter:
    """rawvideo frames of a fixed size and pixel format -> one encoded file."""

    def __init__(self, path: Path, width: int, height: int, fps: Fraction, pix_fmt: str, args: list[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [binary("ffmpeg"), "-nostdin", "-hide_banner", "-v", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", pix_fmt, "-s", f"{width}x{height}",
               "-r", f"{fps.numerator}/{fps.denominator}", "-i", "pipe:0", *args, str(self.path)]
        self._err: deque[str] = deque(maxlen=20)
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        self._drain = threading.Thread(target=self._read_err, daemon=True)
        self._drain.start()

    def _read_err(self) -> None:
        assert self._proc.stderr is not None
        for line in self._proc.stderr:
            self._err.append(line.decode(errors="replace"))

    def write(self, frame: np.ndarray) -> None:
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.write(memoryview(np.ascontiguousarray(frame)).cast("B"))
        except BrokenPipeError:
            self._proc.wait()
            self._drain.join()
            _raise_for_stderr(self.path.name, "".join(self._err))

    def close(self) -> None:
        if self._proc.stdin:
            try:
                self._proc.stdin.close()
            except BrokenPipeError:
                pass
        rc = self._proc.wait()
        self._drain.join()
        if rc != 0:
            _raise_for_stderr(self.path.name, "".join(self._err))

    def abort(self) -> None:
        self._proc.kill()
        self._proc.wait()
        self._drain.join()


def join_segments(segments: list[Path], out: Path, audio_source: str | None, audio_codecs: list[str],
                  start_seconds: float = 0.0, duration: float | None = None, *, expect_frames: int | None = None,
                  before_rename: Callable[[], None] | None = None) -> bool:
    """Concatenate segments with the concat demuxer (-c copy), add the source audio (copied), and rename
    the result into place atomically. Returns whether audio was included.

    Idempotent and kill-safe: the concat list and the ``.partial`` file have fixed names (a rerun overwrites
    them; the list lives beside the segments and goes with them), and ``out`` appears only by rename. With
    ``expect_frames`` the joined file's video packets are counted first: frames out must equal frames in."""
    missing = [s.name for s in segments if not s.is_file()]
    if missing:
        raise EncodeError(f"cannot join {out.name}: segment {missing[0]} is missing",
                          "--resume the run (it redoes missing segments)")
    ok = AUDIO_OK.get(out.suffix, set())
    with_audio = bool(audio_source and audio_codecs and (ok is None or audio_codecs[0] in ok))
    out.parent.mkdir(parents=True, exist_ok=True)
    list_path = segments[0].parent / (out.name + ".concat.txt") if segments else out.with_name(out.name + ".concat.txt")
    text = "".join(f"file '{seg.resolve().as_posix()}'\n" for seg in segments)
    tmp = out.with_name(out.stem + ".partial" + out.suffix)
    cmd = [binary("ffmpeg"), "-nostdin", "-hide_banner", "-v", "error", "-y",
           "-f", "concat", "-safe", "0", "-i", str(list_path)]
    if with_audio:
        if start_seconds:
            cmd += ["-ss", f"{start_seconds:.6f}"]
        cmd += ["-i", str(audio_source), "-map", "0:v:0", "-map", "1:a:0"]
        if duration:
            cmd += ["-t", f"{duration:.6f}"]
    else:
        cmd += ["-map", "0:v:0"]
    cmd += ["-c", "copy"]
    if out.suffix in (".mp4", ".mov"):
        cmd += ["-movflags", "+faststart"]
        if out.suffix == ".mp4" and any("hevc" in s.name or "alpha" in s.name for s in segments[:1]):
            cmd += ["-tag:v", "hvc1"] if _is_hevc(segments[0]) else []
    cmd.append(str(tmp))
    try:
        list_path.write_text(text)
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            _raise_for_stderr(out.name, res.stderr)
        if expect_frames is not None:
            got = count_frames(tmp)
            if got != expect_frames:
                raise EncodeError(f"joined {out.name} has {got} frames, {expect_frames} went in",
                                  "--resume the run (it re-checks and redoes bad segments)")
        if before_rename is not None:
            before_rename()
        os.replace(tmp, out)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFullError(f"disk full while joining {out.name}", "free space, then --resume the run") from None
        raise
    finally:
        list_path.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return with_audio


def count_frames(path: Path) -> int:
    """Video packets in the first video stream (no decode): one per frame for every codec we write."""
    res = subprocess.run([binary("ffprobe"), "-v", "error", "-select_streams", "v:0", "-count_packets",
                          "-show_entries", "stream=nb_read_packets", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True)
    text = res.stdout.strip().split(",")[0].strip()
    return int(text) if res.returncode == 0 and text.isdigit() else -1


def _is_hevc(path: Path) -> bool:
    res = subprocess.run([binary("ffprobe"), "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "stream=codec_name", "-of", "csv=p=0", str(path)], capture_output=True, text=True)
    return res.stdout.strip() == "hevc"
