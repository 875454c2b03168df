"""StereoEngine through the real streaming pipeline (ffmpeg in and out): a stereo run that fails
mid-way resumes to the same alpha, bit for bit, as an uninterrupted run — exactly as mono."""

from __future__ import annotations

import json
import subprocess

import cv2
import numpy as np
import pytest

from mattepod import config as config_mod
from mattepod.engine import MaskFollowEngine
from mattepod.pipeline import RunOptions, run
from mattepod.stereo import StereoEngine, detect_layout
from stereo_synth import sbs_frame

EYE, FRAMES = 64, 10


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    d = tmp_path_factory.mktemp("vr")
    path = d / "dance_LR_180.mkv"
    raw = b"".join(sbs_frame(EYE, EYE, t, disparity=-6)[0].tobytes() for t in range(FRAMES))
    subprocess.run(["ffmpeg", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{2 * EYE}x{EYE}",
                    "-r", "10", "-i", "-", "-f", "lavfi", "-i", "sine=frequency=300:duration=1",
                    "-map", "0:v", "-map", "1:a", "-c:v", "ffv1", "-pix_fmt", "rgb24", "-c:a", "flac",
                    "-shortest", "-y", str(path)], input=raw, check=True, timeout=120)
    _, mask = sbs_frame(EYE, EYE, 0, disparity=-6)
    mask[:, EYE:] = 0  # the prompt is drawn on the left (master) eye only
    mask_path = d / "prompt.png"
    cv2.imwrite(str(mask_path), (mask * 255).astype(np.uint8))
    return path, mask_path


def make_cfg(clip, out):
    path, mask_path = clip
    return config_mod.validate({
        "input": str(path), "output_dir": str(out), "engine": {"name": "mask"},
        "prompt": {"mask": str(mask_path)}, "outputs": {"formats": ["alpha"], "alpha_codec": "ffv1", "previews": 0},
        "stereo": {"mode": "vr180"}, "recovery": {"segment_frames": 3}})


class GpuFault(RuntimeError):
    pass


def factory(crash_at=None):
    def make(cfg):
        layout = detect_layout(cfg.input, 2 * EYE, EYE, config=cfg.stereo)
        eng = StereoEngine.from_config(MaskFollowEngine, layout, cfg.stereo)
        if crash_at is not None:
            step = eng.step
            seen = []

            def crashing_step(frame, mask=None):
                seen.append(1)
                if len(seen) >= crash_at:
                    raise GpuFault("simulated device fault")
                return step(frame, mask)

            eng.step = crashing_step
        return eng
    return make


def alpha_frames(path):
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "gray16le", "-"],
                         capture_output=True, check=True, timeout=60).stdout
    return np.frombuffer(raw, np.uint16).reshape(-1, EYE, 2 * EYE)


def test_stereo_run_resumes_bit_identically(clip, tmp_path):
    ref = run(make_cfg(clip, tmp_path / "ref"), RunOptions(engine_factory=factory(), progress_bar=False))
    assert ref.status == "completed"
    want = alpha_frames(ref.run_dir / ref.outputs["alpha"])
    assert want.shape[0] == FRAMES
    # the right eye got a matte although only the left eye was prompted
    assert (want[0][:, EYE:] > 32768).sum() > 0.5 * (want[0][:, :EYE] > 32768).sum()

    cfg = make_cfg(clip, tmp_path / "crash")
    with pytest.raises(GpuFault):
        run(cfg, RunOptions(engine_factory=factory(crash_at=7), progress_bar=False))
    folder = next((tmp_path / "crash").iterdir())
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["status"] == "failed" and 3 <= meta["frames"]["done"] < FRAMES  # checkpointed part-way
    resumed = run(cfg, RunOptions(resume=folder, engine_factory=factory(), progress_bar=False))
    assert resumed.status == "completed"
    got = alpha_frames(resumed.run_dir / resumed.outputs["alpha"])
    assert np.array_equal(got, want)
