"""MatAnyone peak memory per frame size: CPU (peak RSS above the loaded model) and GPU when present.

Each size runs in a fresh process: load the network, reset the peak counter, then ``start`` and enough
steps (``mem_every=1``) to fill the working memory to its cap (1 permanent + 4 FIFO frames), which is
where the readout is largest. Reports the peak, the memory tokens N, the size the official dense
(N x HW) float32 affinity would need, and the chunk our readout used instead. ``1080p_unchunked``
runs the same core with one readout block covering all queries, to show what chunking saves.

Prints one JSON line.    python bench/matanyone_memory.py [--sizes 480p,1080p,4k,vr_eye_2048] [--steps 5]

``--fit RESULTS.json`` (no run): the memory model of ``mattepod/adaptive.py`` fitted to a results line,
peak = fixed + bytes_per_px * padded matting pixels (least squares over the chunked sizes), for the CPU
section and the GPU section when present, and the model's prediction next to each measurement.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SIZES = {  # name: (frame h, w, max_size)
    "480p": (480, 854, -1),
    "1080p": (1080, 1920, -1),
    "1080p_unchunked": (1080, 1920, -1),
    "4k": (2160, 3840, -1),
    "vr_eye_2048": (4096, 4096, 2048),  # one 4096x4096 VR180 eye at a reduced internal size
}


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child(size: str, device: str, steps: int, weights: str | None) -> dict:
    from matanyone_speed import get_net, synthetic

    from mattepod.matanyone import prep
    from mattepod.matanyone.core import CoreConfig, InferenceCore
    from mattepod.matanyone.memory import DEFAULT_BLOCK_ELEMENTS

    h, w, max_size = SIZES[size]
    dev = torch.device(device)
    net = get_net(weights).to(dev)
    ih, iw = prep.max_size_hw(h, w, max_size)
    hw_tokens = -(-ih // 16) * -(-iw // 16)
    block = hw_tokens * 5 * hw_tokens if size.endswith("unchunked") else DEFAULT_BLOCK_ELEMENTS
    dtype = torch.float16 if dev.type == "cuda" else None
    core = InferenceCore(net, CoreConfig(mem_every=1, block_elements=block), autocast_dtype=dtype)
    frames = [synthetic(h, w, t) for t in range(steps + 1)]
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: the peak from here on
    base = rss_kib("VmRSS")
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        gbase = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    for i, (img, mask) in enumerate(frames):
        x = prep.resize_frame(torch.from_numpy(img).to(dev).permute(2, 0, 1).float(), (ih, iw)) / 255
        if i == 0:
            m = prep.resize_mask(torch.from_numpy(mask).to(dev) * 255, (ih, iw))
            core.start(x, m, warmup=0)
        else:
            core.step(x)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    n = core.state.memory.size
    out = {"frame": [h, w], "internal": [ih, iw], "device": device, "steps": steps,
           "seconds": round(time.perf_counter() - t0, 1), "memory_tokens": n,
           "official_dense_affinity_mib": round(n * hw_tokens * 4 / 2**20, 1),
           "readout_block_mib": round(min(block, n * hw_tokens) * 4 / 2**20, 1),
           "cpu_peak_rss_above_model_mib": round((rss_kib("VmHWM") - base) / 1024, 1)}
    if dev.type == "cuda":
        out["gpu_peak_allocated_above_model_mib"] = round((torch.cuda.max_memory_allocated() - gbase) / 2**20, 1)
        out["gpu"] = torch.cuda.get_device_name()
    return out


def fit(path: str) -> dict:
    """Least-squares line through (padded matting pixels, peak above the model) per device section."""
    import numpy as np

    from mattepod.adaptive import padded, predict_bytes

    data = json.loads(Path(path).read_text().strip().splitlines()[-1])
    out: dict = {"bench": "matanyone_memory_fit", "source": path}
    for section, field, dtype in (("cpu", "cpu_peak_rss_above_model_mib", None),
                                  ("gpu", "gpu_peak_allocated_above_model_mib", torch.float16)):
        pts = [(padded(*e["internal"]), e[field] * 2**20, name) for name, e in (data.get(section) or {}).items()
               if field in e and not name.endswith("unchunked")]
        if len(pts) < 2:
            continue
        x = np.array([p[0] for p in pts], float)
        y = np.array([p[1] for p in pts], float)
        slope, icpt = np.polyfit(x, y, 1)
        out[section] = {"fixed_mib": round(icpt / 2**20, 1), "bytes_per_px": round(slope, 1),
                        "points": {n: {"measured_mib": round(b / 2**20, 1),
                                       "model_mib": round(predict_bytes(tuple(data[section][n]["internal"]), dtype, 5)
                                                          / 2**20, 1)} for _px, b, n in pts}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="480p,1080p,1080p_unchunked,4k,vr_eye_2048")
    ap.add_argument("--gpu-sizes", default="480p,1080p,4k,vr_eye_2048")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--weights")
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--child")
    ap.add_argument("--fit", help="fit the memory model to this results file instead of running")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    if a.fit:
        print(json.dumps(fit(a.fit)))
        return
    if a.child:
        print(json.dumps(child(a.child, a.device, a.steps, a.weights)))
        return
    result = {"bench": "matanyone_memory", "torch": torch.__version__, "cpu": {}, "gpu": {}}
    jobs = [("cpu", s) for s in a.sizes.split(",") if s]
    if torch.cuda.is_available():
        jobs += [("cuda", s) for s in a.gpu_sizes.split(",") if s]
    for device, size in jobs:
        cmd = [sys.executable, __file__, "--child", size, "--device", device, "--steps", str(a.steps)]
        if a.weights:
            cmd += ["--weights", a.weights]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
            line = p.stdout.strip().splitlines()[-1] if p.returncode == 0 and p.stdout.strip() else None
            entry = json.loads(line) if line else {"error": (p.stderr.strip().splitlines() or ["?"])[-1]}
        except subprocess.TimeoutExpired:
            entry = {"error": f"timed out after {a.timeout} s"}
        result["cpu" if device == "cpu" else "gpu"][size] = entry
    print(json.dumps(result))


if __name__ == "__main__":
    main()
