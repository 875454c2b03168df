"""MatAnyoneEngine (the pipeline adapter) and build_engine: protocol, settings, resume, keyframes, errors."""

from __future__ import annotations

import io
from pathlib import Path
import json

import numpy as np
import pytest
import torch

from conftest import decode, make_mask, make_video, run_cli, whole_crash_resume
from matanyone_common import case_dir, need_reference, read_grey, read_rgb, write_weights
from matanyone_common import one_thread  # noqa: F401 (fixture)
from mattepod.config import EngineConfig
from mattepod.engine import Engine, MaskFollowEngine
from mattepod.errors import ConfigError, InvalidMediaError, MaskError, WeightsError
from mattepod.matanyone.memory import WorkingMemory, dense_affinity, similarity, topk_readout
from mattepod.matting import MatAnyoneEngine, build_engine

CPU = dict(device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def weights_root(tmp_path_factory):
    need_reference()
    return write_weights(tmp_path_factory)


def frames_of(name: str) -> list[np.ndarray]:
    return [read_rgb(p) for p in sorted((case_dir(name) / "frames").glob("*.png"))]


def mask_of(name: str) -> np.ndarray:
    return read_grey(case_dir(name) / "mask.png").astype(np.float32) / 255.0


def test_build_engine_kinds_and_weight_sources(weights_root, tmp_path):
    assert isinstance(build_engine(EngineConfig(name="mask"), None), MaskFollowEngine)
    hf = build_engine(EngineConfig(**CPU), weights_root)  # <root>/matanyone/{config.json,model.safetensors}
    assert isinstance(hf, MatAnyoneEngine) and isinstance(hf, Engine)
    assert hf.net.source.endswith("model.safetensors")
    pth_dir = build_engine(EngineConfig(**CPU), weights_root / "pth")  # <dir>/matanyone.pth
    assert pth_dir.net.source.endswith("matanyone.pth")
    direct = build_engine(EngineConfig(**CPU), weights_root / "pth" / "matanyone.pth")
    assert direct.net.source.endswith("matanyone.pth")
    v2 = tmp_path / "w"
    (v2 / "matanyone2").mkdir(parents=True)
    (v2 / "matanyone2" / "matanyone2.pth").symlink_to(weights_root / "pth" / "matanyone.pth")
    assert build_engine(EngineConfig(model="matanyone2", **CPU), v2).net.source.endswith("matanyone2.pth")
    with pytest.raises(WeightsError, match="download_models.py --models matanyone"):
        build_engine(EngineConfig(**CPU), tmp_path / "empty")


def test_engine_reproduces_golden_through_the_adapter(weights_root, one_thread):
    """uint8 frames + a [0,1] mask in; the adapter's morphology, warm-up and scaling give the golden."""
    eng = build_engine(EngineConfig(**CPU), weights_root)
    golden = np.load(case_dir("tiny") / "golden.npz")["alpha"]
    frames = frames_of("tiny")
    out = [eng.start(frames[0], mask_of("tiny"))] + [eng.step(f) for f in frames[1:]]
    for a, g in zip(out, golden):
        assert a.dtype == np.float32 and a.shape == g.shape
        assert np.abs(a - g).max() <= 1e-4


def test_max_size_runs_small_and_returns_full_size(weights_root, one_thread):
    eng = build_engine(EngineConfig(max_size=128, **CPU), weights_root)
    golden = np.load(case_dir("resize") / "golden.npz")["alpha"]
    frames = frames_of("resize")[:3]
    out = [eng.start(frames[0], mask_of("resize"))]
    internal = [eng.last_internal_alpha.numpy()]
    for f in frames[1:]:
        out.append(eng.step(f))
        internal.append(eng.last_internal_alpha.numpy())
    assert np.abs(np.stack(internal) - golden[:3]).max() <= 1e-4
    assert out[0].shape == frames[0].shape[:2] == (192, 256)
    assert 0.0 <= out[0].min() and out[0].max() <= 1.0
    # the full-size alpha is the internal one scaled up: its area average comes back close to it
    back = torch.nn.functional.interpolate(torch.from_numpy(out[1])[None, None], size=(128, 170), mode="area")
    assert float((back[0, 0] - torch.from_numpy(internal[1])).abs().mean()) < 0.02


def test_resume_is_bit_identical(weights_root, one_thread):
    """Straight run vs. run -> get_state -> torch.save -> new engine -> set_state -> continue."""
    frames = frames_of("odd_long")[:13]
    mask = mask_of("odd_long")
    cfg = EngineConfig(warmup=2, **CPU)
    eng = build_engine(cfg, weights_root)
    straight = [eng.start(frames[0], mask)] + [eng.step(f) for f in frames[1:]]

    first = build_engine(cfg, weights_root)
    first.start(frames[0], mask)
    for f in frames[1:7]:
        first.step(f)
    buf = io.BytesIO()
    torch.save(first.get_state(), buf)
    del first
    buf.seek(0)
    state = torch.load(buf, map_location="cpu", weights_only=True)
    assert all(t.device.type == "cpu" for t in state["core"]["tensors"].values() if t is not None)
    second = build_engine(cfg, weights_root)
    second.set_state(state)
    resumed = [second.step(f) for f in frames[7:]]
    for a, b in zip(resumed, straight[7:]):
        assert np.array_equal(a, b)
    # a state from other settings is refused
    other = build_engine(EngineConfig(warmup=3, **CPU), weights_root)
    with pytest.raises(ValueError, match="warmup"):
        other.set_state(state)


def test_keyframe_reanchors_like_a_fresh_start(weights_root, one_thread):
    frames = frames_of("tiny")
    mask = mask_of("tiny")
    cfg = EngineConfig(warmup=1, **CPU)
    eng = build_engine(cfg, weights_root)
    eng.start(frames[0], mask)
    eng.step(frames[1])
    shifted = np.roll(mask, 3, axis=1)
    keyed = eng.step(frames[2], mask=shifted)
    fresh = build_engine(cfg, weights_root)
    assert np.array_equal(keyed, fresh.start(frames[2], shifted))
    assert np.array_equal(eng.step(frames[3]), fresh.step(frames[3]))


def test_memory_stays_bounded(weights_root, one_thread):
    """Per-frame cost does not grow: after many frames the memory holds 1 permanent + 4 FIFO frames."""
    frames = frames_of("tiny")
    eng = build_engine(EngineConfig(warmup=0, mem_every=2, **CPU), weights_root)
    eng.start(frames[0], mask_of("tiny"))
    sizes = []
    for i in range(14):
        eng.step(frames[i % 4])
        sizes.append(eng.core.state.memory.size)
    tokens = 5 * 6  # 80x96 -> 5x6 cells
    assert max(sizes) == 5 * tokens and sizes[-1] == 5 * tokens
    assert eng.core.state.memory.perm_tokens == tokens


def test_working_memory_fifo_keeps_the_permanent_frame():
    mem = WorkingMemory(max_mem_frames=3)
    for i in range(6):
        mem.add(torch.full((1, 64, 2, 3), float(i)), torch.ones(1, 1, 2, 3), torch.full((1, 1, 256, 2, 3), float(i)))
    assert mem.size == 18 and mem.perm_tokens == 6
    assert mem.key[0, 0].tolist() == [0.0] * 6 + [4.0] * 6 + [5.0] * 6


def test_chunked_readout_equals_dense(monkeypatch):
    """The chunked top-k readout gives V @ affinity without building the (N x HW) affinity."""
    g = torch.Generator().manual_seed(0)
    mk, qk = torch.randn(1, 64, 300, generator=g), torch.randn(1, 64, 77, generator=g)
    ms = torch.rand(1, 1, 300, generator=g) + 1
    qe = torch.rand(1, 64, 77, generator=g)
    mv = torch.randn(1, 256, 300, generator=g)
    dense = mv @ dense_affinity(similarity(mk, ms, qk, qe), 30)
    import mattepod.matanyone.memory as memory

    blocks = []

    def spy(*args):
        out = similarity(*args)
        blocks.append(out.numel())
        return out

    monkeypatch.setattr(memory, "similarity", spy)
    for block in (300, 1000, 1 << 24):  # 1, 3 and all 77 query columns per block
        blocks.clear()
        assert torch.allclose(topk_readout(mk, ms, mv, qk, qe, 30, block), dense, atol=1e-5)
        assert max(blocks) <= max(block, 300) and sum(blocks) == 300 * 77


def test_bf16_on_cpu_is_close_to_fp32(weights_root, one_thread):
    frames = frames_of("tiny")[:2]
    mask = mask_of("tiny")
    a = build_engine(EngineConfig(device="cpu", precision="bf16", warmup=2), weights_root)
    b = build_engine(EngineConfig(warmup=2, **CPU), weights_root)
    for i, f in enumerate(frames):
        x = a.start(f, mask) if i == 0 else a.step(f)
        y = b.start(f, mask) if i == 0 else b.step(f)
        assert 0 < np.abs(x - y).mean() <= 0.05


def test_bad_input_is_refused_clearly(weights_root):
    frames = frames_of("tiny")
    with pytest.raises(ConfigError, match="fp16 is not supported on the CPU"):
        build_engine(EngineConfig(device="cpu", precision="fp16"), weights_root)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            build_engine(EngineConfig(device="cuda", precision="fp32"), weights_root)
    eng = build_engine(EngineConfig(**CPU), weights_root)
    with pytest.raises(RuntimeError, match="before start"):
        eng.step(frames[0])
    with pytest.raises(MaskError, match="does not match the frame"):
        eng.start(frames[0], np.ones((10, 10), np.float32))
    with pytest.raises(MaskError, match="empty"):
        eng.start(frames[0], np.zeros((80, 96), np.float32))
    with pytest.raises(InvalidMediaError, match="fewer than engine.top_k=30"):
        eng.start(np.zeros((64, 64, 3), np.uint8), np.ones((64, 64), np.float32))
    with pytest.raises(InvalidMediaError, match="uint8"):
        eng.start(frames[0].astype(np.float32), mask_of("tiny"))
    small = build_engine(EngineConfig(max_size=40, **CPU), weights_root)
    with pytest.raises(InvalidMediaError, match="larger engine.max_size"):
        small.start(frames[0], mask_of("tiny"))


def test_settings_reach_the_core(weights_root):
    cfg = EngineConfig(mem_every=3, max_mem_frames=4, top_k=20, **CPU)
    eng = build_engine(cfg, weights_root)
    c = eng.core.cfg
    assert (c.mem_every, c.max_mem_frames, c.top_k, c.block_elements) == (3, 4, 20, (64 << 20) // 4)
    small = MatAnyoneEngine(eng.net, cfg, readout_block_mb=1)
    assert small.core.cfg.block_elements == (1 << 20) // 4
    assert json.dumps(eng._settings())  # plain values only


@pytest.mark.slow
def test_cli_run_with_the_matanyone_engine(weights_root, tmp_path):
    """The real CLI, ffmpeg and loader with engine.name=matanyone: a completed run with an alpha video."""
    video = make_video(tmp_path / "clip.mp4", width=96, height=80, frames=6, audio=False)
    mask = make_mask(tmp_path / "m.png", 96, 80)
    res = run_cli("run", "--input", str(video), "--mask", str(mask), "--weights-dir", str(weights_root),
                  "--output-dir", str(tmp_path / "out"), "--outputs", "alpha", "--set", "engine.device=cpu",
                  "--set", "engine.warmup=1", "--set", "runtime.threads=1", timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    meta = json.loads(next((tmp_path / "out").glob("*/metadata.json")).read_text())
    assert meta["status"] == "completed" and meta["frames"]["done"] == 6
    assert (next((tmp_path / "out").glob("*/")) / meta["outputs"]["alpha"]).stat().st_size > 0
    import hashlib

    used = {Path(w["file"]).name: w["sha256"] for w in meta["weights"]}
    st = weights_root / "matanyone" / "model.safetensors"
    assert used["model.safetensors"] == hashlib.sha256(st.read_bytes()).hexdigest()


@pytest.mark.slow
def test_cli_kill_9_and_resume_with_matanyone_is_bit_identical(weights_root, tmp_path):
    """The foundation's promise with the real network: kill -9 mid-run, --resume, same alpha bit for bit."""
    video = make_video(tmp_path / "clip.mp4", width=96, height=80, frames=10, audio=False)
    mask = make_mask(tmp_path / "m.png", 96, 80)
    args = ["run", "--input", str(video), "--mask", str(mask), "--weights-dir", str(weights_root),
            "--outputs", "alpha", "--set", "outputs.alpha_codec=ffv1", "--set", "engine.device=cpu",
            "--set", "engine.precision=fp32", "--set", "engine.warmup=2", "--set", "runtime.threads=1",
            "--set", "recovery.segment_frames=3", "-q"]
    whole, crash = whole_crash_resume(args, tmp_path, kill_at=7)
    a, b = decode(whole / "clip_alpha.mkv"), decode(crash / "clip_alpha.mkv")
    assert a.shape == (10, 80, 96) and np.array_equal(a, b)
