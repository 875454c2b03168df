"""Matting quality against a ground truth: MAD, MSE, Grad, Conn and dtSSD per frame and as clip means.

The definitions are the matting field's, as used by the official MatAnyone evaluation (adapted from
RobustVideoMatting's ``evaluation/evaluate_lr.py``); TEST.md ("Quality metrics") states them. Every frame is an
alpha in [0, 1] held as float32 (the field reads 8-bit grey and divides by 255 in float32); the metrics are
then computed in float64. Per frame:

* MAD   = mean |p - g| * 1e3
* MSE   = mean (p - g)^2 * 1e3
* Grad  = sum (|grad g'| - |grad p'|)^2 / 1e3, where x' is x min-max normalised to [0, 1] (a constant frame
          becomes 0) and |grad x| the magnitude of x correlated with a Gaussian-derivative kernel (sigma 1.4,
          truncated where the Gaussian falls below 1e-2 of its peak scale, unit L2 norm, replicated borders)
* Conn  = sum |phi(g) - phi(p)| / 1e3, with thresholds t_i = 0.1 i, the "round-down" level of a pixel being
          t_{i-1} for the first i where it leaves the largest 4-connected component of {g >= t_i and p >= t_i}
          (1 if it never does), and phi(x) = 1 - d * [d >= 0.15] for d = x - round-down
* dtSSD = sqrt(sum ((p_t - p_{t-1}) - (g_t - g_{t-1}))^2 / N) * 1e2; 0 on the first frame, which the clip
          mean includes (the field's convention)

Frames stream: one predicted and one ground-truth frame (plus the previous pair for dtSSD) are held at a time.
Sources are PNG (or other image) folders, alpha videos (decoded by ffmpeg to 16-bit grey: nothing is cut to
8 bits on the way) and MattePod run folders (their matte output). ``depth="field"`` reads every frame the way
the field's reader does (8-bit grey; a 16-bit sample keeps its high byte, as OpenCV's grey PNG read does);
``depth="native"`` keeps the source's precision (16-bit samples / 65535).
"""

from __future__ import annotations

import json
import math
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mattepod.errors import CancelledError, ConfigError, InputNotFoundError, InvalidMediaError, MattePodError, RunStateError
from mattepod.media.probe import IMAGE_EXTS, probe
from mattepod.media.tools import binary

METRICS = ("mad", "mse", "grad", "conn", "dtssd")
LABELS = {"mad": "MAD", "mse": "MSE", "grad": "Grad", "conn": "Conn", "dtssd": "dtSSD"}
DEPTHS = ("field", "native")
QUALITY_FILE = "quality.json"
SOURCE = ("MatAnyone evaluation (pq-yang/MatAnyone), adapted from RobustVideoMatting "
          "evaluation/evaluate_lr.py (PeterL1n/RobustVideoMatting)")
# Which output of a run is its matte, best first: lossless 16-bit before lossy 10-bit before 8-bit.
RUN_MATTE_ORDER = ("alpha16", "alpha", "png", "prores", "webm")


# ---------------------------------------------------------------- metrics (one frame pair)

def mad(pred: np.ndarray, gt: np.ndarray) -> float:
    return float(np.abs(pred.astype(np.float64) - gt).mean() * 1e3)


def mse(pred: np.ndarray, gt: np.ndarray) -> float:
    return float(np.square(pred.astype(np.float64) - gt).mean() * 1e3)


@dataclass(frozen=True)
class GaussGrad:
    """The separable Gaussian-derivative kernel of the Grad metric: K[i, j] = g(i) * dg(j) / ||g (x) dg||."""

    sigma: float = 1.4
    smooth: np.ndarray = field(init=False, repr=False)  # along the other axis (Gaussian), unit norm
    deriv: np.ndarray = field(init=False, repr=False)  # along the gradient axis (derivative of Gaussian), unit norm

    def __post_init__(self) -> None:
        s, eps = self.sigma, 1e-2
        half = int(math.ceil(s * math.sqrt(-2.0 * math.log(math.sqrt(2.0 * math.pi) * s * eps))))
        x = np.arange(-half, half + 1, dtype=np.float64)
        g = np.exp(-x ** 2 / (2 * s ** 2)) / (s * math.sqrt(2 * math.pi))
        dg = -x * g / s ** 2
        # ||outer(g, dg)||_F = ||g|| * ||dg||: normalising each factor normalises the 2-D kernel
        object.__setattr__(self, "smooth", g / np.linalg.norm(g))
        object.__setattr__(self, "deriv", dg / np.linalg.norm(dg))

    def magnitude(self, img: np.ndarray) -> np.ndarray:
        """|grad img|: separable correlation (no kernel flip) in float64, borders replicated."""
        img = np.ascontiguousarray(img, np.float64)
        gx = cv2.sepFilter2D(img, cv2.CV_64F, self.deriv, self.smooth, borderType=cv2.BORDER_REPLICATE)
        gy = cv2.sepFilter2D(img, cv2.CV_64F, self.smooth, self.deriv, borderType=cv2.BORDER_REPLICATE)
        return np.sqrt(gx * gx + gy * gy)


def _minmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi - lo > np.finfo(np.float64).eps else np.zeros_like(x)


_GRAD = GaussGrad()


def grad(pred: np.ndarray, gt: np.ndarray, kernel: GaussGrad = _GRAD) -> float:
    diff = kernel.magnitude(_minmax(gt)) - kernel.magnitude(_minmax(pred))
    return float(np.square(diff).sum() / 1e3)


def largest_component(binary_img: np.ndarray) -> np.ndarray:
    """Mask of the largest 4-connected component of a boolean image (empty if there is none). Equal sizes:
    the component reached first in raster order wins."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary_img.astype(np.uint8), connectivity=4)
    if n <= 1:
        return np.zeros(binary_img.shape, bool)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    best = np.flatnonzero(sizes == sizes.max()) + 1
    if len(best) > 1:
        flat = labels.ravel()
        first = {lab: int(np.argmax(flat == lab)) for lab in best}
        label = min(best, key=lambda lab: first[lab])
    else:
        label = int(best[0])
    return labels == label


def conn(pred: np.ndarray, gt: np.ndarray, step: float = 0.1) -> float:
    p, g = pred.astype(np.float64), gt.astype(np.float64)
    levels = [i * step for i in range(int(round(1 / step)) + 1)]
    # {g >= t and p >= t} = {min(g, p) >= t}; every later set lies inside the first one, so the components
    # are found inside its bounding box (raster order there is the frame's), and everything outside it
    # leaves at the first threshold (level 0)
    low = np.minimum(p, g)
    level = np.full(g.shape, levels[0])
    first = low >= levels[1]
    rows, cols = np.flatnonzero(first.any(axis=1)), np.flatnonzero(first.any(axis=0))
    if len(rows):
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        sub = low[box]
        sub_level = np.ones(sub.shape)  # never left: 1
        kept = np.ones(sub.shape, bool)  # still inside every largest component so far
        for i in range(1, len(levels)):
            omega = largest_component(sub >= levels[i])
            sub_level[kept & ~omega] = levels[i - 1]
            kept &= omega
            if not kept.any():
                break
        level[box] = sub_level
    gd, pd = g - level, p - level
    g_phi = 1.0 - gd * (gd >= 0.15)
    p_phi = 1.0 - pd * (pd >= 0.15)
    return float(np.abs(g_phi - p_phi).sum() / 1e3)


def dtssd(pred: np.ndarray, pred_prev: np.ndarray, gt: np.ndarray, gt_prev: np.ndarray) -> float:
    d = (pred.astype(np.float64) - pred_prev) - (gt.astype(np.float64) - gt_prev)
    return float(math.sqrt(np.square(d).sum() / d.size) * 1e2)


# ---------------------------------------------------------------- streaming over a clip

@dataclass
class ClipMeter:
    """Feeds frame pairs in order; keeps only the previous pair (dtSSD) and the per-frame numbers."""

    per_frame: list[dict[str, float]] = field(default_factory=list)
    _prev: tuple[np.ndarray, np.ndarray] | None = None

    def add(self, pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
        if pred.shape != gt.shape:
            raise InvalidMediaError(
                f"frame {len(self.per_frame)}: prediction is {pred.shape[1]}x{pred.shape[0]}, ground truth "
                f"{gt.shape[1]}x{gt.shape[0]}", "compare mattes of the same size (re-export one of them)")
        row = {"mad": mad(pred, gt), "mse": mse(pred, gt), "grad": grad(pred, gt), "conn": conn(pred, gt),
               "dtssd": 0.0 if self._prev is None else dtssd(pred, self._prev[0], gt, self._prev[1])}
        self._prev = (pred, gt)
        self.per_frame.append(row)
        return row

    def mean(self) -> dict[str, float]:
        n = len(self.per_frame)
        return {m: math.fsum(r[m] for r in self.per_frame) / n for m in METRICS} if n else {}


# ---------------------------------------------------------------- alpha sources

@dataclass
class AlphaSource:
    """A matte to read frame by frame: an image folder, an alpha video, or the matte of a run folder."""

    path: str
    kind: str  # "images" | "video"
    width: int
    height: int
    frame_count: int
    detail: str = ""  # what was picked (a run's output name, the video's pixel format)
    images: list[str] = field(default_factory=list, repr=False)
    pix_fmt: str = ""
    codec: str = ""

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "width": self.width, "height": self.height,
                "frames": self.frame_count, "detail": self.detail}

    def frames(self, depth: str = "field", start: int = 0, count: int | None = None) -> Iterator[np.ndarray]:
        """float32 alphas in [0, 1], frames ``start .. start+count-1``."""
        end = self.frame_count if count is None else min(self.frame_count, start + count)
        if self.kind == "images":
            for path in self.images[start:end]:
                yield _image_alpha(path, depth, (self.width, self.height))
        else:
            for raw in _video_gray16(self, start, end):
                yield _scale(raw, depth)


def _scale(raw: np.ndarray, depth: str) -> np.ndarray:
    if raw.dtype == np.uint16:
        if depth == "field":
            return (raw >> 8).astype(np.float32) / np.float32(255)
        return raw.astype(np.float32) / np.float32(65535)
    if raw.dtype == np.uint8:
        return raw.astype(np.float32) / np.float32(255)
    if raw.dtype == np.float32:  # float images (EXR/TIFF) are alphas already
        return np.clip(raw, 0.0, 1.0)
    raise InvalidMediaError(f"unsupported sample type {raw.dtype}", "use 8- or 16-bit PNGs")


def _image_alpha(path: str, depth: str, size: tuple[int, int]) -> np.ndarray:
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InvalidMediaError(f"image {path} cannot be read", "replace or remove the broken file")
    if img.ndim == 3 and img.shape[2] == 4:
        plane = img[..., 3]  # an RGBA frame (MattePod's png output): the matte is its alpha channel
    elif img.ndim == 3 and depth == "field":
        plane = cv2.imread(path, cv2.IMREAD_GRAYSCALE)  # exactly the field's reader for colour images
    elif img.ndim == 3:
        plane = cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2GRAY)
    else:
        plane = img
    if (plane.shape[1], plane.shape[0]) != size:
        raise InvalidMediaError(f"image {Path(path).name} is {plane.shape[1]}x{plane.shape[0]}, the sequence is "
                                f"{size[0]}x{size[1]}", "give every frame of a sequence the same size")
    return _scale(plane, depth)


def _has_alpha_plane(pix_fmt: str) -> bool:
    return pix_fmt.startswith(("yuva", "rgba", "bgra", "argb", "abgr", "gbrap", "ya")) or pix_fmt in ("pal8",)


def _video_gray16(src: AlphaSource, start: int, end: int) -> Iterator[np.ndarray]:
    """Decode to 16-bit grey (the luma of a matte video, or the alpha plane of an RGBA one), exactly in order."""
    cmd = [binary("ffmpeg"), "-nostdin", "-hide_banner", "-v", "error"]
    alpha_plane = _has_alpha_plane(src.pix_fmt)
    if src.codec in ("vp8", "vp9"):
        # ffmpeg's native VP8/VP9 decoders drop the alpha side stream of a WebM: libvpx keeps it
        cmd += ["-c:v", "libvpx-vp9" if src.codec == "vp9" else "libvpx"]
        alpha_plane = True
    cmd += ["-i", src.path, "-map", "0:v:0", "-an", "-sn", "-dn"]
    vf = ["alphaextract"] if alpha_plane else []
    if start:
        vf.insert(0, f"select=gte(n\\,{start})")
    if vf:
        cmd += ["-vf", ",".join(vf)]
    cmd += ["-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "gray16le", "pipe:1"]
    frame_bytes = src.width * src.height * 2
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=frame_bytes)
    tail: deque[str] = deque(maxlen=5)
    drain = threading.Thread(target=lambda: tail.extend(
        ln.decode(errors="replace").strip() for ln in proc.stderr if ln.strip()), daemon=True)  # type: ignore[union-attr]
    drain.start()
    got = 0
    try:
        assert proc.stdout is not None
        while got < end - start:
            buf = proc.stdout.read(frame_bytes)
            if len(buf) < frame_bytes:
                proc.wait()
                drain.join()
                detail = tail[-1] if tail else "the stream ended early"
                raise InvalidMediaError(f"{src.path}: decoded {start + got} of {end} frames ({detail})",
                                        "re-export or repair the file")
            got += 1
            yield np.frombuffer(buf, "<u2").reshape(src.height, src.width)
    finally:
        proc.kill()
        proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe:
                pipe.close()


def open_source(path: str | Path, role: str = "input") -> AlphaSource:
    """An image folder, a video file, or a run folder (its matte output, best precision first)."""
    p = Path(path)
    if not p.exists():
        raise InputNotFoundError(f"{role} {p} does not exist", "check the path")
    if p.is_dir() and (p / "metadata.json").is_file():
        return _run_matte(p, role)
    if p.is_dir():
        files = sorted(str(f) for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise InvalidMediaError(f"{role} folder {p} holds no images", "give a folder of matte PNGs, a video or a run folder")
        first = cv2.imread(files[0], cv2.IMREAD_UNCHANGED)
        if first is None:
            raise InvalidMediaError(f"image {files[0]} cannot be read", "replace or remove the broken file")
        return AlphaSource(str(p), "images", first.shape[1], first.shape[0], len(files),
                           f"{len(files)} images, {first.dtype}", images=files)
    info = probe(p)
    if info.kind != "video":
        raise InvalidMediaError(f"{role} {p} is not a video", "give a matte video, an image folder or a run folder")
    return AlphaSource(str(p), "video", info.width, info.height, info.frame_count,
                       f"{info.codec} {info.pix_fmt}", pix_fmt=info.pix_fmt, codec=info.codec)


def _run_matte(run_dir: Path, role: str) -> AlphaSource:
    meta = json.loads((run_dir / "metadata.json").read_text() or "{}")
    if meta.get("status") != "completed":
        raise RunStateError(f"run {run_dir} is not completed (status {meta.get('status')})",
                            "evaluate a finished run (resume it first with run --resume)")
    outputs: dict[str, str] = meta.get("outputs") or {}
    for fmt in RUN_MATTE_ORDER:
        if fmt in outputs and (run_dir / outputs[fmt]).exists():
            src = open_source(run_dir / outputs[fmt], role)
            src.detail = f"run output {fmt} ({outputs[fmt]}; {src.detail})"
            return src
    raise InvalidMediaError(f"run {run_dir} has no matte output ({', '.join(outputs) or 'none'})",
                            f"run with one of outputs {', '.join(RUN_MATTE_ORDER)}")


# ---------------------------------------------------------------- the evaluation

@dataclass
class QualityReport:
    pred: dict[str, Any]
    gt: dict[str, Any]
    frames: int
    depth: str
    mean: dict[str, float]
    per_frame: list[dict[str, float]]
    seconds: float = 0.0
    gt_start: int = 0
    conventions: str = ("MAD, MSE x1e3; Grad (sigma 1.4, min-max normalised) /1e3; Conn (step 0.1) /1e3; "
                        "dtSSD x1e2, 0 on frame 0 and included in the mean; alphas in [0,1]")
    source: str = SOURCE

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """What metadata.json keeps: the means, not the per-frame table."""
        return {"file": QUALITY_FILE, "gt": self.gt["path"], "frames": self.frames, "depth": self.depth,
                "mean": self.mean}


def evaluate(pred: str | Path | AlphaSource, gt: str | Path | AlphaSource, depth: str = "field",
             gt_start: int = 0, on_frame: Callable[[int, int], None] | None = None,
             gt_longer: bool = False) -> QualityReport:
    """Compare a predicted matte with the ground truth frame by frame (frame i with ground-truth frame
    ``gt_start + i``). Counts and sizes must agree: nothing is resized or skipped silently. ``gt_longer``: the
    ground truth may go on after the prediction's last frame (a run that processed part of its input)."""
    import time

    if gt_start < 0:
        raise ConfigError(f"gt_start {gt_start} is negative", "give the ground-truth frame index of the first prediction frame")
    if depth not in DEPTHS:
        raise InvalidMediaError(f"depth {depth!r} is not one of {DEPTHS}", "use field or native")
    p = pred if isinstance(pred, AlphaSource) else open_source(pred, "prediction")
    g = gt if isinstance(gt, AlphaSource) else open_source(gt, "ground truth")
    left = g.frame_count - gt_start
    if left != p.frame_count and not (gt_longer and left > p.frame_count):
        extra = f" from its frame {gt_start}" if gt_start else ""
        raise InvalidMediaError(
            f"frame counts differ: prediction {p.path} has {p.frame_count} frames, ground truth {g.path} has "
            f"{left}{extra}", "give both the same frames (frame i is compared with frame i)")
    if (p.width, p.height) != (g.width, g.height):
        raise InvalidMediaError(f"frame sizes differ: prediction {p.width}x{p.height}, ground truth "
                                f"{g.width}x{g.height}", "compare mattes of the same size (re-export one of them)")
    meter = ClipMeter()
    t0 = time.perf_counter()
    pred_frames, gt_frames = p.frames(depth), g.frames(depth, gt_start, p.frame_count)
    for i in range(p.frame_count):
        a, b = next(pred_frames, None), next(gt_frames, None)
        if a is None or b is None:
            short = p if a is None else g
            raise InvalidMediaError(f"{short.path} ended after {i} of the {p.frame_count} frames it announced",
                                    "re-export or repair it")
        meter.add(a, b)
        if on_frame:
            on_frame(i + 1, p.frame_count)
    return QualityReport(pred=p.describe(), gt=g.describe(), frames=len(meter.per_frame), depth=depth,
                         mean=meter.mean(), per_frame=meter.per_frame, seconds=round(time.perf_counter() - t0, 3),
                         gt_start=gt_start)


def markdown_table(report: dict[str, Any]) -> str:
    """The means of a quality.json (or of its summary in metadata.json) as a small markdown table: the CLI
    prints it after a run, and the page shows it for a run that has one."""
    mean = report.get("mean") or {}
    head = "| frames | " + " | ".join(LABELS[m] for m in METRICS) + " |"
    row = "| " + " | ".join([str(report.get("frames", "")), *(f"{mean[m]:.4f}" if m in mean else "" for m in METRICS)]) + " |"
    sep = "|" + "---|" * (len(METRICS) + 1)
    gt = report.get("gt") or ""
    gt = gt.get("path", "") if isinstance(gt, dict) else gt  # quality.json holds a dict, the summary a path
    return f"{head}\n{sep}\n{row}\n\nground truth: `{gt}`; {report.get('depth', '')} depth; lower is better."


def eval_command(pred: str, gt: str, *, as_json: bool = False, depth: str = "field", gt_start: int = 0,
                 quiet: bool = False) -> int:
    """``mattepod eval``: progress on stderr; the report (JSON, or the means as a table) on stdout."""
    import sys

    from tqdm import tqdm

    bar = tqdm(unit="frame", desc="eval", file=sys.stderr, dynamic_ncols=True, disable=quiet)

    def tick(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        report = evaluate(pred, gt, depth=depth, gt_start=gt_start, on_frame=tick)
    finally:
        bar.close()
    if as_json:
        print(json.dumps(report.to_json()))
    else:
        print(f"prediction: {report.pred['path']} ({report.pred['detail']})")
        print(markdown_table(report.to_json()))
    return 0


# ---------------------------------------------------------------- a run with a ground truth (quality.gt)

def check_gt(gt: str, formats: list[str], width: int, height: int, input_frames: int, first: int, count: int) -> int:
    """Before any matting: the ground truth exists, has the input's size and one frame per input frame or per
    processed frame, and the run writes a matte to compare. Returns the ground-truth index of the first
    processed frame."""
    if not any(f in formats for f in RUN_MATTE_ORDER):
        raise ConfigError(f"quality.gt needs a matte among the outputs (outputs.formats is {', '.join(formats)})",
                          f"add one of {', '.join(RUN_MATTE_ORDER)} (e.g. --outputs alpha16,green)")
    src = open_source(gt, "ground truth")
    if (src.width, src.height) != (width, height):
        raise InvalidMediaError(f"ground truth {gt} is {src.width}x{src.height}, the input {width}x{height}",
                                "give the ground-truth matte at the input's size")
    if src.frame_count == count:
        return 0
    if src.frame_count == input_frames:
        return first
    raise InvalidMediaError(f"ground truth {gt} has {src.frame_count} frames; the input has {input_frames} and the "
                            f"run processes {count}", "give one ground-truth frame per input frame (or per processed frame)")


def finish_run(run_dir: Path, outputs: dict[str, str], gt: str, depth: str, gt_start: int,
               on_frame: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """The run's last step with quality.gt: measure its matte, write quality.json, return the summary for
    metadata.json. The outputs are complete by now, so a failure here is recorded (and logged), not raised:
    ``mattepod eval`` can measure the finished run again."""
    import logging

    from mattepod.runfolder import write_atomic

    fmt = next(f for f in RUN_MATTE_ORDER if f in outputs)
    try:
        report = evaluate(run_dir / outputs[fmt], gt, depth=depth, gt_start=gt_start, on_frame=on_frame,
                          gt_longer=True)
    except CancelledError:
        raise  # a cancel stops the run (resumable: the finish step runs again)
    except (MattePodError, OSError) as err:
        logging.getLogger("mattepod.quality").error("quality: %s", err)
        return {"error": str(err), "gt": gt}
    report.pred["detail"] = f"run output {fmt} ({outputs[fmt]}; {report.pred['detail']})"
    write_atomic(run_dir / QUALITY_FILE, json.dumps(report.to_json(), indent=1))
    return {**report.summary(), "matte": fmt}


def report_lines(summary: dict[str, Any], run_dir: Path) -> list[str]:
    """What the CLI prints after a run with quality.gt: the means, or why there are none."""
    if summary.get("error"):
        return [f"  quality: not measured: {summary['error']} (measure later: mattepod eval --pred {run_dir} "
                f"--gt {summary.get('gt')})"]
    return [f"  quality: {run_dir / QUALITY_FILE}", markdown_table(summary)]


def precheck(cfg: Any, info: Any, first: int, count: int) -> int | None:
    """The run's hook before matting (``cfg``: Config, ``info``: MediaInfo): None without quality.gt."""
    if not cfg.quality.gt:
        return None
    return check_gt(cfg.quality.gt, list(cfg.outputs.formats), info.width, info.height, info.frame_count, first, count)


def finish_step(cfg: Any, info: Any, first: int, count: int, run_dir: Path, outputs: dict[str, str],
                progress: Any = None, cancel: Callable[[], None] | None = None) -> dict[str, Any] | None:
    """The run's hook after its outputs are final: the summary for metadata.json (None without quality.gt).
    ``cancel`` is called once per frame (it raises CancelledError to stop)."""
    if not cfg.quality.gt:
        return None
    try:
        gt_start = precheck(cfg, info, first, count)
    except MattePodError as err:  # the ground truth changed while the run was matting
        return {"error": str(err), "gt": cfg.quality.gt}
    if progress is not None:
        progress.begin("quality", 0, total=count)

    def tick(done: int, _total: int) -> None:
        if cancel is not None:
            cancel()
        if progress is not None:
            progress.update(done)

    return finish_run(run_dir, outputs, cfg.quality.gt, cfg.quality.depth, gt_start or 0, tick)


def finish_hook(run: Any, outputs: dict[str, str]) -> dict[str, Any] | None:
    """``mattepod.run`` finish hook: {"quality": summary} for metadata.json, or None without quality.gt."""
    summary = finish_step(run.cfg, run.info, run.first, run.count, run.run_dir, outputs, run.progress,
                          run.cancel.check)
    return None if summary is None else {"quality": summary}


def page_markdown(run_dir: str | Path) -> str:
    """The page's quality block for a run folder: "" when the run has no quality.json; the means as a table
    when it has one; the recorded reason when measuring failed (metadata.json ``quality.error``)."""
    run_dir = Path(run_dir)
    try:
        report = json.loads((run_dir / QUALITY_FILE).read_text())
    except (OSError, ValueError):
        try:
            summary = json.loads((run_dir / "metadata.json").read_text()).get("quality") or {}
        except (OSError, ValueError, AttributeError):
            return ""
        return f"**Quality**: not measured ({summary['error']})" if summary.get("error") else ""
    return "**Quality** against the ground truth (`quality.json`)\n\n" + markdown_table(report)
