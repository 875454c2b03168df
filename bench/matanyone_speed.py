"""MatAnyone speed: ms per frame on CPU (480p, 1080p; fp32 and bf16), fps on a GPU when there is one,
and the golden cases timed exactly like the official code's timings (README section 7).

Prints one JSON line. Weights: ``--weights PATH`` (real checkpoint folder or file), else the synthetic
reference weights are generated (speed does not depend on the weight values).

    python bench/matanyone_speed.py [--sizes 480p,1080p] [--steps 5] [--threads 2] [--skip-golden]

``--pair`` instead times the VR180 eye pair (one JSON line): ms per eye pair with two separate cores
stepped one after the other vs the pair path (``mattepod.matanyone.pair``: one batch of two), on the
CPU at ``--pair-sizes`` (per eye, HxW; tiny by default) and on a GPU when there is one:

    python bench/matanyone_speed.py --pair [--pair-sizes 80x96,240x320] [--steps 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mattepod.matanyone import prep  # noqa: E402
from mattepod.matanyone.core import CoreConfig, InferenceCore  # noqa: E402
from mattepod.matanyone.loader import load_into, load_network  # noqa: E402
from mattepod.matanyone.network import MatAnyoneNet  # noqa: E402

REF = (ROOT / ".." / "shared" / "reference" / "matanyone").resolve()
SIZES = {"480p": (480, 854), "720p": (720, 1280), "1080p": (1080, 1920), "4k": (2160, 3840)}
# README section 7 of the golden data: the official code on a 2-vCPU AMD EPYC (AVX512), seconds
OFFICIAL = {
    ("tiny", 2): {"step0": 0.147, "warmup_step": 0.081, "normal_step": 0.077, "clip": 1.19, "per_real_frame": 0.297},
    ("odd_long", 2): {"step0": 0.164, "warmup_step": 0.088, "normal_step": 0.080, "clip": 4.30, "per_real_frame": 0.107},
    ("resize", 2): {"step0": 0.185, "warmup_step": 0.099, "normal_step": 0.098, "clip": 2.28, "per_real_frame": 0.190},
    ("bf16_cpu", 2): {"step0": 0.126, "warmup_step": 0.063, "normal_step": 0.057, "clip": 0.97, "per_real_frame": 0.244},
    ("tiny", 1): {"step0": 0.154, "warmup_step": 0.083, "normal_step": 0.077, "clip": 1.22, "per_real_frame": 0.306},
    ("odd_long", 1): {"step0": 0.207, "warmup_step": 0.140, "normal_step": 0.123, "clip": 6.63, "per_real_frame": 0.166},
    ("resize", 1): {"step0": 0.275, "warmup_step": 0.141, "normal_step": 0.146, "clip": 3.38, "per_real_frame": 0.281},
    ("bf16_cpu", 1): {"step0": 0.171, "warmup_step": 0.073, "normal_step": 0.068, "clip": 1.09, "per_real_frame": 0.273},
}


def get_net(weights: str | None) -> MatAnyoneNet:
    if weights:
        return load_network(weights, "cpu")
    sys.path.insert(0, str(REF))
    import make_reference_weights as mrw  # the numpy-only generator of the golden data

    net = MatAnyoneNet()
    load_into(net, {k: torch.from_numpy(v) for k, v in mrw.make_weights(str(REF / "state_dict_manifest.tsv")).items()})
    return net


def synthetic(h: int, w: int, t: int) -> tuple[np.ndarray, np.ndarray]:
    """A textured frame with an ellipse that moves by t pixels, and its mask."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = h / 2 + t, w / 2 + 2 * t
    inside = ((yy - cy) / (h / 4)) ** 2 + ((xx - cx) / (w / 6)) ** 2 <= 1
    bg = 0.5 + 0.25 * np.sin(xx / 7.0 + t) * np.cos(yy / 11.0)
    img = np.stack([bg, bg * 0.8, 1 - bg], -1)
    img[inside] = [0.9, 0.3, 0.2]
    return (img * 255).astype(np.uint8), inside.astype(np.float32)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_size(net, dev, hw, dtype, steps) -> dict:
    core = InferenceCore(net, CoreConfig(), autocast_dtype=dtype)
    frames = [synthetic(*hw, t) for t in range(steps + 1)]

    def tensor(f):
        return torch.from_numpy(f).to(dev).permute(2, 0, 1).float() / 255.0

    m255 = torch.from_numpy(frames[0][1]).to(dev) * 255
    sync(dev)
    t0 = time.perf_counter()
    core.start(tensor(frames[0][0]), m255, warmup=0)
    sync(dev)
    start = time.perf_counter() - t0
    times, cpu_times = [], []
    for img, _ in frames[1:]:
        x = tensor(img)
        sync(dev)
        t0, c0 = time.perf_counter(), time.process_time()
        core.step(x)
        sync(dev)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    med = statistics.median(times[1:] if len(times) > 2 else times)
    out = {"hw": list(hw), "start_s": round(start, 4), "ms_per_frame": round(med * 1000, 1),
           "fps": round(1 / med, 2), "steps": len(times)}
    if dev.type == "cpu":  # process CPU time per frame: robust on a shared machine (divide by threads)
        out["cpu_ms_per_frame"] = round(statistics.median(cpu_times[1:] if len(cpu_times) > 2 else cpu_times) * 1000, 1)
    return out


def time_pair(net, dev, hw, dtype, steps) -> dict:
    """ms per eye pair: separate cores one after the other vs the pair path, interleaved frame by
    frame (both see the same machine load), and the largest alpha difference between them."""
    from mattepod.matanyone import pair as core_pair

    def tensor(f):
        return torch.from_numpy(f).to(dev).permute(2, 0, 1).float() / 255.0

    # the right eye: the same scene a few pixels to the side (t shifts the synthetic subject)
    clip = [(synthetic(*hw, t), synthetic(*hw, t + 3)) for t in range(steps + 1)]
    sep = (InferenceCore(net, CoreConfig(), autocast_dtype=dtype), InferenceCore(net, CoreConfig(), autocast_dtype=dtype))
    pr = (InferenceCore(net, CoreConfig(), autocast_dtype=dtype), InferenceCore(net, CoreConfig(), autocast_dtype=dtype))
    (l0, ml), (r0, mr) = clip[0]
    imgs = (tensor(l0), tensor(r0))
    masks = (torch.from_numpy(ml).to(dev) * 255, torch.from_numpy(mr).to(dev) * 255)
    for core, img, m in zip(sep, imgs, masks):
        core.start(img, m, warmup=0)
    core_pair.start_pair(*pr, imgs, masks, 0)
    t_sep, t_pair, c_sep, c_pair, diff = [], [], [], [], 0.0
    for (left, _), (right, _) in clip[1:]:
        x = (tensor(left), tensor(right))
        sync(dev)
        t0, c0 = time.perf_counter(), time.process_time()
        a = (sep[0].step(x[0]), sep[1].step(x[1]))
        sync(dev)
        t1, c1 = time.perf_counter(), time.process_time()
        b = core_pair.step_pair(*pr, x)
        sync(dev)
        t2, c2 = time.perf_counter(), time.process_time()
        t_sep.append(t1 - t0)
        t_pair.append(t2 - t1)
        c_sep.append(c1 - c0)
        c_pair.append(c2 - c1)
        diff = max(diff, max(float((p - q).abs().max()) for p, q in zip(a, b)))
    med = lambda v: statistics.median(v[1:] if len(v) > 2 else v)  # noqa: E731 (first step warms up)
    out = {"hw_per_eye": list(hw), "steps": len(t_sep), "separate_ms_per_pair": round(med(t_sep) * 1000, 2),
           "pair_ms_per_pair": round(med(t_pair) * 1000, 2), "speedup": round(med(t_sep) / med(t_pair), 3),
           "max_abs_alpha_diff": diff}
    if dev.type == "cpu":
        out["separate_cpu_ms_per_pair"] = round(med(c_sep) * 1000, 2)
        out["pair_cpu_ms_per_pair"] = round(med(c_pair) * 1000, 2)
    return out


def pair_main(a, net) -> None:
    result = {"bench": "matanyone_pair", "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "cpu_fp32": {}, "gpu": None}
    sizes = [tuple(int(v) for v in s.split("x")) for s in filter(None, a.pair_sizes.split(","))]
    for hw in sizes:
        result["cpu_fp32"]["x".join(map(str, hw))] = time_pair(net, torch.device("cpu"), hw, None, a.steps)
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        gnet = net.to(dev).to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
        g = {"name": torch.cuda.get_device_name(dev), "sizes": {}}
        for size in filter(None, a.gpu_sizes.split(",")):
            g["sizes"][f"{size}_fp16"] = time_pair(gnet, dev, SIZES[size], torch.float16, max(a.steps, 8))
        result["gpu"] = g
    print(json.dumps(result))


def golden_timings(net, threads: int, repeats: int) -> dict:
    """Each golden case timed like README section 7: the official call sequence step by step
    (features recomputed per step), and our engine path (start with cached warm-up features)."""
    from PIL import Image

    torch.set_num_threads(threads)
    out = {}
    for case in ("tiny", "odd_long", "resize", "bf16_cpu"):
        d = REF / "cases" / case
        if not d.is_dir():
            continue
        params = json.loads((d / "params.json").read_text())
        dtype = torch.bfloat16 if case == "bf16_cpu" else None
        mask = torch.from_numpy(np.array(Image.open(d / "mask.png").convert("L"))).float() / 255
        m255 = prep.dilate_erode(mask, 10, 10)
        hw = prep.max_size_hw(*m255.shape, params.get("max_size") or -1)
        m255 = prep.resize_mask(m255, hw)
        imgs = [prep.resize_frame(torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1).float(),
                                  hw) / 255 for p in sorted((d / "frames").glob("*.png"))]
        runs, cpu_runs = [], []
        for _ in range(repeats):
            w, c = {}, {}  # wall-clock and process CPU seconds (CPU time ~ idle-machine wall at 1 thread)
            core = InferenceCore(net, autocast_dtype=dtype)
            t0, c0 = time.perf_counter(), time.process_time()
            core.step_mask(imgs[0], m255)
            core.step_first_frame(imgs[0])
            w["step0"], c["step0"] = time.perf_counter() - t0, time.process_time() - c0
            wu, cwu = [], []
            for _ in range(10):
                t1, c1 = time.perf_counter(), time.process_time()
                core.step_first_frame(imgs[0])
                wu.append(time.perf_counter() - t1)
                cwu.append(time.process_time() - c1)
            normal, cnormal = [], []
            for img in imgs[1:]:
                t1, c1 = time.perf_counter(), time.process_time()
                core.step(img)
                normal.append(time.perf_counter() - t1)
                cnormal.append(time.process_time() - c1)
            w["clip_official_sequence"] = time.perf_counter() - t0
            c["clip_official_sequence"] = time.process_time() - c0
            w["warmup_step"], c["warmup_step"] = statistics.median(wu), statistics.median(cwu)
            w["normal_step"], c["normal_step"] = statistics.median(normal), statistics.median(cnormal)
            core = InferenceCore(net, autocast_dtype=dtype)
            t0, c0 = time.perf_counter(), time.process_time()
            core.start(imgs[0], m255, 10)
            for img in imgs[1:]:
                core.step(img)
            w["clip"], c["clip"] = time.perf_counter() - t0, time.process_time() - c0
            w["per_real_frame"], c["per_real_frame"] = w["clip"] / len(imgs), c["clip"] / len(imgs)
            runs.append(w)
            cpu_runs.append(c)
        ours = {k: round(statistics.median(r[k] for r in runs), 4) for k in runs[0]}
        ours_cpu = {k: round(statistics.median(r[k] for r in cpu_runs), 4) for k in cpu_runs[0]}
        off = OFFICIAL.get((case, threads))
        entry = {"ours_wall": ours, "ours_cpu_time": ours_cpu, "official_wall": off}
        if off:
            # at 1 thread our CPU time stands in for the wall time of an idle machine (this one is shared)
            basis = ours_cpu if threads == 1 else ours
            entry["speedup_basis"] = "cpu_time" if threads == 1 else "wall"
            entry["speedup_per_real_frame"] = round(off["per_real_frame"] / basis["per_real_frame"], 2)
            entry["speedup_normal_step"] = round(off["normal_step"] / basis["normal_step"], 2)
            entry["speedup_warmup_step"] = round(off["warmup_step"] / basis["warmup_step"], 2)
        out[case] = entry
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights")
    ap.add_argument("--sizes", default="480p,1080p")
    ap.add_argument("--gpu-sizes", default="1080p,4k")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--golden-threads", default="1,2", help="thread counts of the golden timings")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-golden", action="store_true")
    ap.add_argument("--skip-cpu-sizes", action="store_true")
    ap.add_argument("--pair", action="store_true", help="time the VR180 eye pair: separate vs one batch of two")
    ap.add_argument("--pair-sizes", default="80x96,240x320", help="eye sizes (HxW) of --pair on the CPU")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    net = get_net(a.weights)
    if a.pair:
        pair_main(a, net)
        return
    result = {"bench": "matanyone_speed", "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "cpu_sizes": {}, "gpu": None}
    cpu = torch.device("cpu")
    if not a.skip_cpu_sizes:
        for size in filter(None, a.sizes.split(",")):
            for prec, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
                result["cpu_sizes"][f"{size}_{prec}"] = time_size(net, cpu, SIZES[size], dtype, a.steps)
    if not a.skip_golden and REF.is_dir():
        default_threads = torch.get_num_threads()
        result["golden"] = {f"threads_{t}": golden_timings(net, int(t), a.repeats) for t in a.golden_threads.split(",")}
        torch.set_num_threads(default_threads)
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        gnet = net.to(dev).to(memory_format=torch.channels_last)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        g = {"name": torch.cuda.get_device_name(dev), "sizes": {}}
        for size in filter(None, a.gpu_sizes.split(",")):
            for prec, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32_tf32", None)):
                g["sizes"][f"{size}_{prec}"] = time_size(gnet, dev, SIZES[size], dtype, max(a.steps, 8))
        result["gpu"] = g
    print(json.dumps(result))


if __name__ == "__main__":
    main()
