"""Every output format as one row of a table: what frame to render, which ffmpeg settings, which file.

Rendering happens in torch on the engine's device (``mattepod.devframes``: the frame and alpha the engine
already has there are reused, each output comes back with one copy of its uint8/uint16 samples); the numpy
functions below are the reference they are tested against, and what formats without a torch renderer use.

One writer abstraction serves all video formats (``FFmpegWriter`` per segment, joined at the end); the two
image-sequence formats write PNG files straight into a ``.partial`` folder that is renamed when the run
completes. ``OutputSet`` is what the pipeline drives: open a segment, write (frame, alpha), close it; the join
that publishes them is ``mattepod/finalize.py``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from mattepod import devframes
from mattepod.config import OutputsConfig
from mattepod.errors import ConfigError, DiskFullError
from mattepod.media.probe import MediaInfo, probe
from mattepod.media.reader import read_frames
from mattepod.media.writer import FFmpegWriter

EVEN_PAD = ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"]


# Encoder presets, chosen from bench/encode_speed.py (CONFIG.md "Encoder speed" has the figures): x264
# veryfast gives files the size of fast, faster; x265 fast up to 4K, ultrafast above (8K SBS: about 6x
# faster, the matte's mean error unchanged at ~1e-4), where the CPU encoder is what limits a GPU run.
PRESETS = {"libx264": "veryfast", "libx265": "fast", "h264_nvenc": "p5", "hevc_nvenc": "p5"}
PRESETS_ABOVE_4K = {**PRESETS, "libx265": "ultrafast", "h264_nvenc": "p4", "hevc_nvenc": "p4"}
PIXELS_4K = 3840 * 2160


def preset_for(encoder: str, pixels: int) -> str:
    table = PRESETS_ABOVE_4K if pixels > PIXELS_4K else PRESETS
    return table.get(encoder, table["libx264"])


def hex_rgb(color: str) -> np.ndarray:
    return np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)], np.float32)


def over(frame: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    """frame*alpha + background*(1-alpha) as uint8 (background: a colour (3,) or an image like frame)."""
    a = alpha[..., None]
    f = frame.astype(np.float32) / (257.0 if frame.dtype == np.uint16 else 1.0)  # 16-bit frames: 0..255 scale
    out = f * a + background * (1.0 - a)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def alpha16(alpha: np.ndarray) -> np.ndarray:
    return np.round(alpha * 65535.0).astype(np.uint16)


def rgba8(frame: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = np.round(alpha * 255.0).astype(np.uint8)
    if frame.dtype == np.uint16:
        frame = np.round(frame / 257.0).astype(np.uint8)
    return np.concatenate([frame, a[..., None]], axis=2)


def rgba16(frame: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    rgb = frame if frame.dtype == np.uint16 else frame.astype(np.uint16) * 257
    return np.concatenate([rgb, alpha16(alpha)[..., None]], axis=2)


@dataclass(frozen=True)
class Format:
    name: str
    suffix: str  # file-name suffix after the stem: "_alpha.mp4", "_rgba_png" (a folder)
    pix_fmt: str  # rawvideo pixel format fed to ffmpeg; for image formats the PNG sample layout
    render: Callable[[np.ndarray, np.ndarray, "RenderContext"], np.ndarray]
    args: Callable[["RenderContext"], list[str]] | None  # None = PNG sequence
    # the same picture in torch on the device (None: ``render`` on the host arrays)
    render_t: Callable[[devframes.FrameAlpha, "RenderContext"], torch.Tensor] | None = None

    @property
    def is_sequence(self) -> bool:
        return self.args is None


@dataclass
class RenderContext:
    cfg: OutputsConfig
    video_encoders: dict[str, str]  # "h264"/"hevc" -> encoder name chosen by the probe
    background: Callable[[int], np.ndarray] | None = None
    layout: Any = None  # mattepod.stereo.Layout in vr180 mode
    fov: float = 180.0
    cache: devframes.DeviceCache | None = None  # where the torch renderers work (None = CPU)
    pixels: int = 0  # of the encoded frame: picks the preset (PRESETS / PRESETS_ABOVE_4K)

    def colour_t(self) -> torch.Tensor:
        dev = self.cache.device if self.cache else torch.device("cpu")
        return torch.from_numpy(hex_rgb(self.cfg.color)).to(dev)

    def background_t(self) -> torch.Tensor:
        assert self.background is not None and self.cache is not None
        return self.cache.upload(self.background(0))

    def x264(self, preset: str | None = None) -> list[str]:
        enc = self.video_encoders["h264"]
        preset = preset or preset_for(enc, self.pixels)
        q = ["-cq", str(self.cfg.crf), "-preset", preset] if "nvenc" in enc else ["-crf", str(self.cfg.crf), "-preset", preset]
        return [*EVEN_PAD, "-c:v", enc, *q, "-pix_fmt", "yuv420p"]

    def x265_10(self, preset: str | None = None) -> list[str]:
        enc = self.video_encoders["hevc"]
        preset = preset or preset_for(enc, self.pixels)
        if "nvenc" in enc:
            return [*EVEN_PAD, "-c:v", enc, "-cq", str(self.cfg.crf), "-preset", preset, "-pix_fmt", "p010le", "-tag:v", "hvc1"]
        return [*EVEN_PAD, "-c:v", enc, "-crf", str(self.cfg.crf), "-preset", preset, "-pix_fmt", "yuv420p10le",
                "-x265-params", "log-level=error", "-tag:v", "hvc1"]


def _alpha_args(ctx: RenderContext) -> list[str]:
    if ctx.cfg.alpha_codec == "ffv1":
        return ["-c:v", "ffv1", "-level", "3", "-pix_fmt", "gray16le"]
    return ctx.x265_10()


FORMATS: dict[str, Format] = {f.name: f for f in [
    Format("alpha", "_alpha.mp4", "gray16le", lambda fr, a, c: alpha16(a), _alpha_args,
           lambda p, c: devframes.alpha16(p.alpha_t)),
    Format("green", "_green.mp4", "rgb24", lambda fr, a, c: over(fr, a, hex_rgb(c.cfg.color)), RenderContext.x264,
           lambda p, c: devframes.over(p.frame_t, p.alpha_t, c.colour_t())),
    Format("composite", "_composite.mp4", "rgb24",
           lambda fr, a, c: over(fr, a, c.background(0) if c.background else 0), RenderContext.x264,
           lambda p, c: devframes.over(p.frame_t, p.alpha_t, c.background_t())),
    Format("prores", "_rgba.mov", "rgba64le", lambda fr, a, c: rgba16(fr, a),
           lambda c: ["-c:v", "prores_ks", "-profile:v", "4444", "-pix_fmt", "yuva444p10le", "-alpha_bits", "16",
                      "-vendor", "apl0"],
           lambda p, c: devframes.rgba16(p.frame_t, p.alpha_t)),
    Format("webm", "_rgba.webm", "rgba", lambda fr, a, c: rgba8(fr, a),
           lambda c: [*EVEN_PAD, "-c:v", "libvpx-vp9", "-pix_fmt", "yuva420p", "-crf", str(min(63, c.cfg.crf + 12)),
                      "-b:v", "0", "-row-mt", "1", "-deadline", "good", "-cpu-used", "4", "-auto-alt-ref", "0"],
           lambda p, c: devframes.rgba8(p.frame_t, p.alpha_t)),
    Format("png", "_rgba_png", "rgba", lambda fr, a, c: cv2.cvtColor(rgba8(fr, a), cv2.COLOR_RGBA2BGRA), None,
           lambda p, c: devframes.rgba8(p.frame_t, p.alpha_t, bgra=True)),
    Format("alpha16", "_alpha16_png", "gray16", lambda fr, a, c: alpha16(a), None,
           lambda p, c: devframes.alpha16(p.alpha_t)),
    # VR180 alpha-packed fisheye passthrough (DeoVR/HereSphere); size and name depend on the layout.
    Format("packed", "_packed.mp4", "rgb48le", lambda fr, a, c: _packed(fr, a, c), RenderContext.x265_10),
]}


COLOUR_FORMATS = {"green", "composite", "prores", "webm"}  # picture outputs (the mattes are data, untagged)


def _packed(frame: np.ndarray, alpha: np.ndarray, ctx: RenderContext) -> np.ndarray:
    from mattepod.vrproject import packed_frame

    return packed_frame(frame, alpha, ctx.layout, fov=ctx.fov)


def frame_size(fmt: Format, width: int, height: int, layout: Any = None) -> tuple[int, int]:
    """Size of what ``fmt.render`` produces: the input size, except the packed format (two square eyes)."""
    if fmt.name != "packed":
        return width, height
    eye_h = height if layout.arrangement == "sbs" else height // 2
    return 2 * eye_h, eye_h


def output_name(stem: str, fmt: Format, cfg: OutputsConfig, layout: Any = None, fov: float = 180.0) -> str:
    suffix = fmt.suffix
    if fmt.name == "alpha" and cfg.alpha_codec == "ffv1":
        suffix = "_alpha.mkv"
    if layout is not None:
        if fmt.name == "packed":
            from mattepod.vrproject import packed_name_for

            return packed_name_for(stem, layout, fov) + ".mp4"
        # DeoVR/HereSphere treat any name with an "_alpha" token as alpha-packed passthrough: the plain
        # SBS matte of a VR run is a "matte", and keeps the source's layout tokens (in the stem).
        suffix = suffix.replace("_alpha.", "_matte.")
    return stem + suffix


class BackgroundSource:
    """Composite background: an image (resized once) or a video streamed frame by frame, looped if short."""

    def __init__(self, path: str, width: int, height: int):
        self.path, self.size = path, (width, height)
        self._image: np.ndarray | None = None
        self._info: MediaInfo | None = None
        self._iter: Iterator[np.ndarray] | None = None
        img = cv2.imread(path, cv2.IMREAD_COLOR) if Path(path).suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp", ".webp"} else None
        if img is not None:
            self._image = cv2.resize(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), self.size, interpolation=cv2.INTER_AREA).astype(np.float32)
        else:
            self._info = probe(path)

    def seek(self, index: int) -> None:
        if self._info is not None:
            self._iter = read_frames(self._info, index % self._info.frame_count)

    def next(self) -> np.ndarray:
        if self._image is not None:
            return self._image
        assert self._info is not None
        if self._iter is None:
            self.seek(0)
        assert self._iter is not None
        try:
            frame = next(self._iter)
        except StopIteration:
            self.seek(0)
            frame = next(self._iter)
        if (frame.shape[1], frame.shape[0]) != self.size:
            frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)
        return frame.astype(np.float32)


@dataclass
class OutputSet:
    """All outputs of one run: segment files for videos, .partial folders for PNG sequences."""

    run_dir: Path
    stem: str
    width: int
    height: int
    fps: Fraction
    cfg: OutputsConfig
    video_encoders: dict[str, str]
    layout: Any = None
    fov: float = 180.0
    color_tags: dict[str, str] = field(default_factory=dict)  # the source's colour description (ffprobe names)
    device: str = "cpu"  # the engine's device: outputs are composited there (mattepod.devframes)
    formats: list[Format] = field(init=False)
    _writers: dict[str, FFmpegWriter] = field(default_factory=dict, init=False)
    _bg: BackgroundSource | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        unknown = [f for f in self.cfg.formats if f not in FORMATS]
        if unknown:
            raise ConfigError(f"outputs.formats {unknown} are not available in this mode", f"choose from {list(FORMATS)}")
        self.formats = [FORMATS[f] for f in dict.fromkeys(self.cfg.formats)]
        if "composite" in self.cfg.formats:
            self._bg = BackgroundSource(str(self.cfg.background), self.width, self.height)
        if "packed" in self.cfg.formats and self.layout is None:
            raise ConfigError("outputs.formats 'packed' needs stereo.mode: vr180", "set stereo.mode: vr180")
        self.ctx = RenderContext(self.cfg, self.video_encoders,
                                 background=(lambda _i: self._bg.next()) if self._bg else None,
                                 layout=self.layout, fov=self.fov, cache=devframes.cache_for(self.device),
                                 pixels=self.width * self.height)

    def name(self, fmt: Format) -> str:
        return output_name(self.stem, fmt, self.cfg, self.layout, self.fov)

    def segment_path(self, fmt: Format, index: int) -> Path:
        ext = Path(self.name(fmt)).suffix
        return self.run_dir / "segments" / fmt.name / f"{index:06d}{ext}"

    def sequence_dir(self, fmt: Format) -> Path:
        return self.run_dir / (self.name(fmt) + ".partial")

    def sequence_file(self, fmt: Format, index: int) -> Path:
        return self.sequence_dir(fmt) / f"{index:06d}.png"

    def open_segment(self, index: int, first_frame: int) -> None:
        if self._bg is not None:
            self._bg.seek(first_frame)
        for fmt in self.formats:
            if fmt.is_sequence:
                self.sequence_dir(fmt).mkdir(parents=True, exist_ok=True)
            else:
                w, h = frame_size(fmt, self.width, self.height, self.layout)
                args = fmt.args(self.ctx)
                if fmt.name in COLOUR_FORMATS:
                    args = [*args, *self._colour_args()]
                if self.layout is not None and self.name(fmt).endswith((".mkv", ".webm")):
                    from mattepod.vrproject import stereo_mode_tag

                    tag = "left_right" if fmt.name == "packed" else stereo_mode_tag(self.layout)
                    args = [*args, "-metadata:s:v:0", f"stereo_mode={tag}"]
                self._writers[fmt.name] = FFmpegWriter(self.segment_path(fmt, index), w, h,
                                                       self.fps, fmt.pix_fmt, args)

    def write(self, index: int, frame: np.ndarray, alpha: np.ndarray) -> None:
        pair = devframes.FrameAlpha(frame, alpha, self.ctx.cache)
        for fmt in self.formats:
            if fmt.render_t is not None:
                data = devframes.download(fmt.render_t(pair, self.ctx))
            else:
                data = fmt.render(frame, alpha, self.ctx)
            if fmt.is_sequence:
                path = self.sequence_file(fmt, index)
                if not cv2.imwrite(str(path), data):
                    free = shutil.disk_usage(path.parent).free
                    if free < data.nbytes * 2:
                        raise DiskFullError(f"disk full while writing {path.name}", "free space, then --resume the run")
                    raise OSError(f"could not write {path}")
            else:
                self._writers[fmt.name].write(data)

    def close_segment(self) -> None:
        writers, self._writers = self._writers, {}
        try:
            for w in writers.values():
                w.close()
        except BaseException:
            for w in writers.values():
                w.abort()
            raise

    def _colour_args(self) -> list[str]:
        """Pictures keep the source's colour description (a BT.709 clip stays tagged BT.709)."""
        flags = {"color_primaries": "-color_primaries", "color_transfer": "-color_trc", "color_space": "-colorspace"}
        return [arg for key, flag in flags.items() if self.color_tags.get(key, "unknown") not in ("unknown", "reserved")
                for arg in (flag, self.color_tags[key])]

    def abort(self) -> None:
        for w in self._writers.values():
            w.abort()
        self._writers = {}
