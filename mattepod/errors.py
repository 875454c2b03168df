"""Every failure a user can cause or meet, each with its own exit code and a one-line fix.

Faces (CLI, scripts, UI, serverless) print ``str(err)`` and exit with ``err.exit_code``; nothing else
in the package calls ``sys.exit``. The codes are stable: scripts and the serverless worker branch on them.
"""

from __future__ import annotations


class MattePodError(Exception):
    """Base: a message naming the problem, and a hint saying what to do about it."""

    exit_code = 1

    def __init__(self, problem: str, fix: str = ""):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}" + (f" -> {fix}" if fix else ""))


class ConfigError(MattePodError):
    exit_code = 2  # argparse also uses 2 for bad flags


class InputNotFoundError(MattePodError):
    exit_code = 3


class InvalidMediaError(MattePodError):
    """Not a video, zero frames, corrupt or truncated mid-stream."""

    exit_code = 4


class MaskError(MattePodError):
    """Prompt problems: mask size or channels, empty/full masks, clicks outside the frame."""

    exit_code = 5


class WeightsError(MattePodError):
    exit_code = 6


class FFmpegMissingError(MattePodError):
    exit_code = 7


class DiskFullError(MattePodError):
    exit_code = 8


class RunStateError(MattePodError):
    """Refusing to overwrite a completed run, or a resume folder that cannot be resumed."""

    exit_code = 9


class EncodeError(MattePodError):
    exit_code = 10


class OutputPathError(MattePodError):
    """The output folder or run folder cannot be written: read-only, not a folder, no permission."""

    exit_code = 11


class GpuHostError(MattePodError):
    """The host cannot run the image's CUDA (driver too old, GPU not given to the container): start-up stops."""

    exit_code = 12


class DeviceMemoryError(MattePodError):
    exit_code = 13  # out of GPU (or CPU) memory even at the smallest matting size allowed


class CancelledError(MattePodError):
    """SIGTERM/SIGINT: the run stopped at a frame boundary and can be resumed."""

    exit_code = 130


EXIT_CODES = {cls.__name__: cls.exit_code for cls in MattePodError.__subclasses__()}
