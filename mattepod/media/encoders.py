"""Which video encoders really work here: NVENC only where this ffmpeg *and* this GPU can encode a frame.

``ffmpeg -encoders`` lists h264_nvenc/hevc_nvenc whenever ffmpeg was built with them, also on machines without
an NVIDIA GPU, and on GPUs without an encoder (H100, A100) or with no 10-bit HEVC; the only trustworthy test is
to encode a frame. The probe encodes one small frame per encoder exactly as the writers will use it (h264 8-bit,
hevc 10-bit ``p010le``), and caches the answer as JSON keyed by the ffmpeg build and the GPU, so a container
start pays for it once per machine. The pipeline calls ``pick_encoder``; setup logs ``probe_encoders``.

Decoding the same way: ``probe_decoders`` decodes one frame with each NVDEC (``*_cuvid``) decoder (the
probe clip is made with a CPU encoder), cached beside the encoder probe; ``pick_decoder`` gives the
reader a cuvid decoder only for streams NVDEC takes (codec, size, chroma layout), else the CPU decodes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal

from mattepod.errors import EncodeError

CACHE_NAME = ".mattepod-encoders.json"
CPU = {"h264": "libx264", "hevc": "libx265"}
NVENC = {"h264": "h264_nvenc", "hevc": "hevc_nvenc"}
# pixel format each encoder is probed with: the one the writers use (alpha is 10-bit HEVC)
_PROBE_PIX = {"h264_nvenc": "yuv420p", "hevc_nvenc": "p010le", "libx264": "yuv420p", "libx265": "yuv420p10le"}

_memo: dict[tuple[str, str], dict[str, bool]] = {}


def _ffmpeg_path(ffmpeg: str) -> str:
    if ffmpeg == "ffmpeg":
        from mattepod.media.tools import binary

        return binary("ffmpeg")
    return ffmpeg


def _gpu_identity() -> str:
    """Driver and GPU names (cheap, from /proc or nvidia-smi): the cache is only valid on the same hardware."""
    parts = []
    try:
        parts.append(Path("/proc/driver/nvidia/version").read_text().splitlines()[0].strip())
        for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
            model = [ln for ln in info.read_text().splitlines() if ln.startswith("Model:")]
            parts.extend(m.split(":", 1)[1].strip() for m in model)
    except (OSError, IndexError):
        pass
    if not parts:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=15)
            if out.returncode == 0:
                parts.append(out.stdout.strip())
        except (OSError, subprocess.TimeoutExpired):
            pass
    visible = os.environ.get("NVIDIA_VISIBLE_DEVICES", "") + "|" + os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return (" / ".join(parts) or "no-nvidia-gpu") + f" [{visible}]"


def _ffmpeg_identity(ffmpeg: str) -> str:
    try:
        st = os.stat(ffmpeg)
        return f"{ffmpeg}:{st.st_size}:{int(st.st_mtime)}"
    except OSError:
        return ffmpeg


def _cache_dir() -> Path:
    out = os.environ.get("OUTPUT_DIR")
    if out and os.path.isdir(out) and os.access(out, os.W_OK):
        return Path(out)
    return Path(tempfile.gettempdir())


def encode_one_frame(ffmpeg: str, encoder: str, timeout: float = 30.0) -> tuple[bool, str]:
    """(works, last stderr line): encode one 256x256 frame with ``encoder`` into the null muxer."""
    cmd = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
           "testsrc2=size=256x256:rate=1", "-frames:v", "1", "-pix_fmt", _PROBE_PIX.get(encoder, "yuv420p"),
           "-c:v", encoder, "-f", "null", "-"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.0f}s"
    except OSError as exc:
        return False, str(exc)
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    return res.returncode == 0, " | ".join(lines[:2])


def probe_encoders(ffmpeg: str = "ffmpeg", cache_dir: str | Path | None = None,
                   refresh: bool = False) -> dict[str, bool]:
    """{encoder name: encodes a frame here} for h264_nvenc, hevc_nvenc, libx264, libx265 (cached as JSON)."""
    path = _ffmpeg_path(ffmpeg)
    key = f"{_ffmpeg_identity(path)} | {_gpu_identity()}"
    memo_key = (path, key)
    if not refresh and memo_key in _memo:
        return dict(_memo[memo_key])
    cache = Path(cache_dir) if cache_dir is not None else _cache_dir()
    cache_file = cache / CACHE_NAME
    if not refresh:
        try:
            data = json.loads(cache_file.read_text())
            if data.get("key") == key and isinstance(data.get("encoders"), dict):
                _memo[memo_key] = {k: bool(v) for k, v in data["encoders"].items()}
                return dict(_memo[memo_key])
        except (OSError, ValueError):
            pass
    result: dict[str, bool] = {}
    errors: dict[str, str] = {}
    for name in (*NVENC.values(), *CPU.values()):
        ok, err = encode_one_frame(path, name)
        result[name] = ok
        if not ok:
            errors[name] = err
    _memo[memo_key] = result
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f"{CACHE_NAME}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"key": key, "encoders": result, "errors": errors}, indent=2) + "\n")
        os.replace(tmp, cache_file)
    except OSError:
        pass  # a read-only output folder only costs a re-probe next time
    return dict(result)


# ---------------------------------------------------------------------------------------------- NVDEC

DECODER_CACHE_NAME = ".mattepod-decoders.json"
NVDEC = {"h264": "h264_cuvid", "hevc": "hevc_cuvid", "av1": "av1_cuvid", "vp9": "vp9_cuvid"}
# what each decoder's probe clip is encoded with (a CPU encoder; av1 only where this ffmpeg has one)
_PROBE_SOURCE = {"h264_cuvid": ("libx264", "yuv420p", ".mp4"), "hevc_cuvid": ("libx265", "yuv420p10le", ".mp4"),
                 "vp9_cuvid": ("libvpx-vp9", "yuv420p", ".webm"), "av1_cuvid": ("libaom-av1", "yuv420p", ".mkv")}
# NVDEC limits (Turing and later): the largest coded size per codec, and the chroma layouts it takes
NVDEC_MAX = {"h264": 4096, "hevc": 8192, "av1": 8192, "vp9": 8192}
NVDEC_PIX = {"h264": {"yuv420p", "yuvj420p", "nv12"},
             "hevc": {"yuv420p", "yuvj420p", "nv12", "yuv420p10le", "p010le", "yuv420p12le"},
             "av1": {"yuv420p", "yuv420p10le"}, "vp9": {"yuv420p", "yuv420p10le"}}

_dmemo: dict[tuple[str, str], dict[str, bool]] = {}


def decode_one_frame(ffmpeg: str, decoder: str, timeout: float = 30.0) -> tuple[bool, str]:
    """(works, last stderr line): encode a 256x256 frame on the CPU, decode it with ``decoder``."""
    enc, pix, ext = _PROBE_SOURCE[decoder]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"probe{ext}"
        make = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                "testsrc2=size=256x256:rate=1", "-frames:v", "1", "-pix_fmt", pix, "-c:v", enc, str(src)]
        try:
            res = subprocess.run(make, capture_output=True, text=True, timeout=timeout)
            if res.returncode != 0:
                return False, f"no {enc} to make the probe clip"
            res = subprocess.run([ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-c:v", decoder, "-i",
                                  str(src), "-frames:v", "1", "-f", "null", "-"],
                                 capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False, f"timed out after {timeout:.0f}s"
        except OSError as exc:
            return False, str(exc)
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    return res.returncode == 0, " | ".join(lines[:2])


def probe_decoders(ffmpeg: str = "ffmpeg", cache_dir: str | Path | None = None,
                   refresh: bool = False) -> dict[str, bool]:
    """{cuvid decoder: decodes a frame here} (cached as JSON like the encoder probe, same key)."""
    path = _ffmpeg_path(ffmpeg)
    key = f"{_ffmpeg_identity(path)} | {_gpu_identity()}"
    if not refresh and (path, key) in _dmemo:
        return dict(_dmemo[(path, key)])
    cache_file = (Path(cache_dir) if cache_dir is not None else _cache_dir()) / DECODER_CACHE_NAME
    if not refresh:
        try:
            data = json.loads(cache_file.read_text())
            if data.get("key") == key and isinstance(data.get("decoders"), dict):
                _dmemo[(path, key)] = {k: bool(v) for k, v in data["decoders"].items()}
                return dict(_dmemo[(path, key)])
        except (OSError, ValueError):
            pass
    result: dict[str, bool] = {}
    errors: dict[str, str] = {}
    for name in NVDEC.values():
        ok, err = decode_one_frame(path, name)
        result[name] = ok
        if not ok:
            errors[name] = err
    _dmemo[(path, key)] = result
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.parent / f"{DECODER_CACHE_NAME}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"key": key, "decoders": result, "errors": errors}, indent=2) + "\n")
        os.replace(tmp, cache_file)
    except OSError:
        pass
    return dict(result)


def pick_decoder(codec: str, width: int, height: int, pix_fmt: str, prefer: str = "auto",
                 ffmpeg: str = "ffmpeg") -> str | None:
    """The NVDEC (cuvid) decoder for this stream when it works here and takes the stream, else None (CPU).

    ``MATTEPOD_DECODER=cpu`` forces CPU decoding (a broken driver, or to compare)."""
    if prefer == "cpu" or os.environ.get("MATTEPOD_DECODER", "").lower() == "cpu":
        return None
    name = NVDEC.get(codec)
    if name is None or max(width, height) > NVDEC_MAX[codec] or (pix_fmt and pix_fmt not in NVDEC_PIX[codec]):
        return None
    return name if probe_decoders(ffmpeg).get(name) else None


def pick_encoder(codec: Literal["h264", "hevc"], prefer: Literal["auto", "nvenc", "cpu"] = "auto",
                 ffmpeg: str = "ffmpeg") -> str:
    """The ffmpeg encoder for ``codec``: NVENC when it works and is wanted, else libx264/libx265."""
    if codec not in CPU:
        raise EncodeError(f"unknown codec {codec!r}", "use h264 or hevc")
    if prefer == "cpu":
        return CPU[codec]
    if prefer not in ("auto", "nvenc"):
        raise EncodeError(f"outputs.encoder {prefer!r} is not auto, nvenc or cpu", "set outputs.encoder: auto")
    works = probe_encoders(ffmpeg)
    if works.get(NVENC[codec]):
        return NVENC[codec]
    if prefer == "nvenc":
        raise EncodeError(f"{NVENC[codec]} cannot encode on this machine (no NVIDIA encoder, driver without "
                          "NVENC, or ffmpeg built without it)",
                          "set outputs.encoder: auto (falls back to CPU) or cpu; H100/A100 have no NVENC")
    return CPU[codec]


def main(argv: list[str] | None = None) -> int:
    """``python -m mattepod.media.encoders [--refresh] [--json]``: log what the probe found (container setup)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        works = probe_encoders(refresh="--refresh" in args)
    except Exception as exc:  # noqa: BLE001 - setup logs and carries on with CPU encoders
        print(f"[encoders] probe failed ({exc}); CPU encoders will be used", file=sys.stderr)
        return 1
    decoders = probe_decoders(refresh="--refresh" in args)
    if "--json" in args:
        print(json.dumps({**works, **decoders}))
    chosen = {codec: (NVENC[codec] if works.get(NVENC[codec]) else CPU[codec]) for codec in CPU}
    print(f"[encoders] works here: {', '.join(k for k, v in works.items() if v) or 'none'}; "
          f"auto picks h264={chosen['h264']} hevc={chosen['hevc']}; NVDEC decodes: "
          f"{', '.join(k for k, v in decoders.items() if v) or 'none (CPU decode)'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
