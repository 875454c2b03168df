"""The one GPU check (run by bench/gpu_check.sh): everything about the CUDA path that the CPU cannot show.

Sections, each timed and guarded (a failure is recorded, the rest still runs):

* ``fidelity``: the shared golden cases through our core on the device: fp32 with TF32 off (max |d alpha|
  <= 1e-4), fp16 and bf16 against the fp32 golden within the README's loose bounds (mean <= 0.05,
  p99 <= 0.25, max <= 0.5);
* ``model_fps``: MatAnyoneEngine steps per second at 1080p and 4K in fp16 with channels_last, without
  and with torch.compile, and the peak device memory next to the memory model's prediction;
* ``end_to_end``: whole runs (generated clips, real ffmpeg, the real run loop) of a 1080p mono clip and
  an 8K SBS VR180 clip: fps and stage fps from metadata.json, peak device memory, decoder and encoders used;
* ``probes``: the NVENC encoder and NVDEC decoder probes;
* ``oom_step_down``: 4K under ``torch.cuda.set_per_process_memory_fraction`` so low that the first
  size cannot fit: the engine must step down and finish (on the CPU: the fault-injection switch).

``--device cpu`` runs the same sections at small sizes (what CI runs); goals are reported, never asserted
except fidelity (``ok`` false when a bound is broken). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(Path(__file__).resolve().parent)]

GOALS = {"mono_1080p_fps": 40, "vr180_8k_sbs_fps": 8, "4k_no_oom": True}
SIZES = {"cuda": {"model": {"1080p": (1080, 1920), "4k": (2160, 3840)}, "mono": (1080, 1920, 48),
                  "sbs": (3840, 7680, 12), "oom": (2160, 3840)},
         "cpu": {"model": {"small": (96, 128)}, "mono": (96, 128, 4), "sbs": (96, 192, 3), "oom": (96, 128)}}


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def section(out: dict, name: str, fn, *args) -> None:
    t = time.perf_counter()
    try:
        out[name] = fn(*args)
    except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others
        out[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}",
                     "trace": traceback.format_exc().splitlines()[-4:]}
    out.setdefault("seconds", {})[name] = round(time.perf_counter() - t, 1)
    print(f"[gpu_check] {name}: {out['seconds'][name]} s", file=sys.stderr, flush=True)


def have_reference() -> bool:
    from matanyone_common import GENERATOR, MANIFEST

    return GENERATOR.is_file() and MANIFEST.is_file()


def weights_dir(tmp: Path) -> Path:
    """Synthetic MatAnyone weights: the golden reference's (HF layout) when ../shared/reference is there,
    else a seeded random initialisation as a release-style .pth (enough for speed and memory figures)."""
    root = tmp / "weights"
    if not have_reference():
        from mattepod.matanyone.network import MatAnyoneNet

        root.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        torch.save(MatAnyoneNet().state_dict(), root / "matanyone.pth")
        return root
    from safetensors.numpy import save_file

    from matanyone_common import HF_CONFIG, generated_weights

    (root / "matanyone").mkdir(parents=True, exist_ok=True)
    (root / "matanyone" / "config.json").write_text(json.dumps(HF_CONFIG))
    save_file(generated_weights("single"), str(root / "matanyone" / "model.safetensors"))
    return root


# ---------------------------------------------------------------------------------------------- fidelity

def fidelity(dev: torch.device, wdir: Path, cases: tuple[str, ...]) -> dict:
    if not have_reference():
        return {"ok": None, "skipped": "golden reference data missing (../shared/reference/matanyone)"}
    from matanyone_common import case_dir, read_grey, read_rgb
    from mattepod.matanyone import prep
    from mattepod.matanyone.core import InferenceCore
    from mattepod.matanyone.loader import load_network

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    net = load_network(wdir / "matanyone", "cpu").to(dev).eval()

    def run_case(name: str, dtype):
        d = case_dir(name)
        params = json.loads((d / "params.json").read_text())
        mask = torch.from_numpy(read_grey(d / "mask.png")).float().to(dev) / 255.0
        m255 = prep.dilate_erode(mask, params["r_dilate"], params["r_erode"])
        hw = prep.max_size_hw(*m255.shape, params.get("max_size") or -1)
        m255 = prep.resize_mask(m255, hw)
        core = InferenceCore(net, autocast_dtype=dtype)
        out = []
        for i, f in enumerate(sorted((d / "frames").glob("*.png"))):
            img = prep.resize_frame(torch.from_numpy(read_rgb(f)).to(dev).permute(2, 0, 1).float(), hw) / 255.0
            a = core.start(img, m255, params["n_warmup"]) if i == 0 else core.step(img)
            out.append(a.float().cpu().numpy())
        return np.stack(out), np.load(d / "golden.npz")["alpha"]

    res: dict = {"ok": True}
    for name in cases:
        alpha, gold = run_case(name, None)
        err = np.abs(alpha - gold)
        res[f"fp32_{name}"] = {"max": float(err.max()), "mean": float(err.mean()), "ok": bool(err.max() <= 1e-4)}
        res["ok"] &= res[f"fp32_{name}"]["ok"]
    for label, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        if dev.type == "cpu" and dtype == torch.float16:
            continue
        alpha, gold = run_case("tiny", dtype)
        err = np.abs(alpha - gold)
        ok = bool(err.mean() <= 0.05 and np.percentile(err, 99) <= 0.25 and err.max() <= 0.5)
        res[f"{label}_tiny"] = {"max": float(err.max()), "mean": float(err.mean()),
                                "p99": float(np.percentile(err, 99)), "ok": ok}
        res["ok"] &= ok
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return res


# ---------------------------------------------------------------------------------------------- model fps

def model_fps(dev: torch.device, wdir: Path, sizes: dict, steps: int, deadline: float) -> dict:
    from matanyone_speed import synthetic

    from mattepod.adaptive import predict_bytes
    from mattepod.config import EngineConfig
    from mattepod.matting import build_engine

    out: dict = {}
    precision = "fp16" if dev.type == "cuda" else "fp32"
    for name, (h, w) in sizes.items():
        for compiled in ((False, True) if dev.type == "cuda" else (False,)):
            key = f"{name}_{precision}" + ("_compiled" if compiled else "")
            if time.perf_counter() > deadline:
                out[key] = {"skipped": "time budget"}
                continue
            cfg = EngineConfig(device=str(dev), precision=precision, warmup=1, compile=compiled)
            eng = build_engine(cfg, wdir)
            frames = [synthetic(h, w, t) for t in range(3)]
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
                base = torch.cuda.memory_allocated(dev)
            eng.start(frames[0][0], frames[0][1])
            eng.step(frames[1][0])  # compile / cudnn autotune happen here
            sync(dev)
            t = time.perf_counter()
            for i in range(steps):
                eng.step(frames[i % 3][0])
            sync(dev)
            dt = time.perf_counter() - t
            rec = {"fps": round(steps / dt, 2), "steps": steps, "internal": list(eng.internal_hw)}
            if dev.type == "cuda":
                rec["peak_mib"] = round((torch.cuda.max_memory_allocated(dev) - base) / 2**20, 1)
                rec["model_mib"] = round(predict_bytes(eng.internal_hw, torch.float16, 5) / 2**20, 1)
            out[key] = rec
            del eng
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    return out


# ---------------------------------------------------------------------------------------------- end to end

def make_clip(path: Path, h: int, w: int, frames: int, codec: str) -> Path:
    pix = ["-pix_fmt", "yuv420p"] + (["-x265-params", "log-level=error"] if codec == "libx265" else [])
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={w}x{h}:rate=30",
                    "-frames:v", str(frames), "-c:v", codec, "-preset", "ultrafast", *pix, str(path)], check=True)
    return path


def end_to_end(dev: torch.device, wdir: Path, tmp: Path, mono: tuple, sbs: tuple) -> dict:
    import cv2

    from mattepod import config, pipeline
    from mattepod.media.encoders import pick_decoder
    from mattepod.media.probe import probe

    out: dict = {}
    precision = "fp16" if dev.type == "cuda" else "fp32"
    for name, (h, w, n), mode, codec, formats in (
            ("mono", mono, "mono", "libx264", ["alpha", "green"]),
            ("vr180_sbs", sbs, "vr180", "libx265", ["alpha", "packed"])):
        clip = make_clip(tmp / f"{name}_LR_180.mp4" if mode == "vr180" else tmp / f"{name}.mp4", h, w, n, codec)
        mask = np.zeros((h, w), np.uint8)
        ew = w // 2 if mode == "vr180" else w
        mask[h // 4: 3 * h // 4, ew // 3: 2 * ew // 3] = 255
        cv2.imwrite(str(tmp / f"{name}_mask.png"), mask)
        cfg = config.load(None, {"input": str(clip), "output_dir": str(tmp / "out"), "prompt.mask": str(tmp / f"{name}_mask.png"),
                                 "weights_dir": str(wdir), "engine.device": str(dev), "engine.precision": precision,
                                 "engine.warmup": 1, "outputs.formats": formats, "outputs.previews": 0,
                                 "stereo.mode": mode, "recovery.segment_frames": 1000})
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        t = time.perf_counter()
        res = pipeline.run(cfg, pipeline.RunOptions(progress_bar=False))
        wall = time.perf_counter() - t
        info = probe(clip)
        rec = {"hw": [h, w], "frames": n, "status": res.status, "run_fps_incl_setup": round(n / wall, 2),
               "timings": res.metadata.get("timings"), "encoders": res.metadata.get("encoder"),
               "decoder": pick_decoder(info.codec, info.width, info.height, info.pix_fmt) or "cpu",
               "scale_changes": res.metadata.get("scale_changes", [])}
        if dev.type == "cuda":
            rec["peak_mib"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
        out[name] = rec
    fps = {k: (v.get("timings") or {}).get("fps") for k, v in out.items()}
    if dev.type == "cuda":
        out["goals"] = {"mono_1080p_fps": [fps.get("mono"), GOALS["mono_1080p_fps"]],
                        "vr180_8k_sbs_fps": [fps.get("vr180_sbs"), GOALS["vr180_8k_sbs_fps"]]}
    return out


# ---------------------------------------------------------------------------------------------- probes, OOM

def probes() -> dict:
    from mattepod.media.encoders import probe_decoders, probe_encoders

    return {"encoders": probe_encoders(refresh=True), "decoders": probe_decoders(refresh=True)}


def oom_step_down(dev: torch.device, wdir: Path, hw: tuple[int, int]) -> dict:
    from matanyone_speed import synthetic

    from mattepod import adaptive
    from mattepod.adaptive import AdaptiveScale, predict_bytes
    from mattepod.config import EngineConfig
    from mattepod.matting import build_engine

    precision = "fp16" if dev.type == "cuda" else "fp32"
    eng = build_engine(EngineConfig(device=str(dev), precision=precision, warmup=1), wdir, AdaptiveScale(True))
    frames = [synthetic(hw[0], hw[1], t) for t in range(4)]
    rec: dict = {"hw": list(hw)}
    if dev.type == "cuda":
        # A cap the first size cannot fit in: the memory model (driver-free memory) still picks full size,
        # the allocator then refuses, and the engine must step down for real.
        total = torch.cuda.get_device_properties(dev).total_memory
        cap = torch.cuda.memory_allocated(dev) + predict_bytes(hw, torch.float16, 5) // 3
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), dev)
        rec["cap_mib"] = round(cap / 2**20, 1)
        mode = "set_per_process_memory_fraction"
    else:
        os.environ["MATTEPOD_TEST_OOM_AT_FRAME"] = "2"
        adaptive._injection = None
        mode = "MATTEPOD_TEST_OOM_AT_FRAME=2 (CPU: injected)"
    try:
        alphas = [eng.start(frames[0][0], frames[0][1])] + [eng.step(f) for f, _m in frames[1:]]
        rec.update(completed=True, frames_out=len(alphas), events=eng.drain_events(), final=list(eng.internal_hw))
    except Exception as exc:  # noqa: BLE001 - the result is the finding
        rec.update(completed=False, error=str(exc).splitlines()[0][:300], events=eng.drain_events())
    finally:
        if dev.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(1.0, dev)
            torch.cuda.empty_cache()
        os.environ.pop("MATTEPOD_TEST_OOM_AT_FRAME", None)
    rec["mode"] = mode
    rec["ok"] = bool(rec.get("completed") and rec["events"])
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto | cuda | cpu")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds before optional parts are skipped")
    ap.add_argument("--out", help="also write the JSON line to this file")
    a = ap.parse_args()
    dev = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if a.device == "auto" else a.device))
    sizes = SIZES["cuda" if dev.type == "cuda" else "cpu"]
    deadline = time.perf_counter() + a.budget
    out: dict = {"bench": "gpu_check", "device": str(dev), "torch": torch.__version__,
                 "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
                 "cuda": torch.version.cuda, "goals": GOALS}
    if dev.type == "cpu":
        torch.set_num_threads(min(2, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        wdir = weights_dir(t)
        os.environ.setdefault("OUTPUT_DIR", str(t))
        section(out, "probes", probes)
        # the CPU mode keeps to the smallest case (the fp32 goldens all run in tests/test_matanyone_golden.py)
        section(out, "fidelity", fidelity, dev, wdir, ("tiny", "odd_long", "resize") if dev.type == "cuda" else ("tiny",))
        section(out, "model_fps", model_fps, dev, wdir, sizes["model"], 20 if dev.type == "cuda" else 2, deadline)
        section(out, "end_to_end", end_to_end, dev, wdir, t, sizes["mono"], sizes["sbs"])
        section(out, "oom_step_down", oom_step_down, dev, wdir, sizes["oom"])
    if dev.type == "cuda":
        out["peak_device_mib"] = round(torch.cuda.max_memory_reserved(dev) / 2**20, 1)
    fid = (out.get("fidelity") or {}).get("ok")
    out["ok"] = fid is not False and "error" not in (out.get("fidelity") or {}) and \
        bool((out.get("oom_step_down") or {}).get("ok"))
    line = json.dumps(out)
    if a.out:
        Path(a.out).write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
