"""Preview in a real browser (issue 13): Debian's headless chromium driven by Playwright against the real app,
which runs MatAnyone (generated stand-in weights) on the CPU at low resolution for a second of video.

Upload a clip, go to frame 6, upload a mask for it, press Preview: the gallery shows the matte over frames
6, 9, 12 and 15 (the next second at 10 fps: MatAnyone on a CPU previews 1 s at <= 256 px), each the right
frame of the video; changing the prompt marks the preview stale; a new preview replaces it and Stop stops it;
the preview never appears in the Jobs tab. Screenshots go to test-artifacts/gradio-browser/.
"""

from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.app_harness import REPO, RunningApp, box_mask, chromium, make_clip, render_frame
from tests.test_app_browser import CHROMIUM, DESKTOP, PHONE, frame_number, text_has, upload_video

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ARTIFACTS = REPO / "test-artifacts" / "gradio-browser"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    from tests.matanyone_common import write_weights

    weights = write_weights(tmp_path_factory)  # skips without the MatAnyone reference data
    root = tmp_path_factory.mktemp("preview-browser")
    (root / "weights").mkdir()
    (root / "weights" / "matanyone").symlink_to(weights / "matanyone", target_is_directory=True)
    base = root / "base.yaml"
    base.write_text("engine: {name: matanyone, device: cpu, warmup: 3, erode: 0, dilate: 0}\n"
                    "outputs: {formats: [alpha, green]}\nprompt: {sam2_model: tiny}\n")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with RunningApp(root, {"MATTEPOD_CONFIG": str(base)}) as running:
        yield running


@pytest.fixture(scope="module")
def browser(app):
    with chromium() as b:
        yield b


def shows_frame(overlay: np.ndarray, alpha: np.ndarray, k: int) -> float:
    """How far ``overlay`` is from frame ``k`` of the clip with ``alpha`` drawn over it (mean abs difference)."""
    from app.preview import overlay_alpha

    return float(np.abs(overlay.astype(int) - overlay_alpha(render_frame(k), alpha).astype(int)).mean())


def test_preview_shows_the_matte_on_the_next_frames_and_goes_stale(app, browser, tmp_path):
    clip = make_clip(tmp_path / "walk.mp4", frames=40, fps=10)
    mask = tmp_path / "mask6.png"
    cv2.imwrite(str(mask), box_mask(6))
    page = browser.new_page(viewport=DESKTOP)
    page.goto(app.url)
    page.wait_for_selector("#upload")
    upload_video(page, clip)
    text_has(page, "#media-info", "40 frames")
    assert page.locator("#preview").is_disabled() and page.locator("#run").is_disabled()
    frame_number(page).fill("6")
    frame_number(page).press("Enter")
    text_has(page, "#prompt-info", "frame 6:")
    page.locator("#mask-upload input[type=file]").set_input_files(str(mask))
    text_has(page, "#prompt-info", "mask covers")
    page.wait_for_function("() => !document.querySelector('#preview').disabled")
    assert not page.locator("#run").is_disabled()  # Preview is enabled exactly when Run is
    run_bb, prev_bb = page.locator("#run").bounding_box(), page.locator("#preview").bounding_box()
    assert abs(run_bb["y"] - prev_bb["y"]) < 5 and prev_bb["y"] + prev_bb["height"] <= DESKTOP["height"]

    page.click("#preview")
    text_has(page, "#preview-status", "Preview", timeout=10_000)
    text_has(page, "#preview-status", "the matte on frames 6, 9, 12, 15", timeout=180_000)
    page.wait_for_function("() => { const imgs = [...document.querySelectorAll('#preview-gallery img')]; "
                           "return imgs.length === 4 && imgs.every(i => i.complete && i.naturalWidth > 0); }",
                           timeout=30_000)  # served and drawn, not only listed
    gallery_text = page.locator("#preview-gallery").inner_text()
    for k in (6, 9, 12, 15):
        assert f"frame {k}" in gallery_text, gallery_text
    page.screenshot(path=str(ARTIFACTS / "1920-07-preview.png"), full_page=True)
    page.set_viewport_size(PHONE)  # on a phone: two pictures a row, captions readable
    page.wait_for_timeout(500)
    page.locator("#preview-gallery").scroll_into_view_if_needed()
    widths = page.eval_on_selector_all("#preview-gallery img", "els => els.map(e => e.getBoundingClientRect().width)")
    assert min(widths) > 120, widths
    page.screenshot(path=str(ARTIFACTS / "390-04-preview.png"), full_page=True)
    page.set_viewport_size(DESKTOP)

    # each picture is that frame of the video under the matte the preview run wrote for it
    runs = list((app.output / ".previews").iterdir())
    assert len(runs) == 1
    run = runs[0]
    srcs = page.eval_on_selector_all("#preview-gallery img", "els => els.map(e => e.src)")
    for k in (6, 9, 12, 15):
        assert any(f"overlay_{k:06d}.png" in s for s in srcs), srcs
        overlay = cv2.cvtColor(cv2.imread(str(run / f"overlay_{k:06d}.png")), cv2.COLOR_BGR2RGB)
        alpha = cv2.imread(str(run / "previews" / f"alpha_{k - 6:06d}.png"), cv2.IMREAD_GRAYSCALE) / 255.0
        right, wrong = shows_frame(overlay, alpha, k), shows_frame(overlay, alpha, k + 4)
        assert right < 2.0 and wrong > 2 * right + 1.0, (k, right, wrong)
    cfg = run.joinpath("config.yaml").read_text()
    assert "name: matanyone" in cfg and "max_size: 256" in cfg and "max_frames: 10" in cfg

    # a changed prompt: the preview is marked stale (never shown as the current prompt's), Preview waits with Run
    page.click("#clear")
    text_has(page, "#preview-status", "Stale", timeout=15_000)
    page.wait_for_function("() => document.querySelector('#preview').disabled")
    page.wait_for_function("() => document.querySelector('#preview-gallery')?.classList.contains('stale')",
                           timeout=10_000)
    page.screenshot(path=str(ARTIFACTS / "1920-08-preview-stale.png"), full_page=True)

    # a new preview replaces the old one (stopped, its folder deleted); Stop stops it at a frame (a long
    # warm-up keeps it running until then, on any machine)
    page.get_by_text("Outputs and options").click()
    page.get_by_label("Warm-up").fill("1000")
    page.get_by_label("Warm-up").press("Tab")
    page.locator("#mask-upload input[type=file]").set_input_files(str(mask))
    page.wait_for_function("() => !document.querySelector('#preview').disabled")
    page.click("#preview")
    text_has(page, "#preview-status", "Previewing frames 6–15", timeout=30_000)
    assert not page.locator("#preview-gallery img").count() or not page.locator("#preview-gallery").is_visible()
    page.wait_for_selector("#preview-stop", state="visible")
    page.screenshot(path=str(ARTIFACTS / "1920-09-previewing.png"), full_page=True)
    page.click("#preview-stop")
    text_has(page, "#preview-status", "Preview stopped.", timeout=30_000)
    page.wait_for_selector("#preview-stop", state="hidden")
    assert not run.exists()  # the replaced preview's folder is gone
    (stopped,) = list((app.output / ".previews").iterdir())
    assert "warmup: 1000" in (stopped / "config.yaml").read_text()  # the page's options go to the preview

    # kept apart from the jobs: no row in the Jobs tab, no run folder among the real ones
    page.get_by_role("tab", name="Jobs").click()
    page.get_by_role("button", name="Refresh").click()
    page.wait_for_selector("#jobs-table")
    assert run.name not in page.locator("#jobs-table").inner_text()
    assert not list(app.output.glob("*/job.json"))  # the real jobs' folders (previews: .previews/*/job.json)
    page.close()
