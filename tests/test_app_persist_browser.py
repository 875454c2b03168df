"""The page in Debian's headless Chromium: the prompt survives a reload, a closed tab and a restart of the app;
each refusal is one toast; the brush paints at once.

The app runs without SAM 2 weights (clicks stay clicks, sent to the job), so it starts fast. Screenshots go to
test-artifacts/gradio-browser/ next to the other browser tests'.
"""

import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.app_harness import BOX, RunningApp, box_mask, chromium, make_clip
from tests.test_app_browser import (ARTIFACTS, CHROMIUM, DESKTOP, PHONE, click_pixel, frame_number, shot,
                                    text_has, upload_video)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


class App:
    """The app over one volume, restartable on the same port (what a pod restart looks like to a browser)."""

    def __init__(self, root: Path):
        self.root = root
        base = root / "base.yaml"
        base.write_text("engine: {name: mask, erode: 0, dilate: 0, device: cpu}\n"
                        "outputs: {formats: [alpha], previews: 1}\nprompt: {sam2_model: tiny}\n")
        self.env = {"MATTEPOD_CONFIG": str(base)}
        self.running = RunningApp(root, self.env)

    def restart(self) -> None:
        port = self.running.port
        self.running.stop()
        self.running = RunningApp(self.root, self.env, port=port)

    def __getattr__(self, name):
        return getattr(self.running, name)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    a = App(tmp_path_factory.mktemp("persist"))
    yield a
    a.running.stop()


@pytest.fixture(scope="module")
def browser(app):
    with chromium() as b:
        yield b


def snapshot(page) -> dict:
    """What the prompt area shows (the parts a reload must keep)."""
    return {"prompt": page.locator("#prompt-info").inner_text(), "media": page.locator("#media-info").inner_text(),
            "frame": frame_number(page).input_value(),
            "tool": page.locator("#tool input:checked").get_attribute("value") or "",
            "max_frames": page.locator("#max-frames input").input_value(),
            "run": page.locator("#run").is_disabled(),
            "mask_file": page.locator("#mask-upload").inner_text().count("mask.png")}


def sets_picture(page, button) -> None:
    """Press ``button`` (Edit / Apply) and wait until every file it made the page fetch (the editor's
    picture, the frame) has arrived and the page has been quiet for a moment: a stroke painted before the
    editor's new picture arrives is wiped with the old picture, as for any user."""
    pending, seen = set(), []

    def started(req):
        if "/file=" in req.url:
            pending.add(req)
            seen.append(req)

    def ended(req):
        pending.discard(req)

    page.on("request", started)
    page.on("requestfinished", ended)
    page.on("requestfailed", ended)
    try:
        button.click()
        quiet_since = None
        for _ in range(1200):  # 120 s at most
            page.wait_for_timeout(100)
            if seen and not pending:
                quiet_since = quiet_since or 0
                quiet_since += 1
                if quiet_since >= 8:
                    break
            else:
                quiet_since = None
        else:
            raise AssertionError("the page never fetched the editor's picture")
    finally:
        page.remove_listener("request", started)
        page.remove_listener("requestfinished", ended)
        page.remove_listener("requestfailed", ended)


def paint(page, fx: float) -> None:
    """One vertical stroke with whatever tool the editor has active (the test never picks one). ``fx`` is a
    fraction of the editor's width: keep it in 0.25..0.75, where the (letterboxed) picture is."""
    canvas = page.locator("#brush canvas").filter(visible=True).first
    canvas.wait_for()
    page.wait_for_timeout(800)
    bb = canvas.bounding_box()
    x0, y0 = bb["x"] + bb["width"] * fx, bb["y"] + bb["height"] * 0.3
    page.mouse.move(x0, y0)
    page.mouse.down()
    for i in range(1, 7):
        page.mouse.move(x0, y0 + bb["height"] * 0.06 * i, steps=3)
    page.mouse.up()


def strokes(page) -> int:
    m = re.search(r"(\d+) brush stroke", page.locator("#prompt-info").inner_text())
    return int(m.group(1)) if m else 0


def test_the_prompt_survives_reload_closed_tab_and_restart(app, browser, tmp_path):
    clip = make_clip(app.input / "walk.mp4", frames=20)
    mask = tmp_path / "mask.png"
    cv2.imwrite(str(mask), box_mask(0))
    ctx = browser.new_context(viewport=DESKTOP)
    page = ctx.new_page()
    page.goto(app.url)
    page.wait_for_selector("#upload")
    upload_video(page, clip)
    text_has(page, "#media-info", "20 frames")
    page.locator("#mask-upload input[type=file]").set_input_files(str(mask))
    text_has(page, "#prompt-info", "mask covers 10.4%")
    page.get_by_text("Brush: paint").click()
    sets_picture(page, page.get_by_role("button", name="Edit this frame's mask with the brush"))
    paint(page, 0.8)
    page.get_by_role("button", name="Apply brush to mask").click()
    text_has(page, "#prompt-info", "1 brush stroke")
    frame_number(page).fill("6")
    frame_number(page).press("Enter")
    text_has(page, "#prompt-info", "frame 6:")
    click_pixel(page, BOX["x0"] + 6 * BOX["speed"] + 20, BOX["y0"] + 20)
    text_has(page, "#prompt-info", "1 subject click")
    page.get_by_text("▭ box").click()
    page.get_by_text("Outputs and options").click()
    page.locator("#max-frames input").fill("15")
    page.locator("#max-frames input").press("Tab")
    text_has(page, "#prompt-info", "0 (anchor), 6 (keyframe)")
    page.wait_for_timeout(1500)  # the last change is saved by its own event
    before = snapshot(page)
    assert before["tool"] == "▭ box" and before["max_frames"] == "15" and before["frame"] == "6"
    shot(page, "1920-persist-01-before-reload")

    def same_prompt_again(p, step: str) -> None:
        p.goto(app.url)
        text_has(p, "#page-message", "restored: walk.mp4, frame 6")
        p.get_by_text("Outputs and options").click()  # Max frames is in there
        p.wait_for_function("() => document.querySelector('#frame-slider input[type=number]').value === '6'")
        p.wait_for_timeout(500)
        assert snapshot(p) == {**before, "mask_file": snapshot(p)["mask_file"]}, step
        shot(p, f"1920-persist-{step}")

    same_prompt_again(page, "02-reloaded")
    page.close()  # a closed tab
    page = ctx.new_page()
    same_prompt_again(page, "03-new-tab")
    page.close()
    app.restart()  # a pod restart: new process, same volume, same address
    page = ctx.new_page()
    same_prompt_again(page, "04-after-restart")
    # the restored prompt goes on working (Undo removes frame 6's click: this app has no SAM 2 weights for the
    # job to turn it into a mask) and is what Run sends: frame 0's mask + brush stroke, Max frames 15
    page.click("#undo")
    text_has(page, "#prompt-info", "frame 6: 0 subject click")
    page.wait_for_function("() => !(document.querySelector('#prompt-info')?.innerText || '').includes('keyframe')")
    page.wait_for_function("() => !document.querySelector('#run').disabled")
    page.click("#run")
    text_has(page, "#run-status", "completed", timeout=240_000)
    run = next(app.output.glob("walk_*"))
    cfg = (run / "config.yaml").read_text()
    assert "frame: 0" in cfg and "max_frames: 15" in cfg
    sent = cv2.imread(str(run / "prompt_mask.png"), cv2.IMREAD_GRAYSCALE) > 127
    assert (sent & (box_mask(0) > 0)).sum() == (box_mask(0) > 0).sum() and sent.mean() > 0.104 + 0.01

    # the video is gone: one line says so, and the page starts empty (the prompt is not put on another file)
    for f in app.input.rglob("walk*.mp4"):  # the upload's copy in input/uploads too
        f.unlink()
    page.reload()
    text_has(page, "#page-message", "walk.mp4 is no longer in the volume")
    text_has(page, "#media-info", "No video loaded")
    assert page.locator("#run").is_disabled() and str(app.root) not in page.locator("#page-message").inner_text()
    shot(page, "1920-persist-05-video-gone")
    ctx.close()


def visible_toasts(page, wait_first: bool = True) -> list[str]:
    """The toasts now on screen, once the first has come and a duplicate had time to follow."""
    if wait_first:
        page.wait_for_selector(".toast-body", timeout=30_000)
    page.wait_for_timeout(2000)
    texts = page.evaluate("() => [...document.querySelectorAll('.toast-body')].map(e => e.innerText)")
    page.evaluate("() => document.querySelectorAll('.toast-close').forEach(b => b.click())")
    page.wait_for_function("() => !document.querySelector('.toast-body')", timeout=10_000)
    return texts


def one_line(toast: str) -> str:
    """A toast's message: its text less the title ('Error', 'Warning') and the close button."""
    lines = [t for t in toast.split("\n") if t.strip() and t.strip() not in ("×", "Error", "Warning", "Info")]
    assert len(lines) == 1, toast
    return lines[0]


def test_each_refusal_is_one_toast_without_a_server_path(app, browser, tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", frames=20)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a video")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video either")
    bad_png = tmp_path / "bad.png"
    bad_png.write_bytes(b"not a png")
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.full((10, 10), 255, np.uint8))
    mask = tmp_path / "mask.png"
    cv2.imwrite(str(mask), box_mask(0))
    page = browser.new_context(viewport=PHONE).new_page()
    page.goto(app.url)
    page.wait_for_selector("#upload")
    seen = {}
    upload_video(page, notes)  # refused by the page itself (file types)
    seen["text file as video"] = visible_toasts(page)
    upload_video(page, broken)
    seen["broken video"] = visible_toasts(page)
    upload_video(page, clip)
    text_has(page, "#media-info", "20 frames")
    assert visible_toasts(page, wait_first=False) == []  # a good video: no toast
    for name, f in (("mask not a png", bad_png), ("mask of another size", small)):
        page.locator("#mask-upload input[type=file]").set_input_files(str(f))
        seen[name] = visible_toasts(page)
    page.locator("#mask-upload input[type=file]").set_input_files(str(mask))
    text_has(page, "#prompt-info", "mask covers 10.4%")
    page.get_by_text("Brush: paint").click()
    page.get_by_role("button", name="Apply brush to mask").click()  # nothing painted
    seen["empty brush"] = visible_toasts(page)
    for f in (app.input / "uploads").glob("clip*.mp4"):
        f.unlink()  # the video went away behind the page's back: Run is refused by the server
    page.click("#run")
    seen["run on a deleted video"] = visible_toasts(page)
    shot(page, "390-toasts-last")
    for what, toasts in seen.items():
        assert len(toasts) == 1, (what, toasts)
        line = one_line(toasts[0])
        assert str(app.root) not in line and "/tmp" not in line and "gradio" not in line.lower(), (what, line)
    assert "broken.mp4 cannot be used" in one_line(seen["broken video"][0])
    assert "does not exist any more" in one_line(seen["run on a deleted video"][0])


def test_the_brush_is_ready_without_picking_a_tool(app, browser, tmp_path):
    """Gradio's editor (6.31, no image sources) makes its Brush the active tool whenever the page sets its
    picture: Edit, paint, Apply, paint again, Edit again... never pressing a tool button."""
    clip = make_clip(tmp_path / "brush.mp4", frames=5)
    page = browser.new_context(viewport=DESKTOP).new_page()
    page.goto(app.url)
    upload_video(page, clip)
    text_has(page, "#media-info", "5 frames")
    page.get_by_text("Brush: paint").click()
    edit = page.get_by_role("button", name="Edit this frame's mask with the brush")
    apply = page.get_by_role("button", name="Apply brush to mask")
    # (where to paint, press Edit first, go to this frame first, strokes expected on the frame shown)
    steps = [(0.7, True, None, 1), (0.6, False, None, 2), (0.45, True, None, 3), (0.3, True, None, 4),
             (0.5, True, "2", 1), (0.65, False, None, 2)]
    for n, (fx, reopen, frame, expected) in enumerate(steps, start=1):
        if frame is not None:  # another frame: Edit sets its picture (one right after Apply's)
            frame_number(page).fill(frame)
            frame_number(page).press("Enter")
            text_has(page, "#prompt-info", f"frame {frame}:")
        if reopen:
            sets_picture(page, edit)  # also right after Apply, on the same picture
        highlighted = page.evaluate("() => [...document.querySelectorAll('#brush button.highlight')]"
                                    ".map(b => b.getAttribute('aria-label'))")
        assert highlighted == ["Brush"], highlighted
        paint(page, fx)
        sets_picture(page, apply)  # Apply sets the new picture (the stroke applied, the layer emptied)
        text_has(page, "#prompt-info", f"{expected} brush stroke", timeout=30_000)
        assert "nothing painted" not in page.locator("#page-message").inner_text()
    shot(page, "1920-brush-strokes")
