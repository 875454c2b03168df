"""Where ffmpeg and ffprobe are, and a clear error when they are not."""

from __future__ import annotations

import os
import shutil

from mattepod.errors import FFmpegMissingError


def binary(name: str) -> str:
    """Path of ffmpeg/ffprobe; env MATTEPOD_FFMPEG_DIR points at another folder (tests, custom builds)."""
    folder = os.environ.get("MATTEPOD_FFMPEG_DIR")
    found = shutil.which(name, path=folder) if folder else shutil.which(name)
    if not found:
        raise FFmpegMissingError(
            f"{name} not found" + (f" in MATTEPOD_FFMPEG_DIR={folder}" if folder else " on PATH"),
            "install it (Debian/Ubuntu: apt-get install -y ffmpeg) or set MATTEPOD_FFMPEG_DIR")
    return found
