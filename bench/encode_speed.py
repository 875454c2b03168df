"""Encoder throughput per output kind, encoder and preset at 1080p, 4K and 8K SBS; the alpha's round trip.

For each size a few distinct synthetic frames (moving gradients and noise, a soft-edged moving matte) are
rendered once with the outputs' own renderers (mattepod/devframes.py on the CPU) and fed, cycling, to
``FFmpegWriter`` with exactly the arguments ``mattepod/outputs.py`` builds for that kind (only the preset
varies). Reported per case: encode fps (frames / seconds from the first write to the closed file),
render fps of the kind, and for the alpha kinds the decoded alpha's max error against the float alpha
(code values of 1/65535 and as a fraction). NVENC cases run only where the probe says NVENC works.

    python bench/encode_speed.py [--sizes 1080p,4k,8k_sbs] [--frames 1080p=24,4k=8,8k_sbs=4]

Prints one JSON line. Timings on a shared machine are lower bounds of what the CPU can do.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mattepod import config, devframes  # noqa: E402
from mattepod.media.encoders import probe_encoders  # noqa: E402
from mattepod.media.writer import FFmpegWriter  # noqa: E402
from mattepod.outputs import FORMATS, RenderContext  # noqa: E402

SIZES = {"1080p": (1080, 1920), "4k": (2160, 3840), "8k_sbs": (3840, 7680)}
DEFAULT_FRAMES = {"1080p": 24, "4k": 8, "8k_sbs": 4}
DISTINCT = 4


def synthetic(h: int, w: int, t: int) -> tuple[np.ndarray, np.ndarray]:
    """A frame with structure and noise (encoders do real work) and a soft matte that moves."""
    rng = np.random.default_rng(t)
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :]
    ones = np.ones((h, w), np.float32)
    base = np.stack([(x + 0.1 * t) % 1 * ones, y * ones, (x * y + 0.05 * t) % 1], axis=-1) * 220
    frame = np.clip(base + rng.normal(0, 6, (h, w, 3)).astype(np.float32), 0, 255).astype(np.uint8)
    cx, cy = 0.4 + 0.05 * t, 0.5
    d = np.sqrt(((x - cx) * w / h) ** 2 + (y - cy) ** 2)
    alpha = np.clip((0.3 - d) / 0.02, 0, 1).astype(np.float32)
    return frame, alpha


def cases(encoders: dict[str, bool], only_nvenc: bool) -> list[tuple[str, str, str | None]]:
    """(kind, encoder, preset): the kinds' encoders over their useful presets."""
    out: list[tuple[str, str, str | None]] = []
    if not only_nvenc:
        for preset in ("ultrafast", "veryfast", "fast"):
            out.append(("green", "libx264", preset))
        for preset in ("ultrafast", "veryfast", "fast"):
            out.append(("alpha", "libx265", preset))
        out += [("alpha", "ffv1", None), ("prores", "prores_ks", None), ("webm", "libvpx-vp9", None)]
    if encoders.get("h264_nvenc"):
        out += [("green", "h264_nvenc", p) for p in ("p1", "p4", "p5")]
    if encoders.get("hevc_nvenc"):
        out += [("alpha", "hevc_nvenc", p) for p in ("p1", "p4", "p5")]
    return out


def args_for(kind: str, encoder: str, preset: str | None, ctx_cfg) -> list[str]:
    codec = "hevc" if kind == "alpha" else "h264"
    ctx = RenderContext(ctx_cfg, {"h264": encoder if codec == "h264" else "libx264",
                                  "hevc": encoder if codec == "hevc" else "libx265"})
    if kind == "green":
        return ctx.x264(preset)
    if kind == "alpha" and encoder != "ffv1":
        return ctx.x265_10(preset)
    if kind == "alpha":
        ctx.cfg = ctx_cfg.model_copy(update={"alpha_codec": "ffv1"})
    return FORMATS[kind].args(ctx)


def decode_alpha(path: Path, h: int, w: int, n: int) -> np.ndarray:
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-frames:v", str(n), "-f", "rawvideo",
                          "-pix_fmt", "gray16le", "pipe:1"], capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint16).reshape(-1, h, w)


def run_case(tmp: Path, size: str, kind: str, encoder: str, preset: str | None, frames: int,
             rendered: list[np.ndarray], alphas: list[np.ndarray], cfg) -> dict:
    h, w = SIZES[size]
    fmt = FORMATS[kind]
    out = tmp / f"{size}_{kind}_{encoder}_{preset}{'.mkv' if encoder == 'ffv1' else Path(fmt.suffix).suffix}"
    t0 = time.perf_counter()
    writer = FFmpegWriter(out, w, h, Fraction(30), fmt.pix_fmt, args_for(kind, encoder, preset, cfg))
    for i in range(frames):
        writer.write(rendered[i % len(rendered)])
    writer.close()
    dt = time.perf_counter() - t0
    rec = {"fps": round(frames / dt, 3), "frames": frames, "mb": round(out.stat().st_size / 2**20, 2)}
    if kind == "alpha":
        dec = decode_alpha(out, h, w, len(alphas))
        err = max(float(np.abs(dec[i].astype(np.float64) / 65535.0 - alphas[i]).max()) for i in range(len(dec)))
        rec["alpha_max_error"] = round(err, 6)
        rec["alpha_max_error_8bit_codes"] = round(err * 255, 3)
        rec["alpha_mean_error"] = round(float(np.mean([np.abs(dec[i] / 65535.0 - alphas[i]).mean()
                                                       for i in range(len(dec))])), 7)
    out.unlink()
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1080p,4k,8k_sbs")
    ap.add_argument("--frames", default=",".join(f"{k}={v}" for k, v in DEFAULT_FRAMES.items()))
    ap.add_argument("--only-nvenc", action="store_true")
    a = ap.parse_args()
    counts = {**DEFAULT_FRAMES, **{k: int(v) for k, v in (p.split("=") for p in a.frames.split(",") if p)}}
    encoders = probe_encoders()
    cfg = config.load(None).outputs
    result: dict = {"bench": "encode_speed", "threads": torch.get_num_threads(), "encoders_probe": encoders,
                    "note": "CPU shared with other work: fps are lower bounds", "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for size in [s for s in a.sizes.split(",") if s]:
            h, w = SIZES[size]
            pairs = [synthetic(h, w, t) for t in range(DISTINCT)]
            cache = devframes.cache_for("cpu")
            per: dict = {}
            render_fps: dict = {}
            for kind in ("green", "alpha", "prores", "webm"):
                ctx = RenderContext(cfg, {"h264": "libx264", "hevc": "libx265"}, cache=cache)
                t0 = time.perf_counter()
                rendered = [devframes.download(FORMATS[kind].render_t(devframes.FrameAlpha(f, al, cache), ctx)).copy()
                            for f, al in pairs]
                render_fps[kind] = round(len(pairs) / (time.perf_counter() - t0), 2)
                for k2, enc, preset in cases(encoders, a.only_nvenc):
                    if k2 != kind:
                        continue
                    name = f"{kind}/{enc}" + (f"/{preset}" if preset else "")
                    try:
                        per[name] = run_case(Path(tmp), size, kind, enc, preset, counts[size], rendered,
                                             [al for _f, al in pairs], cfg)
                    except Exception as exc:  # noqa: BLE001 - one failing encoder (e.g. a size limit) is a result
                        per[name] = {"error": str(exc).splitlines()[0][:200]}
                    print(f"[encode_speed] {size} {name}: {per[name]}", file=sys.stderr, flush=True)
            result["sizes"][size] = {"hw": [h, w], "render_fps_cpu": render_fps, "encode": per}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
