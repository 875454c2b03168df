"""Subjects through the whole run (real ffmpeg, the CLI): a matte per subject equal to a run of its
own, the union, the ID map, previews per subject, each subject's own prompt frame (backward pass) and
keyframes, kill -9 + resume bit-identical. The weight-free mask engine keeps these fast; the slow
test runs MatAnyone (synthetic reference weights)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from mattepod import config, pipeline
from mattepod.subjects import id_map
from tests.conftest import decode, make_mask, make_video, run_cli, whole_crash_resume


def alpha16(run_dir: Path, stem: str) -> np.ndarray:
    files = sorted((run_dir / f"{stem}_alpha16_png").glob("*.png"))
    return np.stack([cv2.imread(str(f), cv2.IMREAD_UNCHANGED) for f in files]).astype(np.int64)


@pytest.fixture
def masks(tmp_path):
    a = make_mask(tmp_path / "a.png", 96, 64, (4, 8, 44, 56))
    b = make_mask(tmp_path / "b.png", 96, 64, (30, 4, 90, 40))  # overlaps a
    b2 = make_mask(tmp_path / "b2.png", 96, 64, (50, 20, 92, 60))
    return a, b, b2


def subjects_cfg(tmp_path, clip, masks, exclusive: bool, **over):
    a, b, b2 = masks
    data = {"input": str(clip), "output_dir": str(tmp_path / "out"), "engine.name": "mask",
            "recovery.segment_frames": 7, "outputs.formats": ["alpha16", "alpha", "idmap"],
            "outputs.alpha_codec": "ffv1", "prompt.exclusive": exclusive,
            "prompt.subjects": [{"name": "alice", "mask": str(a)},
                                {"name": "bob", "frame": 10, "mask": str(b), "keyframes": [{"frame": 4, "mask": str(b2)},
                                                                                           {"frame": 17, "mask": str(b2)}]}]}
    data.update(over)
    return config.load(None, data)


def single_cfg(tmp_path, clip, name, mask, frame=0, keyframes=()):
    return config.load(None, {"input": str(clip), "output_dir": str(tmp_path / name), "engine.name": "mask",
                              "recovery.segment_frames": 7, "outputs.formats": ["alpha16"], "prompt.mask": str(mask),
                              "prompt.frame": frame, "prompt.keyframes": [{"frame": f, "mask": str(m)} for f, m in keyframes]})


def test_each_subject_equals_its_own_run_union_and_id_map(tmp_path, clip, masks, monkeypatch):
    a, b, b2 = masks
    import mattepod.subjectrun

    monkeypatch.setattr(mattepod.subjectrun, "SPILL_CHUNK_BYTES", 96 * 64 * 7 * 3)  # backward in chunks of 3
    res = pipeline.run(subjects_cfg(tmp_path, clip, masks, exclusive=False), pipeline.RunOptions(progress_bar=False))
    d = res.run_dir
    assert res.status == "completed" and not list(d.glob("segments*")) and not (d / "spill").exists()
    assert set(res.outputs) == {"alpha16", "alpha", "idmap", "alice.alpha16", "alice.alpha", "bob.alpha16", "bob.alpha"}
    assert res.outputs["bob.alpha"] == "clip_bob_alpha.mkv" and res.outputs["alpha"] == "clip_alpha.mkv"
    alone_a = pipeline.run(single_cfg(tmp_path, clip, "a", a), pipeline.RunOptions(progress_bar=False))
    alone_b = pipeline.run(single_cfg(tmp_path, clip, "b", b, 10, [(4, b2), (17, b2)]),
                           pipeline.RunOptions(progress_bar=False))
    got_a, got_b = alpha16(d, "clip_alice"), alpha16(d, "clip_bob")
    assert np.array_equal(got_a, alpha16(alone_a.run_dir, "clip"))
    assert np.array_equal(got_b, alpha16(alone_b.run_dir, "clip"))  # backward pass and keyframes included
    assert got_a.shape == (24, 64, 96) and got_b[:10].any() and got_b[10:].any()
    # the union: min(1, a + b), to the rounding of the 16-bit samples
    union = alpha16(d, "clip")
    assert np.abs(union - np.minimum(got_a + got_b, 65535)).max() <= 1
    assert union.max() == 65535 and (got_a + got_b).max() > 65535  # they overlap, and the union caps it
    assert np.array_equal(decode(d / "clip_alpha.mkv").astype(np.int64), union)
    assert np.array_equal(decode(d / "clip_bob_alpha.mkv").astype(np.int64), got_b)
    # the ID map: the subject with the largest alpha, 0 where none reaches one half
    ids = np.stack([cv2.imread(str(f), cv2.IMREAD_UNCHANGED) for f in sorted((d / "clip_idmap_png").glob("*.png"))])
    want = np.stack([id_map(np.stack([x, y]) / 65535.0) for x, y in zip(got_a, got_b)])
    assert ids.dtype == np.uint8 and set(np.unique(ids)) == {0, 1, 2}
    close = np.abs(got_a - got_b) <= 2  # ties at the 16-bit rounding may go either way
    assert np.array_equal(ids[~close], want[~close])
    previews = {p.name for p in (d / "previews").glob("*.png")}
    assert {"prompt_alice.png", "prompt_bob.png", "keyframe_bob_000004.png", "keyframe_bob_000017.png"} <= previews
    assert any(p.startswith("alpha_bob_") for p in previews) and any(p.startswith("subjects_") for p in previews)
    assert any(p.startswith("composite_alice_") for p in previews) and any(p.startswith("alpha_0") for p in previews)


def test_exclusion_on_never_claims_a_pixel_twice(tmp_path, clip, masks):
    res = pipeline.run(subjects_cfg(tmp_path, clip, masks, exclusive=True, **{"outputs.formats": ["alpha16"]}),
                       pipeline.RunOptions(progress_bar=False))
    a, b = alpha16(res.run_dir, "clip_alice"), alpha16(res.run_dir, "clip_bob")
    assert (a + b).max() <= 65535 + 1 and (a > 0).any() and (b > 0).any()
    assert (np.minimum(a, b) > 20000).any()  # overlap shared (about half each), not given to one


def test_cli_subjects_kill_9_resume_bit_identical(tmp_path, clip, masks):
    a, b, b2 = masks
    args = ["run", "--input", str(clip), "--engine", "mask", "--subject", f"alice:mask={a}",
            "--subject", f"bob@10:mask={b}", "--subject", f"bob@17:mask={b2}", "--outputs", "alpha,idmap",
            "--set", "outputs.alpha_codec=ffv1", "--set", "recovery.segment_frames=5", "-q"]
    whole, crash = whole_crash_resume(args, tmp_path, kill_at=13)
    for name in ("clip_alpha.mkv", "clip_alice_alpha.mkv", "clip_bob_alpha.mkv"):
        assert np.array_equal(decode(crash / name), decode(whole / name)), name
    for f in sorted((whole / "clip_idmap_png").glob("*.png")):
        assert (crash / "clip_idmap_png" / f.name).read_bytes() == f.read_bytes()
    meta = json.loads((crash / "metadata.json").read_text())
    assert meta["outputs"]["bob.alpha"] == "clip_bob_alpha.mkv"


def test_subject_prompt_beyond_the_clip_is_one_clear_line(tmp_path, clip, masks):
    a = masks[0]
    res = run_cli("run", "--input", str(clip), "--engine", "mask", "--subject", f"alice@30:mask={a}",
                  "--output-dir", str(tmp_path / "o"), "-q")
    assert res.returncode != 0 and "subject alice: prompt frame 30 is beyond" in res.stderr


@pytest.mark.slow
def test_matanyone_subjects_kill_9_resume_and_each_equals_its_own_run(tmp_path, tmp_path_factory):
    """MatAnyone (synthetic reference weights), two subjects, exclusion off: each subject's matte is
    that of a run of its own (ffv1 16-bit: a code or two of batch rounding); kill -9 + resume gives the
    whole run's mattes bit for bit."""
    from matanyone_common import need_reference, write_weights

    need_reference()
    root = write_weights(tmp_path_factory)
    clip = make_video(tmp_path / "clip.mp4", width=96, height=80, frames=10, audio=False)
    a = make_mask(tmp_path / "a.png", 96, 80, (8, 10, 44, 70))
    b = make_mask(tmp_path / "b.png", 96, 80, (52, 10, 90, 70))
    common = ["--input", str(clip), "--weights-dir", str(root), "--outputs", "alpha", "--set", "outputs.alpha_codec=ffv1",
              "--set", "engine.device=cpu", "--set", "engine.precision=fp32", "--set", "engine.warmup=1",
              "--set", "runtime.threads=1", "--set", "recovery.segment_frames=3", "-q"]
    args = ["run", *common, "--subject", f"a:mask={a}", "--subject", f"b:mask={b}", "--set", "prompt.exclusive=false"]
    whole, crash = whole_crash_resume(args, tmp_path, kill_at=7)
    for name in ("clip_alpha.mkv", "clip_a_alpha.mkv", "clip_b_alpha.mkv"):
        assert np.array_equal(decode(crash / name), decode(whole / name)), name
    for s, m in (("a", a), ("b", b)):
        own = run_cli("run", *common, "--mask", str(m), "--run-dir", str(tmp_path / f"own_{s}"), timeout=600)
        assert own.returncode == 0, own.stderr[-2000:]
        mine = decode(whole / f"clip_{s}_alpha.mkv").astype(np.int64)
        theirs = decode(tmp_path / f"own_{s}" / "clip_alpha.mkv").astype(np.int64)
        assert np.abs(mine - theirs).max() <= 2 and mine.std() > 0, s


def test_vr180_each_subject_on_both_eyes_equals_its_own_run(tmp_path):
    """VR180: a stereo engine per subject (the prompt on the master eye, moved to the other eye by
    the subject's disparity); each subject's SBS matte equals a VR180 run of its own."""
    import subprocess

    from stereo_synth import sbs_frame

    eye, frames = 64, 6
    path = tmp_path / "dance_LR_180.mkv"
    raw = b"".join(sbs_frame(eye, eye, t, disparity=-6)[0].tobytes() for t in range(frames))
    subprocess.run(["ffmpeg", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{2 * eye}x{eye}",
                    "-r", "10", "-i", "-", "-c:v", "ffv1", "-pix_fmt", "rgb24", "-y", str(path)],
                   input=raw, check=True, timeout=120)
    _, shape = sbs_frame(eye, eye, 0, disparity=-6)
    shape[:, eye:] = 0
    corner = np.zeros_like(shape)
    corner[4:20, 4:24] = 1  # a patch of background in the left eye
    paths = {}
    for name, m in (("shape", shape), ("corner", corner)):
        paths[name] = tmp_path / f"{name}.png"
        cv2.imwrite(str(paths[name]), (m * 255).astype(np.uint8))
    base = {"input": str(path), "engine.name": "mask", "stereo.mode": "vr180", "outputs.formats": ["alpha16"],
            "recovery.segment_frames": 4}
    both = pipeline.run(config.load(None, {**base, "output_dir": str(tmp_path / "both"), "prompt.exclusive": False,
                                           "prompt.subjects": [{"name": n, "mask": str(p)} for n, p in paths.items()]}),
                        pipeline.RunOptions(progress_bar=False))
    meta = json.loads((both.run_dir / "metadata.json").read_text())
    assert set(meta["stereo"]["subjects"]) == {"shape", "corner"}
    assert meta["stereo"]["subjects"]["shape"]["consistency"]["frames"] == frames
    lines = (both.run_dir / "stereo_consistency.jsonl").read_text().splitlines()
    assert {json.loads(x)["subject"] for x in lines} == {"shape", "corner"}
    for name, p in paths.items():
        own = pipeline.run(config.load(None, {**base, "output_dir": str(tmp_path / name), "prompt.mask": str(p)}),
                           pipeline.RunOptions(progress_bar=False))
        mine, theirs = alpha16(both.run_dir, f"dance_LR_180_{name}"), alpha16(own.run_dir, "dance_LR_180")
        assert mine.shape == (frames, eye, 2 * eye) and np.array_equal(mine, theirs), name
        assert mine[:, :, eye:].any()  # the other eye has its matte too


@pytest.mark.slow
def test_cli_auto_person_count_makes_one_subject_per_person(tmp_path):
    """``--auto-person --person-count 2`` through the CLI with the real detector and SAM 2 code on
    seeded random weights (tests/weightgen.py): person1 is prompted with the largest detected box,
    person2 with the second, each gets its own matte."""
    from mattepod import detect
    from mattepod.media.probe import probe
    from mattepod.media.reader import read_frame
    from tests.weightgen import make_detector_weights, make_sam2_weights

    wdir = tmp_path / "weights"
    make_sam2_weights(wdir, "tiny", seed=0)
    make_detector_weights(wdir, seed=0, person_logit=10.0)
    clip = make_video(tmp_path / "clip.mp4", width=96, height=64, frames=6, audio=False)
    res = run_cli("run", "--input", str(clip), "--engine", "mask", "--auto-person", "--person-count", "2",
                  "--weights-dir", str(wdir), "--set", "prompt.sam2_model=tiny", "--set", "engine.device=cpu",
                  "--outputs", "alpha16", "--run-dir", str(tmp_path / "run"), "-q", timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    d = tmp_path / "run"
    meta = json.loads((d / "metadata.json").read_text())
    assert {"person1.alpha16", "person2.alpha16", "alpha16"} <= set(meta["outputs"])
    assert (d / "previews" / "prompt_person1.png").is_file() and (d / "previews" / "prompt_person2.png").is_file()
    found = detect.PersonDetector(wdir, "cpu", 0.5).detect(read_frame(probe(clip), 0))
    log = (d / "run.log").read_text()
    assert log.count("1 chosen (rank)") == 2 and f"{len(found)} found" in log
    p1, p2 = alpha16(d, "clip_person1"), alpha16(d, "clip_person2")
    assert p1.shape == p2.shape == (6, 64, 96) and not np.array_equal(p1, p2)
    assert len(found) >= 2  # two people to pick from (which one each gets: test_subjects_config's rank test)
