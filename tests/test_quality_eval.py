"""``mattepod eval``: PNG sequences (8/16-bit, grey or RGBA), alpha videos decoded without an 8-bit cut
(FFV1 16-bit, 10-bit HEVC, ProRes and WebM alpha planes), run folders, clear errors, constant memory."""

from __future__ import annotations

import json
import tracemalloc
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from mattepod import pipeline, quality as q
from mattepod.config import OutputsConfig, load
from mattepod.errors import InvalidMediaError
from mattepod.media.writer import FFmpegWriter
from mattepod.outputs import FORMATS, RenderContext
from tests.conftest import run_cli


def mattes(n: int, h: int = 48, w: int = 64, seed: int = 0, noise: float = 0.02) -> list[np.ndarray]:
    """Soft moving blobs as float64 alphas in [0, 1] (many distinct 16-bit levels)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for t in range(n):
        r = np.hypot((yy - h / 2 - t) / (h / 3), (xx - w / 2 - 2 * t) / (w / 3))
        out.append(np.clip(1.4 - r + noise * rng.standard_normal((h, w)), 0, 1))
    return out


def write_pngs(folder: Path, frames: list[np.ndarray], bits: int = 8, rgba: bool = False) -> Path:
    folder.mkdir(parents=True)
    top = 255 if bits == 8 else 65535
    for i, a in enumerate(frames):
        img = np.round(a * top).astype(np.uint8 if bits == 8 else np.uint16)
        if rgba:
            img = np.dstack([np.full_like(img, top // 3)] * 3 + [img])
        cv2.imwrite(str(folder / f"{i:05d}.png"), img)
    return folder


def write_alpha_video(path: Path, frames: list[np.ndarray], codec: str) -> Path:
    """Through the run's own writer and the alpha format's ffmpeg settings (outputs.alpha_codec)."""
    ctx = RenderContext(OutputsConfig(alpha_codec=codec), {"h264": "libx264", "hevc": "libx265"})
    h, w = frames[0].shape
    fmt = FORMATS["alpha"]
    writer = FFmpegWriter(path, w, h, Fraction(24), fmt.pix_fmt, fmt.args(ctx))
    for a in frames:
        writer.write(fmt.render(None, a, ctx))
    writer.close()
    return path


def test_png_sequences_8_and_16_bit(tmp_path):
    frames = mattes(3)
    p8 = q.open_source(write_pngs(tmp_path / "p8", frames))
    got = list(p8.frames("field"))
    assert got[1].dtype == np.float32
    np.testing.assert_array_equal(got[1], np.round(frames[1] * 255).astype(np.float32) / np.float32(255))
    p16 = q.open_source(write_pngs(tmp_path / "p16", frames, bits=16))
    v16 = np.round(frames[2] * 65535).astype(np.uint16)
    native = list(p16.frames("native"))[2]
    np.testing.assert_array_equal(native, v16.astype(np.float32) / np.float32(65535))
    # field depth: exactly what OpenCV's 8-bit grey read of the 16-bit PNG gives (its high byte)
    field = list(p16.frames("field"))[2]
    want = cv2.imread(p16.images[2], cv2.IMREAD_GRAYSCALE).astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(field, want)
    rgba = q.open_source(write_pngs(tmp_path / "rgba", frames, rgba=True))
    np.testing.assert_array_equal(list(rgba.frames())[0], got[0])  # the matte of an RGBA frame is its alpha


def test_alpha_videos_decode_without_an_8bit_cut(tmp_path):
    frames = mattes(4)
    exact = [np.round(a * 65535) / 65535 for a in frames]
    ffv1 = q.open_source(write_alpha_video(tmp_path / "a.mkv", frames, "ffv1"))
    for got, want in zip(ffv1.frames("native"), exact, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-7)  # lossless 16-bit: bit-exact
    smooth = mattes(4, 96, 128, noise=0.0)
    hevc = q.open_source(write_alpha_video(tmp_path / "a.mp4", smooth, "hevc10"))
    assert hevc.detail.startswith("hevc yuv420p10le")
    decoded = list(hevc.frames("native"))
    assert len(decoded) == 4
    assert len(np.unique(decoded[0])) > 256  # 10-bit levels survive (an 8-bit decode would keep <= 256)
    assert np.abs(decoded[0] - smooth[0]).mean() < 2e-3  # lossy (crf 18), but close
    for a in hevc.frames("field"):  # field depth: on the 8-bit grid
        np.testing.assert_allclose(a * 255, np.round(a * 255), atol=1e-4)


def test_eval_cli_json_and_table(tmp_path):
    gt = write_pngs(tmp_path / "gt", mattes(5))
    pred = write_pngs(tmp_path / "pred", mattes(5, seed=1), bits=16)
    res = run_cli("eval", "--pred", str(pred), "--gt", str(gt), "--json", "-q")
    assert res.returncode == 0, res.stderr
    rep = json.loads(res.stdout)
    assert rep["frames"] == 5 and len(rep["per_frame"]) == 5 and rep["depth"] == "field"
    assert rep["per_frame"][0]["dtssd"] == 0.0
    # the same numbers as the metric functions on the frames the field's reader sees
    g = [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255 for f in sorted(gt.iterdir())]
    p = [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255 for f in sorted(pred.iterdir())]
    assert rep["mean"]["mad"] == pytest.approx(np.mean([q.mad(a, b) for a, b in zip(p, g)]), abs=1e-9)
    assert rep["per_frame"][3]["conn"] == pytest.approx(q.conn(p[3], g[3]), abs=1e-12)
    assert rep["per_frame"][4]["dtssd"] == pytest.approx(q.dtssd(p[4], p[3], g[4], g[3]), abs=1e-12)
    assert all(rep["mean"][m] > 0 for m in q.METRICS)
    table = run_cli("eval", "--pred", str(pred), "--gt", str(gt), "--depth", "native", "-q")
    assert table.returncode == 0 and "| frames | MAD | MSE | Grad | Conn | dtSSD |" in table.stdout
    same = json.loads(run_cli("eval", "--pred", str(gt), "--gt", str(gt), "--json", "-q").stdout)
    assert all(v == 0.0 for v in same["mean"].values())


@pytest.mark.parametrize("case", ["count", "size", "missing", "gt_start"])
def test_eval_mismatch_is_one_clear_line(tmp_path, case):
    gt = write_pngs(tmp_path / "gt", mattes(5))
    pred = {"count": lambda: write_pngs(tmp_path / "p", mattes(4)),
            "size": lambda: write_pngs(tmp_path / "p", mattes(5, h=40)),
            "missing": lambda: tmp_path / "nope",
            "gt_start": lambda: write_pngs(tmp_path / "p", mattes(4))}[case]()
    extra = ["--gt-start", "2"] if case == "gt_start" else []
    res = run_cli("eval", "--pred", str(pred), "--gt", str(gt), "-q", *extra)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == (3 if case == "missing" else 4), res.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ")
    word = {"count": "frame counts differ", "size": "frame sizes differ", "missing": "does not exist",
            "gt_start": "3 from its frame 2"}[case]
    assert word in lines[0]
    if case == "gt_start":  # the same clip without its first frame agrees
        ok = run_cli("eval", "--pred", str(pred), "--gt", str(gt), "--gt-start", "1", "-q")
        assert ok.returncode == 0, ok.stderr


def test_a_run_folder_is_evaluated_through_its_best_matte(tmp_path, clip, mask):
    cfg = load(None, {"input": str(clip), "output_dir": str(tmp_path / "out"), "prompt.mask": str(mask),
                      "engine.name": "mask", "outputs.formats": ["alpha", "prores", "webm", "png", "alpha16"]})
    run = pipeline.run(cfg, pipeline.RunOptions(progress_bar=False)).run_dir
    src = q.open_source(run)
    assert "alpha16" in src.detail and src.frame_count == 24
    sixteen = run / "clip_alpha16_png"
    same = q.evaluate(run, sixteen, depth="native")
    assert all(v == 0.0 for v in same.mean.values())
    # each other matte, decoded, is within its format's precision of the 16-bit one
    # (ProRes decodes its alpha as 10 bits: yuva444p10le)
    limits = {"clip_alpha.mp4": 3.0, "clip_rgba.mov": 0.5, "clip_rgba.webm": 3.0, "clip_rgba_png": 2.0}
    for name, limit in limits.items():
        rep = q.evaluate(run / name, sixteen, depth="native")
        assert rep.frames == 24 and 0 < rep.mean["mad"] < limit, (name, rep.mean)
    meta = json.loads((run / "metadata.json").read_text())
    meta["status"] = "running"
    (run / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(Exception, match="not completed"):
        q.open_source(run)


def test_memory_stays_flat_with_the_clip_length(tmp_path):
    """Streaming: ten times the frames must not mean ten times the memory."""
    peaks = []
    for n in (4, 40):
        gt = write_pngs(tmp_path / f"g{n}", mattes(n, 96, 128))
        pred = write_pngs(tmp_path / f"p{n}", mattes(n, 96, 128, seed=2))
        tracemalloc.start()
        q.evaluate(pred, gt)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    frame_bytes = 96 * 128 * 8
    assert peaks[1] < peaks[0] + 4 * frame_bytes, peaks


def test_evaluate_rejects_a_stream_that_ends_early(tmp_path):
    gt = write_pngs(tmp_path / "gt", mattes(3))
    src = q.open_source(gt)
    src.frame_count = 4  # the probe promised more frames than the files hold
    with pytest.raises(InvalidMediaError, match="ended after 3 of the 4 frames"):
        q.evaluate(src, q.open_source(write_pngs(tmp_path / "p", mattes(4))))
    with pytest.raises(InvalidMediaError):
        list(q.AlphaSource(str(tmp_path / "x.mkv"), "video", 8, 8, 3, codec="ffv1", pix_fmt="gray16le").frames())


def test_gt_start_seeks_into_a_ground_truth_video(tmp_path):
    frames = mattes(6)
    gt = write_alpha_video(tmp_path / "gt.mkv", frames, "ffv1")
    pred = write_pngs(tmp_path / "p", frames[2:], bits=16)
    rep = q.evaluate(pred, gt, depth="native", gt_start=2)
    assert rep.frames == 4 and all(v == 0.0 for v in rep.mean.values())
    off = q.evaluate(pred, gt, depth="native", gt_start=1, gt_longer=True)
    assert off.mean["mad"] > 1  # one frame off: the seek really lands on frame gt_start
