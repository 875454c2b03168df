"""SAM 2.1 and the person detector on CPU, with seeded random weights the tests write (tests/weightgen.py).

The weights are random, so what SAM 2 segments means nothing; what is checked is the plumbing: the real
loader reads our checkpoint, clicks/boxes reach SAM's prompt encoder in the right place at any frame size,
labels arrive intact, the embedding is cached, detector boxes are filtered, mapped and selected.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mattepod import detect, sam
from mattepod.errors import MaskError, WeightsError
from mattepod.prompts import PromptSpec, resolve_prompt
from tests.weightgen import make_detector_weights, make_sam2_weights

RES = 1024  # SAM 2's input size: prompt coordinates reach the encoder in this space


@pytest.fixture(scope="module")
def wdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    make_sam2_weights(d, "tiny", seed=0)
    make_detector_weights(d, seed=0, person_logit=10.0)
    sam.clear_cache()
    detect.clear_cache()
    return d


@pytest.fixture(scope="module")
def prompter(wdir):
    return sam.get_prompter("tiny", wdir, "cpu")


@pytest.fixture
def encoder_calls(prompter):
    """What SAM 2's prompt encoder is called with (a forward pre-hook: inspection, nothing replaced)."""
    calls: list[tuple[np.ndarray, np.ndarray]] = []

    def hook(_module, _args, kwargs):
        coords, labels = kwargs["points"]
        calls.append((coords.detach().cpu().numpy().copy(), labels.detach().cpu().numpy().copy()))

    handle = prompter.model.sam_prompt_encoder.register_forward_pre_hook(hook, with_kwargs=True)
    yield calls
    handle.remove()


def _frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_real_loader_reads_our_checkpoint_on_cpu_and_leaves_hydra_alone(wdir, prompter):
    from hydra.core.global_hydra import GlobalHydra

    ckpt = torch.load(wdir / "sam2.1_tiny" / "sam2.1_hiera_tiny.pt", map_location="cpu", weights_only=True)["model"]
    state = prompter.model.state_dict()
    assert set(state) == set(ckpt)
    name = "sam_mask_decoder.iou_prediction_head.layers.0.weight"
    assert torch.equal(state[name], ckpt[name])
    assert {p.device.type for p in prompter.model.parameters()} == {"cpu"}
    assert not GlobalHydra.instance().is_initialized()


def test_host_hydra_state_survives_loading(wdir, tmp_path):
    """A host that uses Hydra itself keeps its Hydra state while we compose sam2's config."""
    import os

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    (tmp_path / "host.yaml").write_text("answer: 42\n")
    # a hard link: another checkpoint path for the model cache (so this loads for real), no 150 MB copy
    (tmp_path / "w" / "sam2.1_tiny").mkdir(parents=True)
    os.link(wdir / "sam2.1_tiny" / "sam2.1_hiera_tiny.pt", tmp_path / "w" / "sam2.1_tiny" / "sam2.1_hiera_tiny.pt")
    with initialize_config_dir(str(tmp_path), version_base="1.2"):
        model = sam.load_model("tiny", tmp_path / "w", "cpu")
        assert GlobalHydra.instance().is_initialized()
        assert compose("host").answer == 42  # the host's config search path is back
    assert sam.load_model("tiny", tmp_path / "w", "cpu") is model  # loaded once


def test_missing_and_broken_weights(tmp_path):
    with pytest.raises(WeightsError, match=r"sam2.1_small missing .*download_models.py --models sam2.1_small"):
        sam.Sam2Prompter("small", tmp_path, "cpu")
    bad = tmp_path / "sam2.1_tiny"
    bad.mkdir()
    (bad / "sam2.1_hiera_tiny.pt").write_bytes(b"truncated")
    with pytest.raises(WeightsError, match="could not be loaded"):
        sam.load_model("tiny", tmp_path, "cpu")
    with pytest.raises(WeightsError, match="person_detector missing"):
        detect.PersonDetector(tmp_path)


@pytest.mark.parametrize("h, w", [(37, 53), (48, 80)])
def test_clicks_reach_the_encoder_at_the_right_place(prompter, encoder_calls, h, w):
    frame = _frame(h, w)
    clicks = [(w * 0.25, h * 0.5, 1), (w - 1.0, 2.0, 0)]
    mask = prompter.mask_for(frame, clicks)
    assert mask.shape == (h, w) and mask.dtype == np.float32
    assert set(np.unique(mask)) <= {0.0, 1.0}
    coords, labels = encoder_calls[-1]
    expected = np.array([[x * RES / w, y * RES / h] for x, y, _ in clicks], np.float32)
    np.testing.assert_allclose(coords[0], expected, rtol=1e-6)
    assert labels.tolist() == [[1, 0]]


def test_normalized_clicks_equal_pixel_clicks(prompter, encoder_calls):
    h, w = 48, 80
    frame = _frame(h, w)
    pix = prompter.mask_for(frame, [(20.0, 12.0, 1), (70.0, 40.0, 0)])
    norm = prompter.mask_for(frame, [(20 / w, 12 / h, 1), (70 / w, 40 / h, 0)], normalized=True)
    np.testing.assert_allclose(encoder_calls[-1][0], encoder_calls[-2][0], rtol=1e-6)
    assert np.array_equal(pix, norm)


def test_labels_matter_negative_click_changes_the_mask(prompter, encoder_calls):
    frame = _frame(48, 80)
    both_pos = prompter.mask_for(frame, [(20.0, 12.0, 1), (60.0, 30.0, 1)])
    with_neg = prompter.mask_for(frame, [(20.0, 12.0, 1), (60.0, 30.0, 0)])
    assert [c[1].tolist() for c in encoder_calls[-2:]] == [[[1, 1]], [[1, 0]]]
    assert not np.array_equal(both_pos, with_neg)


def test_single_click_keeps_the_best_of_three(prompter):
    frame = _frame(48, 80)
    seen = []
    handle = prompter.model.sam_mask_decoder.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw["multimask_output"]), with_kwargs=True)
    try:
        mask = prompter.mask_for(frame, [(30.0, 20.0, 1)])
        prompter.mask_for(frame, [(30.0, 20.0, 1), (5.0, 5.0, 0)])
    finally:
        handle.remove()
    assert seen == [True, False]
    with torch.inference_mode():
        masks, scores, _ = prompter.predictor.predict(np.array([[30.0, 20.0]]), np.array([1]), multimask_output=True)
    assert np.array_equal(mask, masks[int(np.argmax(scores))].astype(np.float32))


def test_box_and_box_with_clicks(prompter, encoder_calls):
    h, w = 48, 80
    frame = _frame(h, w)
    box = (8.0, 4.0, 60.0, 44.0)
    mask = prompter.mask_for(frame, box=box)
    assert mask.shape == (h, w)
    coords, labels = encoder_calls[-1]
    np.testing.assert_allclose(coords[0], [[8 * RES / w, 4 * RES / h], [60 * RES / w, 44 * RES / h]], rtol=1e-6)
    assert labels.tolist() == [[2, 3]]  # SAM's box-corner labels
    prompter.mask_for(frame, [(30.0, 20.0, 0)], box=box)
    assert encoder_calls[-1][1].tolist() == [[2, 3, 0]]


def test_resolve_uses_the_cached_prompter_for_the_configured_size(wdir):
    frame = _frame(48, 80)
    res = resolve_prompt(PromptSpec(box=(0.1, 0.1, 0.7, 0.9), normalized=True), frame, wdir, sam2_model="tiny")
    assert res.boxes == [pytest.approx((8.0, 4.8, 56.0, 43.2))]
    assert sam.get_prompter("tiny", wdir, "cpu") is sam.get_prompter("tiny", str(wdir), "cpu")


# --------------------------------------------------------------------------------------- automatic person


@pytest.fixture(scope="module")
def detector(wdir):
    return detect.PersonDetector(wdir, "cpu", min_score=0.5, min_size=160)


def test_detector_boxes_are_people_in_frame_pixels(detector):
    h, w = 48, 80  # the detector resizes internally (min side 160): boxes must come back in frame pixels
    found = detector.detect(_frame(h, w))
    assert len(found) > 3
    for d in found:
        x0, y0, x1, y1 = d.box
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert d.score >= 0.5
    assert [d.score for d in found] == sorted((d.score for d in found), reverse=True)
    assert max(d.box[2] for d in found) > w / 2  # proposals spread over the frame, not squeezed in a corner


def test_select_people():
    def det(x1, y1, s=0.9):
        return detect.Detection((0.0, 0.0, x1, y1), s)

    found = [det(2, 2), det(10, 10), det(5, 5), det(7, 7)]
    assert detect.select_people(found, "largest")[0].box[2] == 10
    assert [d.box[2] for d in detect.select_people(found, "n_largest", 3)] == [10, 7, 5]
    assert len(detect.select_people(found, "all")) == 4
    assert detect.select_people([], "largest") == []
    with pytest.raises(MaskError, match="'biggest'"):
        detect.select_people(found, "biggest")


@pytest.mark.parametrize("select, count", [("largest", 1), ("n_largest", 2)])
def test_auto_person_prompts_sam_with_the_chosen_boxes(prompter, encoder_calls, detector, wdir, select, count):
    h, w = 48, 80  # the frame embedded by the tests above: no new SAM embedding
    frame = _frame(h, w)
    expected = detect.select_people(detector.detect(frame), select, count)
    assert len(expected) == count
    encoder_calls.clear()
    spec = PromptSpec(frame=9, auto_person=True, person_select=select, person_count=count)
    res = resolve_prompt(spec, frame, wdir, prompter=prompter, detector=detector)
    assert res.boxes == [d.box for d in expected]
    assert len(encoder_calls) == count
    for (coords, labels), d in zip(encoder_calls, expected):
        x0, y0, x1, y1 = d.box
        np.testing.assert_allclose(coords[0], [[x0 * RES / w, y0 * RES / h], [x1 * RES / w, y1 * RES / h]],
                                   rtol=1e-5)
        assert labels.tolist() == [[2, 3]]
    assert res.mask.shape == (h, w)


def test_auto_person_with_nobody_found(tmp_path_factory, prompter, wdir):
    nobody = tmp_path_factory.mktemp("nobody")
    make_detector_weights(nobody, seed=0, person_logit=-10.0)  # every region is "not a person"
    det = detect.PersonDetector(nobody, "cpu", min_size=160)
    assert det.detect(_frame(48, 80)) == []
    with pytest.raises(MaskError, match=r"no person found on frame 4 \(detector score >= 0.5\)"):
        resolve_prompt(PromptSpec(frame=4, auto_person=True), _frame(48, 80), wdir,
                       prompter=prompter, detector=det)


def test_embedding_is_cached_per_frame_content(prompter):
    a, b = _frame(48, 80), _frame(48, 80, seed=12)
    prompter.set_frame(a)
    start = prompter.embed_count
    prompter.mask_for(a, [(10.0, 10.0, 1)])
    prompter.mask_for(a.copy(), [(10.0, 10.0, 1), (50.0, 30.0, 0)])  # same content, another array: no re-embed
    assert prompter.embed_count == start
    prompter.mask_for(b, [(10.0, 10.0, 1)])
    assert prompter.embed_count == start + 1
