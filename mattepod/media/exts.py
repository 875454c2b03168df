"""The one table of media file extensions (lower case, with the dot) every face and the reader agree on.

Why one table: the app knew 8 video types and batch 15, so a file batch accepted could not be picked in the
page. What ffmpeg decodes is decided by probing; these sets only say which names are offered as media.
"""

from __future__ import annotations

from pathlib import Path

VIDEO_EXTS = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".mts",
                        ".m2ts", ".wmv", ".flv", ".mxf", ".y4m"})
IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".exr"})
LIST_EXTS = frozenset({".txt", ".list", ".lst"})


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTS


def is_image(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTS
