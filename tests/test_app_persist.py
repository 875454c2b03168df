"""The page's prompt kept across a reload, a closed tab and a pod restart (app/persist.py), without a browser.

A prompt is built with the real handlers on a real clip (mask upload, clicks, box, brush, a keyframe, an added
subject, VR-free mono view, Max frames, the box tool), saved, and restored by a *new* AppState over the same
volume (what a pod restart leaves): the restored page must show and send exactly what the old one did. Then
what must never be trusted or kept: keys that are paths, files that are not ours, a video that is gone.
"""

import os
import time

import cv2
import numpy as np
import pytest

from app import handlers as h
from app import persist
from app import state as st
from app.server import AppState
from mattepod import jobs
from tests.app_harness import BOX, box_mask, make_clip

NO_SAM = "large"  # no weights for it here: clicks stay clicks (sent to the job's SAM 2)


@pytest.fixture()
def roots(tmp_path):
    r = jobs.Roots(tmp_path / "input", tmp_path / "output", tmp_path / "weights")
    make_clip(r.input / "clip.mp4", frames=30)
    return r


@pytest.fixture()
def app(roots):
    a = AppState(roots)
    yield a
    a.manager.close()


def build(app, tmp_path) -> st.PromptState:
    """A prompt with one of every kind of edit, two prompted frames and an added subject."""
    ps = h.restore(app, None, st.PromptState(), NO_SAM)  # a first visit: a fresh key, nothing else
    assert persist.valid_key(ps.key) and ps.media is None
    ps = h.load_video(app, ps, str(app.roots.input / "clip.mp4"), NO_SAM)
    mpath = tmp_path / "mask.png"
    cv2.imwrite(str(mpath), box_mask(0))
    ps = h.upload_mask(app, ps, str(mpath), NO_SAM)
    add = np.zeros((96, 160), bool)
    add[60:80, 100:140] = True
    sub = np.zeros((96, 160), bool)
    sub[30:35, 20:60] = True
    ps = h.update(app, ps, st.AddStroke(add, sub), NO_SAM)
    ps = h.update(app, ps, st.AddSubject(), NO_SAM)  # subject1: the mask + brush on frame 0
    ps = h.show_frame(app, ps, 7, NO_SAM)
    ps = h.click(app, ps, BOX["x0"] + 7 * BOX["speed"] + 20, BOX["y0"] + 20, NO_SAM)
    ps = h.click(app, ps, 150, 90, NO_SAM)
    ps = h.update(app, ps, st.SetTool("remove"), NO_SAM)
    ps = h.click(app, ps, 5, 5, NO_SAM)
    ps = h.show_frame(app, ps, 12, NO_SAM)
    ps = h.update(app, ps, st.SetTool("box"), NO_SAM)
    ps = h.click(app, ps, BOX["x0"] + 20, BOX["y0"] - 2, NO_SAM)
    ps = h.click(app, ps, BOX["x0"] + 70, BOX["y0"] + 44, NO_SAM)
    ps = h.update(app, ps, st.SetMaxFrames(25), NO_SAM)
    ps = h.show_frame(app, ps, 9, NO_SAM)  # the frame shown is not a prompted one
    return ps


def same_page(a: st.PromptState, b: st.PromptState) -> None:
    pa, pb = h.render(a), h.render(b)
    assert np.array_equal(pa.image, pb.image)
    assert (pa.frame, pa.prompt_md, pa.run_enabled, pa.run_hint, pa.mode, pa.prompted) == \
        (pb.frame, pb.prompt_md, pb.run_enabled, pb.run_hint, pb.mode, pb.prompted)
    assert (a.tool, a.max_frames, a.master, a.layout, a.media, a.view) == (b.tool, b.max_frames, b.master, b.layout,
                                                                         b.media, b.view)
    sa, sb = st.run_subjects(a), st.run_subjects(b)
    assert [s.name for s in sa] == [s.name for s in sb]
    for x, y in zip(sa, sb):
        assert len(x.frames) == len(y.frames)
        for fx, fy in zip(x.frames, y.frames):
            assert (fx.frame, fx.points, fx.box) == (fy.frame, fy.points, fy.box)
            assert (fx.mask is None) == (fy.mask is None)
            assert fx.mask is None or np.array_equal(fx.mask >= 0.5, fy.mask >= 0.5)
    for k in a.prompts:
        ea, eb = a.prompts[k].edits, b.prompts[k].edits
        assert [type(e).__name__ for e in ea] == [type(e).__name__ for e in eb]


def test_a_restart_restores_every_part_of_the_prompt(roots, app, tmp_path):
    ps = build(app, tmp_path)
    h.save(app, ps)
    assert app.prompts.flush()
    files = list((roots.output / ".prompts").glob("*.npz"))
    assert [f.name for f in files] == [f"{ps.key}.npz"]
    assert files[0].stat().st_size < 20_000  # bit-packed, compressed masks
    app.manager.close()
    again = AppState(roots)  # a new process over the same volume (a pod restart)
    try:
        back = h.restore(again, ps.key, st.PromptState(), NO_SAM)
        assert back.key == ps.key and back.frame == 9 and back.image_frame == 9
        assert "restored: clip.mp4, frame 9" in back.message and not back.refused
        assert st.consistent(back)
        same_page(ps, back)
        # and it goes on working: Undo on frame 7 removes the − click, as it would have before
        a7 = h.update(app, h.show_frame(app, ps, 7, NO_SAM), st.Undo(), NO_SAM)
        b7 = h.update(again, h.show_frame(again, back, 7, NO_SAM), st.Undo(), NO_SAM)
        same_page(a7, b7)
    finally:
        again.manager.close()


def test_the_store_keeps_the_latest_state_and_nothing_for_a_visit_without_a_video(roots, app, tmp_path):
    ps = h.restore(app, None, st.PromptState(), NO_SAM)
    h.save(app, ps)
    app.prompts.flush()
    assert not (roots.output / ".prompts").exists() or not any((roots.output / ".prompts").iterdir())
    ps = h.load_video(app, ps, str(roots.input / "clip.mp4"), NO_SAM)
    h.save(app, ps)
    ps = h.show_frame(app, ps, 4, NO_SAM)
    h.save(app, ps)
    assert h.restore(app, ps.key, st.PromptState(), NO_SAM).frame == 4
    bad = roots.input / "broken.mp4"
    bad.write_bytes(b"no video")
    ps = h.load_video(app, ps, str(bad), NO_SAM)  # a failed load leaves no video: a reload must not bring it back
    h.save(app, ps)
    back = h.restore(app, ps.key, st.PromptState(), NO_SAM)
    assert back.media is None and back.key == ps.key


def test_a_video_that_is_gone_or_changed_is_said_in_one_line(roots, app, tmp_path):
    ps = build(app, tmp_path)
    h.save(app, ps)
    clip = roots.input / "clip.mp4"
    clip.rename(roots.input / "moved.mp4")
    back = h.restore(app, ps.key, st.PromptState(), NO_SAM)
    assert back.media is None and not back.prompts and back.key == ps.key
    assert back.message.startswith("clip.mp4 is no longer in the volume") and str(roots.input) not in back.message
    assert "\n" not in back.message and not back.refused
    make_clip(clip, frames=12)  # another clip under the same name: the prompt is not put on it
    back = h.restore(app, ps.key, st.PromptState(), NO_SAM)
    assert back.media is None and "changed" in back.message


def test_keys_are_tokens_never_paths(roots, app, tmp_path):
    outside = tmp_path / "outside.npz"
    outside.write_bytes(b"x")
    for key in ("../outside", "../../outside", str(outside), "a/b", "", None, 7, "short", "x" * 65,
                "..%2F..%2Foutside"):
        ps = h.restore(app, key, st.PromptState(), NO_SAM)
        assert persist.valid_key(ps.key) and ps.key != key and ps.media is None
        with pytest.raises(ValueError):
            app.prompts.path(key)
    assert persist.valid_key(persist.new_key())


def test_files_that_are_not_ours_start_empty(roots, app, tmp_path, monkeypatch):
    cache = tmp_path / "gradio-cache"
    cache.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    ps = build(app, tmp_path)
    cv2.imwrite(str(cache / "m9.png"), box_mask(9))
    ps = h.upload_mask(app, ps, str(cache / "m9.png"), NO_SAM)  # on frame 9, shown again in the file box
    h.save(app, ps)
    assert h.render(h.restore(app, ps.key, st.PromptState(), NO_SAM)).mask_file == str(cache / "m9.png")
    path = app.prompts.path(ps.key)
    meta, arrays = app.prompts.load(ps.key)

    def rewrite(**changes):
        m = {**meta, **changes}
        packed = {n: np.packbits(a) for n, a in arrays.items()}
        m["shapes"] = {n: list(a.shape) for n, a in arrays.items()}
        import json

        packed["__meta__"] = np.frombuffer(json.dumps(m).encode(), np.uint8)
        with open(path, "wb") as fh:
            np.savez(fh, **packed)

    # a media path outside the volume is refused by the one confinement rule, not opened
    rewrite(media={**meta["media"], "path": "/etc/hostname"})
    back = h.restore(app, ps.key, st.PromptState(), NO_SAM)
    assert back.media is None and "dropped" in back.message and "/etc" not in back.message
    rewrite(version=99)
    assert h.restore(app, ps.key, st.PromptState(), NO_SAM).media is None
    rewrite(frame=500)
    assert h.restore(app, ps.key, st.PromptState(), NO_SAM).media is None
    # an upload path that is not in Gradio's cache is never shown again (the mask itself stays)
    nine = next(p for p in meta["prompts"] if p["frame"] == 9)
    nine["edits"][0]["path"] = "/etc/passwd"
    rewrite()
    back = h.restore(app, ps.key, st.PromptState(), NO_SAM)
    assert back.prompts[9].upload.name == "m9.png" and h.render(back).mask_file is None
    path.write_bytes(b"PK\x03\x04 not a zip")  # garbage: logged, starts empty
    assert h.restore(app, ps.key, st.PromptState(), NO_SAM).media is None
    pickled = {"__meta__": np.array([{"a": 1}], dtype=object)}
    with open(path, "wb") as fh:
        np.savez(fh, **pickled)
    assert app.prompts.load(ps.key) is None  # allow_pickle=False: an object array is never unpickled


def test_size_bound_and_pruning(roots, app, tmp_path, monkeypatch):
    ps = build(app, tmp_path)
    monkeypatch.setattr(persist, "MAX_BYTES", 100)
    assert not app.prompts.write(ps)
    monkeypatch.setattr(persist, "MAX_BYTES", 96 << 20)
    assert app.prompts.write(ps)
    folder = roots.output / ".prompts"
    now = time.time()
    for i in range(5):
        p = folder / f"{persist.new_key()}.npz"
        p.write_bytes(b"x")
        os.utime(p, (now - i, now - i))
    old = folder / f"{persist.new_key()}.npz"
    old.write_bytes(b"x")
    os.utime(old, (now - 40 * 86400, now - 40 * 86400))
    stale_tmp = folder / ".abc.tmp"
    stale_tmp.write_bytes(b"x")
    os.utime(stale_tmp, (now - 7200, now - 7200))
    monkeypatch.setattr(persist, "MAX_FILES", 4)
    assert app.prompts.prune(now) == 4  # two beyond the newest four, the 40-day-old one, the stale temp file
    left = sorted(p.name for p in folder.iterdir())
    assert len(left) == 4 and old.name not in left and f"{ps.key}.npz" in left
    assert jobs.JobManager(roots.output).list_jobs() == []  # the store is no run folder


def test_refusals_are_marked_notes_are_not(app):
    ps = h.load_video(app, st.PromptState(), str(app.roots.input / "clip.mp4"), NO_SAM)
    assert not ps.refused
    out = h.click(app, ps, 5000, 1, NO_SAM)
    assert out.refused and "outside the frame" in out.message
    boxed = h.click(app, h.update(app, ps, st.SetTool("box"), NO_SAM), 10, 10, NO_SAM)
    assert not boxed.refused and "opposite corner" in boxed.message  # a note
    assert not h.update(app, out, st.SetTool("add"), NO_SAM).refused  # the next action clears it
    bad = app.roots.input / "notes.mp4"
    bad.write_bytes(b"text")
    assert h.load_video(app, ps, str(bad), NO_SAM).refused
    assert not h.load_video(app, ps, None, NO_SAM).refused  # an emptied file box refuses nothing
    assert h.upload_mask(app, st.PromptState(), "/x.png", NO_SAM).refused
    assert not h.set_view(app, out, ps.mode, ps.master, ps.layout, NO_SAM).refused  # not toasted twice


def test_the_browser_secret_outlives_the_process(roots, app):
    first = app.prompts.secret()
    assert len(first) >= 32 and app.prompts.secret() == first
    assert (roots.output / ".prompts" / "browser-secret").stat().st_mode & 0o077 == 0
    again = AppState(roots)
    try:
        assert again.prompts.secret() == first  # a restarted pod reads what its browsers keep
    finally:
        again.manager.close()


def test_a_vr180_prompt_comes_back_on_its_eye(roots, app):
    sbs = make_clip(roots.input / "scene_LR_180.mp4", frames=4, w=192, h=96)  # the name says VR180
    ps = h.restore(app, None, st.PromptState(), NO_SAM)
    ps = h.load_video(app, ps, str(sbs), NO_SAM)
    ps = h.set_view(app, ps, "vr180", "right", "auto", NO_SAM)  # the right eye is the master now
    ps = h.show_frame(app, ps, 2, NO_SAM)
    ps = h.click(app, ps, 30, 40, NO_SAM)
    h.save(app, ps)
    back = h.restore(app, ps.key, st.PromptState(), NO_SAM)
    assert (back.mode, back.master, back.view) == ("vr180", "right", ps.view) and back.view.x == 96
    same_page(ps, back)
    assert st.run_prompt(back)[0].points == [[30 + 96, 40, 1]]  # full-frame pixels, on the right eye
