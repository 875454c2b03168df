"""What each setting costs in matting quality, and what it saves in time: one JSON line.

For every case, each setting's alphas are measured with MAD, MSE, Grad, Conn and dtSSD (``mattepod.quality``,
native float precision) against a ground truth, next to the CPU time per frame and its ratio to the reference
setting measured in the same run:

* golden cases ``tiny`` (80x96, 4 frames) and ``odd_long`` (100x150, 40 frames) of
  ``../shared/reference/matanyone``: ground truth = the official code's fp32 alphas (synthetic weights, so the
  numbers measure numerical drift from the official computation, not matting skill). Settings: fp32 (our
  reimplementation's own fidelity), bf16, warm-up 1 / 5 (10 is the reference), max_size 80 (odd_long; smaller
  sizes leave fewer than top_k=30 cells of 16 px, as do all scale < 1 and max_size on tiny), and the official
  bf16 golden for comparison.
* a generated clip (a textured ellipse moving over a panning pattern, 192x256, 12 frames): ground truth = our
  own fp32 output at scale 1.0, no max_size, warm-up 10 (the reference setting). Settings: bf16, scale 0.75 /
  0.5, max_size 160 / 120, warm-up 1 / 5.
* every case: the reference alphas written by each alpha codec and decoded back (``hevc10`` = 10-bit HEVC
  crf 18, ``ffv1`` = FFV1 16-bit, ``alpha16`` = 16-bit PNGs), measured against the ground truth and against the
  alphas before encoding (``codec_only``); time = encode + decode per frame.

fp16 runs only on a GPU: with CUDA present, fp32 (TF32 off) / bf16 / fp16 rows on the GPU are added, timed in
wall-clock ms; without one, fp16 is recorded as skipped. CPU time is process CPU time (the box is shared; at one
thread CPU time is close to idle wall time).

    python bench/quality_tradeoffs.py [--threads 1] [--frames 12] [--size 192x256] [--weights CKPT]
                                      [--out bench/results/quality_tradeoffs.json]
    python bench/quality_tradeoffs.py --table bench/results/quality_tradeoffs.json   # the TEST.md table
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mattepod import quality  # noqa: E402
from mattepod.config import EngineConfig, OutputsConfig  # noqa: E402
from mattepod.errors import MattePodError  # noqa: E402
from mattepod.matanyone.loader import load_into  # noqa: E402
from mattepod.matanyone.network import MatAnyoneNet  # noqa: E402
from mattepod.matting import MatAnyoneEngine  # noqa: E402
from mattepod.media.writer import FFmpegWriter  # noqa: E402
from mattepod.outputs import FORMATS, RenderContext, alpha16  # noqa: E402
from mattepod.pipeline import ScaledEngine  # noqa: E402

REF = (ROOT / ".." / "shared" / "reference" / "matanyone").resolve()


def synthetic_net() -> MatAnyoneNet:
    sys.path.insert(0, str(REF))
    import make_reference_weights as mrw  # the golden data's numpy-only weight generator

    net = MatAnyoneNet()
    load_into(net, {k: torch.from_numpy(v) for k, v in mrw.make_weights(str(REF / "state_dict_manifest.tsv")).items()})
    return net.eval()


def golden_case(name: str) -> dict:
    d = REF / "cases" / name
    frames = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted((d / "frames").glob("*.png"))]
    mask = cv2.imread(str(d / "mask.png"), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255
    gt = np.load(d / "golden.npz")["alpha"]
    return {"frames": frames, "mask": mask, "gt": [a for a in gt]}


def generated_clip(h: int, w: int, n: int) -> dict:
    """A soft-edged textured ellipse moving over a panning sinusoidal pattern, and its first-frame mask."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frames, mask = [], None
    for t in range(n):
        bg = 0.5 + 0.25 * np.sin((xx + 3 * t) / 9.0) * np.cos(yy / 13.0)
        r = np.hypot((yy - h * 0.5 - t) / (h * 0.3), (xx - w * 0.4 - 2 * t) / (w * 0.18))
        a = np.clip((1.0 - r) * 12.0, 0.0, 1.0)[..., None]
        fg = np.stack([0.85 + 0.1 * np.sin(xx / 3), 0.35 + 0.1 * np.cos(yy / 4), 0.25 + 0 * xx], -1)
        img = fg * a + np.stack([bg, 0.8 * bg, 1 - bg], -1) * (1 - a)
        frames.append(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8))
        if mask is None:
            mask = (a[..., 0] > 0.5).astype(np.float32)
    return {"frames": frames, "mask": mask, "gt": None}


def run_engine(net, case: dict, *, precision="fp32", warmup=10, max_size=-1, scale=1.0,
               device="cpu") -> tuple[list, float]:
    """Alphas of the whole clip and the seconds per frame: process CPU time on the CPU, wall time on a GPU
    (every step returns a numpy alpha, so the GPU work is finished when the clock stops)."""
    eng = MatAnyoneEngine(net, EngineConfig(device=device, precision=precision, warmup=warmup, max_size=max_size,
                                            tf32=False))
    engine = ScaledEngine(eng, scale)
    clock = time.perf_counter if device != "cpu" else time.process_time
    c0 = clock()
    out = [engine.start(case["frames"][0], case["mask"])]
    out += [engine.step(f) for f in case["frames"][1:]]
    return out, (clock() - c0) / len(out)


def measure(pred: list, gt: list) -> dict:
    meter = quality.ClipMeter()
    for p, g in zip(pred, gt, strict=True):
        meter.add(p.astype(np.float32), g.astype(np.float32))
    return {k: float(f"{v:.4g}") for k, v in meter.mean().items()}  # 4 significant digits


def _cpu() -> float:
    """This process's CPU time plus its finished children's (ffmpeg encodes and decodes)."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def codec_roundtrip(alphas: list, codec: str, work: Path) -> tuple[list, float]:
    """Write the alphas as the run would (outputs.py formats), decode them with mattepod.quality;
    returns the decoded alphas and the CPU seconds per frame."""
    h, w = alphas[0].shape
    c0 = _cpu()
    if codec == "alpha16":
        folder = work / "alpha16"
        folder.mkdir()
        for i, a in enumerate(alphas):
            cv2.imwrite(str(folder / f"{i:06d}.png"), alpha16(a))
        src = quality.open_source(folder)
    else:
        ctx = RenderContext(OutputsConfig(alpha_codec=codec), {"h264": "libx264", "hevc": "libx265"})
        fmt = FORMATS["alpha"]
        path = work / ("alpha.mkv" if codec == "ffv1" else "alpha.mp4")
        writer = FFmpegWriter(path, w, h, Fraction(24), fmt.pix_fmt, fmt.args(ctx))
        for a in alphas:
            writer.write(fmt.render(None, a, ctx))
        writer.close()
        src = quality.open_source(path)
    decoded = list(src.frames("native"))  # a bench: the handful of small frames is held for two comparisons
    return decoded, (_cpu() - c0) / len(decoded)


def bench_case(net, name: str, case: dict, settings: dict, work: Path) -> dict:
    ref_alphas, ref_cpu = run_engine(net, case)
    gt = case["gt"] if case["gt"] is not None else ref_alphas
    h, w = case["frames"][0].shape[:2]
    out = {"hw": [h, w], "frames": len(case["frames"]),
           "ground_truth": "official fp32 golden" if case["gt"] is not None else "our fp32, scale 1, warm-up 10",
           "settings": {}}
    out["settings"]["reference (fp32, scale 1, warm-up 10)"] = {
        "mean": measure(ref_alphas, gt), "cpu_ms_per_frame": round(ref_cpu * 1000, 1), "time_ratio": 1.0}
    if torch.cuda.is_available():  # fp16 exists only there; the GPU rows are timed in wall-clock ms
        settings = {**settings, **{f"cuda {p}": {"precision": p, "device": "cuda"} for p in ("fp32", "bf16", "fp16")}}
    for label, kw in settings.items():
        try:
            alphas, cpu = run_engine(net, case, **kw)
        except MattePodError as err:
            out["settings"][label] = {"skipped": str(err)}
            continue
        if kw.get("device") == "cuda":
            out["settings"][label] = {"mean": measure(alphas, gt), "gpu_wall_ms_per_frame": round(cpu * 1000, 2)}
        else:
            out["settings"][label] = {"mean": measure(alphas, gt), "cpu_ms_per_frame": round(cpu * 1000, 1),
                                      "time_ratio": round(cpu / ref_cpu, 3)}
    for codec in ("hevc10", "ffv1", "alpha16"):
        sub = work / f"{name}-{codec}"
        sub.mkdir()
        decoded, cpu = codec_roundtrip(ref_alphas, codec, sub)
        out["settings"][f"codec {codec}"] = {
            "mean": measure(decoded, gt), "codec_only": measure(decoded, ref_alphas),
            "cpu_ms_per_frame": round(cpu * 1000, 1)}
    return out


def markdown(result: dict) -> str:
    """The TEST.md table of a result line: one row per case and setting."""
    head = ("| case | setting | MAD | MSE | Grad | Conn | dtSSD | CPU ms/frame | time vs reference |\n"
            "|---|---|---|---|---|---|---|---|---|")
    rows = [head]
    for case, res in result["cases"].items():
        for label, row in res["settings"].items():
            if "skipped" in row:
                rows.append(f"| {case} | {label} | skipped: {row['skipped'].split(' -> ')[0]} |||||||")
                continue
            m = row["mean"]
            ratio = row.get("time_ratio")
            ms = row.get("cpu_ms_per_frame", "")
            if "gpu_wall_ms_per_frame" in row:
                ms = f"{row['gpu_wall_ms_per_frame']} (GPU wall)"
            rows.append(f"| {case} | {label} | " + " | ".join(f"{m[k]:.4g}" for k in quality.METRICS)
                        + f" | {ms} | {'' if ratio is None else f'{ratio:.2f}x'} |")
    truths = "; ".join(f"{case}: {res['ground_truth']}" for case, res in result["cases"].items())
    return "\n".join(rows) + f"\n\nGround truth: {truths}."


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", metavar="RESULT_JSON", help="print the markdown table of a saved result line and exit")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--frames", type=int, default=12, help="frames of the generated clip")
    ap.add_argument("--size", default="192x256", help="HxW of the generated clip")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--weights", help="a real MatAnyone checkpoint (folder or .pth) instead of the synthetic "
                                      "weights; the golden cases are then skipped (their ground truth needs those)")
    a = ap.parse_args()
    if a.table:
        print(markdown(json.loads(Path(a.table).read_text().strip().splitlines()[-1])))
        return
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    if a.weights:
        from mattepod.matanyone.loader import load_network

        net = load_network(a.weights, "cpu").eval()
    else:
        net = synthetic_net()
    result = {"bench": "quality_tradeoffs", "torch": torch.__version__, "threads": a.threads,
              "metrics": "native float alphas; MAD, MSE x1e3; Grad, Conn /1e3; dtSSD x1e2",
              "fp16": ("skipped: no GPU (fp16 runs on a GPU)" if not torch.cuda.is_available()
                       else f"cuda rows: {torch.cuda.get_device_name()}"),
              "cases": {}}
    common = {"bf16": {"precision": "bf16"}, "warm-up 1": {"warmup": 1}, "warm-up 5": {"warmup": 5}}
    with tempfile.TemporaryDirectory(prefix="quality-bench-") as tmp:
        work = Path(tmp)
        if (REF / "cases").is_dir() and not a.weights:
            tiny = golden_case("tiny")
            res = bench_case(net, "tiny", tiny, common, work)
            official_bf16 = np.load(REF / "cases" / "bf16_cpu" / "golden.npz")["alpha"]
            res["settings"]["official bf16 (golden bf16_cpu)"] = {"mean": measure(list(official_bf16), tiny["gt"])}
            result["cases"]["tiny"] = res
            result["cases"]["odd_long"] = bench_case(net, "odd_long", golden_case("odd_long"),
                                                     {**common, "max_size 80": {"max_size": 80}}, work)
        h, w = (int(v) for v in a.size.split("x"))
        gen = {**common, "scale 0.75": {"scale": 0.75}, "scale 0.5": {"scale": 0.5},
               "max_size 160": {"max_size": 160}, "max_size 120": {"max_size": 120}}
        result["cases"][f"generated {h}x{w}"] = bench_case(net, "generated", generated_clip(h, w, a.frames), gen, work)
        shutil.rmtree(work, ignore_errors=True)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    line = json.dumps(result)
    if a.out:
        Path(a.out).write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
