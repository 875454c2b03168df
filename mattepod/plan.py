"""What a run would do, without doing it (``run --dry-run``): the validated config, the input probe and the
frame range. Why a module of its own: the run itself imports torch (the engine, device frame work); a dry run
and a config error must not pay seconds for it, so this module imports only the config and ffprobe.
"""

from __future__ import annotations

from typing import Any

from mattepod import config as config_mod
from mattepod.config import Config
from mattepod.errors import InvalidMediaError, MaskError
from mattepod.media.probe import MediaInfo, probe
from mattepod.media.tools import binary


def plan(cfg: Config) -> dict[str, Any]:
    """What a run would do (``--dry-run``): validated config + input probe + frame range; creates nothing."""
    from mattepod import quality  # numpy/OpenCV only

    info = probe_input(cfg)
    first, count = frame_range(cfg, info)
    gt_start = quality.precheck(cfg, info, first, count)  # issue 17
    return {"input": info.to_json(), "start_frame": first, "frames": count, "engine": cfg.engine.name,
            "outputs": list(cfg.outputs.formats), "prompt_frame": cfg.prompt.frame,
            "segments": -(-count // cfg.recovery.segment_frames), "stereo": cfg.stereo.mode,
            "weights_dir": str(cfg.resolved_weights_dir()),
            "quality": None if gt_start is None else {"gt": cfg.quality.gt, "gt_start": gt_start,
                                                      "depth": cfg.quality.depth}}


def probe_input(cfg: Config) -> MediaInfo:
    if not cfg.input:
        raise config_mod.ConfigError("no input given", "pass --input VIDEO or set input: in the config")
    binary("ffmpeg")
    return probe(cfg.input)


def frame_range(cfg: Config, info: MediaInfo) -> tuple[int, int]:
    if cfg.start_frame >= info.frame_count:
        raise InvalidMediaError(f"start_frame {cfg.start_frame} is beyond the end ({info.frame_count} frames)",
                                f"choose a start frame below {info.frame_count}")
    count = info.frame_count - cfg.start_frame
    if cfg.max_frames:
        count = min(count, cfg.max_frames)
    for spec in [cfg.prompt.frame, *(k.frame for k in cfg.prompt.keyframes)]:
        if spec >= count:
            raise MaskError(f"prompt frame {spec} is beyond the last processed frame ({count - 1})",
                            "choose a prompt frame inside the processed range")
    for sub in cfg.prompt.subjects:  # prompt.subjects (#16): each subject's own frames
        for f in [cfg.prompt.frame if sub.frame is None else sub.frame, *(k.frame for k in sub.keyframes)]:
            if f >= count:
                raise MaskError(f"subject {sub.name}: prompt frame {f} is beyond the last processed frame ({count - 1})",
                                "choose a prompt frame inside the processed range")
    return cfg.start_frame, count
