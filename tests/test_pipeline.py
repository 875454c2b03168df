"""The whole run through real ffmpeg: outputs, audio, frame counts, resume after kill -9, ordering, errors."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from mattepod import config, pipeline
from mattepod.engine import MaskFollowEngine
from mattepod.errors import RunStateError
from tests.conftest import SHARED, decode, make_mask, make_video, run_cli, stream_info, whole_crash_resume


def _cfg(tmp_path: Path, clip: Path, mask: Path, **over) -> config.Config:
    base = {"input": str(clip), "output_dir": str(tmp_path / "out"), "prompt.mask": str(mask),
            "engine.name": "mask", "recovery.segment_frames": 7}
    base.update(over)
    return config.load(None, base)


def _alpha16(run_dir: Path, stem: str = "clip") -> np.ndarray:
    files = sorted((run_dir / f"{stem}_alpha16_png").glob("*.png"))
    return np.stack([cv2.imread(str(f), cv2.IMREAD_UNCHANGED) for f in files])


def test_all_formats_audio_counts_and_metadata(tmp_path, clip, mask):
    bg = tmp_path / "bg.png"
    cv2.imwrite(str(bg), np.full((10, 10, 3), 200, np.uint8))
    cfg = _cfg(tmp_path, clip, mask, **{"outputs.formats": ["alpha", "green", "composite", "prores", "webm", "png", "alpha16"],
                                        "outputs.background": str(bg)})
    res = pipeline.run(cfg, pipeline.RunOptions(progress_bar=False))
    d = res.run_dir
    assert res.status == "completed"
    meta = json.loads((d / "metadata.json").read_text())
    assert meta["status"] == "completed" and meta["frames"] == {"total": 24, "done": 24}
    assert meta["encoder"]["hevc"] in ("libx265", "hevc_nvenc")
    assert meta["timings"]["engine_fps"] and meta["timings"]["decode_fps"]
    assert set(meta["outputs"]) == {"alpha", "green", "composite", "prores", "webm", "png", "alpha16"}
    for name in ("clip_alpha.mp4", "clip_green.mp4", "clip_composite.mp4", "clip_rgba.mov", "clip_rgba.webm"):
        streams = stream_info(d / name)
        video = [s for s in streams if s["codec_type"] == "video"][0]
        assert int(video["nb_read_frames"]) == 24, name
        has_audio = any(s["codec_type"] == "audio" for s in streams)
        assert has_audio == (not name.endswith(".webm")), name  # AAC cannot go into WebM; never re-encoded
    assert len(list((d / "clip_rgba_png").glob("*.png"))) == 24
    assert (d / "previews" / "prompt.png").is_file() and list((d / "previews").glob("alpha_*.png"))
    assert not (d / "segments").exists()
    # The 16-bit PNGs carry the engine's float alpha to within 1/65535.
    eng = MaskFollowEngine()
    from mattepod.media.probe import probe
    from mattepod.media.reader import read_frames
    from mattepod.prompts import load_mask_file

    frames = read_frames(probe(clip))
    first = next(frames)
    want = [eng.start(first, load_mask_file(mask, (96, 64)))] + [eng.step(f) for f in frames]
    got = _alpha16(d).astype(np.float64) / 65535
    assert np.abs(got - np.stack(want)).max() <= 0.5 / 65535 + 1e-7
    # The green output really is the frame over #00B140 where alpha is 0.
    green = decode(d / "clip_green.mp4", "rgb24")
    corner = green[:, :3, :3].reshape(-1, 3).mean(axis=0)
    assert np.allclose(corner, [0, 0xB1, 0x40], atol=12)


def test_ffv1_alpha_is_lossless_16bit(tmp_path, clip, mask):
    cfg = _cfg(tmp_path, clip, mask, **{"outputs.formats": ["alpha", "alpha16"], "outputs.alpha_codec": "ffv1"})
    res = pipeline.run(cfg, pipeline.RunOptions(progress_bar=False))
    assert res.outputs["alpha"] == "clip_alpha.mkv"
    assert np.array_equal(decode(res.run_dir / "clip_alpha.mkv"), _alpha16(res.run_dir))


def test_kill_9_then_resume_is_bit_identical(tmp_path, clip, mask):
    args = ["run", "--input", str(clip), "--mask", str(mask), "--engine", "mask", "--outputs", "alpha,alpha16",
            "--set", "outputs.alpha_codec=ffv1", "--set", "recovery.segment_frames=5", "-q"]
    crashed = run_cli(*args, "--run-dir", str(tmp_path / "killed"), env={"MATTEPOD_TEST_KILL_AT_FRAME": "13"})
    assert crashed.returncode == -9
    meta = json.loads((tmp_path / "killed" / "metadata.json").read_text())
    assert meta["status"] == "running" and not (tmp_path / "killed" / "clip_alpha.mkv").exists()
    again = run_cli(*args, "--run-dir", str(tmp_path / "killed"))
    assert again.returncode == RunStateError.exit_code and "--resume" in again.stderr
    whole_crash_resume(args, tmp_path, kill_at=13)
    assert np.array_equal(decode(tmp_path / "crash" / "clip_alpha.mkv"), decode(tmp_path / "whole" / "clip_alpha.mkv"))
    assert np.array_equal(_alpha16(tmp_path / "crash"), _alpha16(tmp_path / "whole"))
    # A completed run is never touched again.
    res = run_cli("run", "--resume", str(tmp_path / "crash"))
    assert res.returncode == RunStateError.exit_code and "already completed" in res.stderr
    res = run_cli(*args, "--run-dir", str(tmp_path / "whole"))
    assert res.returncode == RunStateError.exit_code and "never overwritten" in res.stderr


class RecordingEngine:
    """Alpha = the frame's mean grey (so output order is checkable); records every call."""

    name = "recording"

    def __init__(self):
        self.calls: list[tuple[str, int, bool]] = []

    def _alpha(self, frame):
        return np.full(frame.shape[:2], frame.mean() / 255.0, np.float32)

    def start(self, frame, mask):
        self.calls.append(("start", int(frame.mean() * 1000), True))
        return self._alpha(frame)

    def step(self, frame, mask=None):
        self.calls.append(("step", int(frame.mean() * 1000), mask is not None))
        return self._alpha(frame)

    def get_state(self):
        return {"n": len(self.calls)}

    def set_state(self, state):
        pass


def test_prompt_on_a_later_frame_runs_backward_and_keeps_order(tmp_path, mask):
    clip = make_video(tmp_path / "clip.mp4", 96, 64, frames=20, audio=False, src="mandelbrot")
    from mattepod.media.probe import probe
    from mattepod.media.reader import read_frames

    means = [f.mean() for f in read_frames(probe(clip))]
    eng = RecordingEngine()
    cfg = _cfg(tmp_path, clip, mask, **{"prompt.frame": 8, "outputs.formats": ["alpha16"],
                                        "prompt.keyframes": [{"frame": 14, "mask": str(mask)}, {"frame": 3, "mask": str(mask)}]})
    res = pipeline.run(cfg, pipeline.RunOptions(progress_bar=False, engine_factory=lambda c: eng))
    got = _alpha16(res.run_dir).astype(np.float64)[:, 0, 0] / 65535
    assert len(got) == 20
    assert np.allclose(got, np.array(means) / 255.0, atol=2e-5)
    code = [int(m * 1000) for m in means]
    kinds = [(c[0], code.index(c[1]), c[2]) for c in eng.calls]
    # backward: start at 8, steps 7..0 with the keyframe mask at 3; forward: start at 8 again, steps 9..19.
    assert kinds[0] == ("start", 8, True)
    assert [k[1] for k in kinds[1:9]] == [7, 6, 5, 4, 3, 2, 1, 0]
    assert [k[1] for k in kinds[1:9] if k[2]] == [3]
    assert kinds[9] == ("start", 8, True)
    assert [k[1] for k in kinds[10:]] == list(range(9, 20))
    assert [k[1] for k in kinds[10:] if k[2]] == [14]
    assert not (res.run_dir / "spill").exists()


@pytest.mark.parametrize("case", ["missing", "not_video", "mask_aspect", "prompt_beyond_end", "empty_mask", "ffmpeg"])
def test_bad_input_gives_one_line_and_its_exit_code(tmp_path, clip, mask, case):
    args = ["run", "--input", str(clip), "--mask", str(mask), "--engine", "mask", "-o", str(tmp_path / "o"), "-q"]
    env = {}
    expect = {"missing": 3, "not_video": 4, "mask_aspect": 5, "prompt_beyond_end": 5, "empty_mask": 5, "ffmpeg": 7}[case]
    if case == "missing":
        args[2] = str(tmp_path / "nope.mp4")
    elif case == "not_video":
        (tmp_path / "x.mp4").write_bytes(b"\x00" * 1000)
        args[2] = str(tmp_path / "x.mp4")
    elif case == "mask_aspect":
        args[4] = str(make_mask(tmp_path / "sq.png", 64, 64))
    elif case == "prompt_beyond_end":
        args += ["--prompt-frame", "99"]
    elif case == "empty_mask":
        cv2.imwrite(str(tmp_path / "e.png"), np.zeros((64, 96), np.uint8))
        args[4] = str(tmp_path / "e.png")
    elif case == "ffmpeg":
        env["MATTEPOD_FFMPEG_DIR"] = str(tmp_path / "none")
    res = run_cli(*args, env=env)
    assert res.returncode == expect, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and " -> " in last
    for meta in (tmp_path / "o").glob("*/metadata.json"):
        data = json.loads(meta.read_text())
        assert data["status"] == "failed" and data["error"]["exit_code"] == expect
        assert not data.get("outputs")


def test_dry_run_prints_plan_and_writes_nothing(tmp_path, clip, mask):
    res = run_cli("run", "--input", str(clip), "--mask", str(mask), "--dry-run", "-o", str(tmp_path / "o"),
                  "--start-frame", "4", "--max-frames", "10", "--scale", "0.5", check=True)
    plan = json.loads(res.stdout)
    assert plan["plan"]["frames"] == 10 and plan["plan"]["start_frame"] == 4 and plan["config"]["scale"] == 0.5
    assert not (tmp_path / "o").exists()


def test_range_scale_and_progress_json(tmp_path, clip, mask):
    res = run_cli("run", "--input", str(clip), "--mask", str(mask), "--engine", "mask", "-o", str(tmp_path / "o"),
                  "--start-frame", "5", "--max-frames", "12", "--scale", "0.5", "--outputs", "alpha",
                  "--progress-json", check=True)
    events = [json.loads(line) for line in res.stdout.splitlines()]
    assert events[0]["event"] == "start" and events[-1]["event"] == "done" and events[-1]["status"] == "completed"
    prog = [e for e in events if e["event"] == "progress" and e["stage"] == "matting"]
    assert prog[-1]["frame"] == 12 and prog[-1]["total"] == 12
    run_dir = Path(events[-1]["run_dir"])
    streams = stream_info(run_dir / "clip_alpha.mp4")
    video = [s for s in streams if s["codec_type"] == "video"][0]
    assert int(video["nb_read_frames"]) == 12 and (video["width"], video["height"]) == (96, 64)
    audio = [s for s in streams if s["codec_type"] == "audio"][0]
    assert abs(float(audio["duration"]) - 0.5) < 0.1  # the audio of the processed range only


def test_auto_resume_continues_the_unfinished_run(tmp_path, clip, mask):
    args = ["run", "--input", str(clip), "--mask", str(mask), "--engine", "mask", "-o", str(tmp_path / "o"),
            "--outputs", "alpha16", "--set", "recovery.segment_frames=4", "--set", "recovery.auto_resume=true", "-q"]
    assert run_cli(*args, env={"MATTEPOD_TEST_KILL_AT_FRAME": "10"}).returncode == -9
    run_cli(*args, check=True)
    runs = list((tmp_path / "o").iterdir())
    assert len(runs) == 1 and json.loads((runs[0] / "metadata.json").read_text())["status"] == "completed"
    assert len(list((runs[0] / "clip_alpha16_png").glob("*.png"))) == 24


def test_real_clip_end_to_end(tmp_path):
    clip = SHARED / "data" / "person-720p-79f.mp4"
    if not clip.is_file():
        pytest.skip("../shared/data is missing (real test clips live beside the repo)")
    run_cli("run", "--input", str(clip), "--mask", str(SHARED / "data" / "person-720p-79f.mask.png"),
                  "--engine", "mask", "-o", str(tmp_path / "o"), "--outputs", "alpha,green", "-q", check=True)
    run_dir = next((tmp_path / "o").iterdir())
    for name in ("person-720p-79f_alpha.mp4", "person-720p-79f_green.mp4"):
        streams = stream_info(run_dir / name)
        assert int([s for s in streams if s["codec_type"] == "video"][0]["nb_read_frames"]) == 79
        assert any(s["codec_type"] == "audio" and s["codec_name"] == "aac" for s in streams)


def test_run_inference_script_is_the_same_entry_point(tmp_path, clip, mask):
    import subprocess
    import sys

    from tests.conftest import ROOT

    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_inference.py"), "--input", str(clip), "--mask",
                          str(mask), "--engine", "mask", "--outputs", "alpha16", "-o", str(tmp_path / "o"),
                          "--progress-json"], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    done = json.loads(res.stdout.splitlines()[-1])
    assert done["event"] == "done" and done["status"] == "completed" and done["outputs"] == {"alpha16": "clip_alpha16_png"}
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_inference.py"), "--input", str(tmp_path / "no.mp4")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 3 and "does not exist" in bad.stderr


def test_picture_outputs_keep_the_source_colour_description(tmp_path, mask):
    clip = make_video(tmp_path / "c709.mp4", 96, 64, frames=6, audio=False,
                      extra=["-color_primaries", "bt709", "-color_trc", "bt709", "-colorspace", "bt709"])
    cfg = _cfg(tmp_path, clip, mask, **{"outputs.formats": ["green", "alpha"]})
    res = pipeline.run(cfg, pipeline.RunOptions(progress_bar=False))
    green = [s for s in stream_info(res.run_dir / "c709_green.mp4") if s["codec_type"] == "video"][0]
    assert (green.get("color_primaries"), green.get("color_transfer"), green.get("color_space")) == ("bt709",) * 3
