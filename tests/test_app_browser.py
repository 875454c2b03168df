"""End to end in a real browser: Debian's headless chromium driven by Playwright against the real app.

Upload a generated clip, move to another prompt frame, click on the subject (SAM 2.1 tiny with seeded random
test weights, loaded in the app process), run a real job (`engine.name: mask`, which carries the prompt mask),
wait for completion, download the alpha and check it against the SAM mask the app saved for the job. A screenshot of each
step goes to test-artifacts/ (gitignored) for a person to look at.
"""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.app_harness import BOX, REPO, RunningApp, make_clip
from tests.weightgen import make_sam2_weights

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
ARTIFACTS = REPO / "test-artifacts" / "gradio-browser"
# Page coordinates of an image pixel, the way Gradio maps clicks back (object-fit contain / scale-down).
PIXEL_TO_PAGE = """([x, y]) => { const img = document.querySelector('#frame img'); const r = img.getBoundingClientRect();
  let s = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
  if (getComputedStyle(img).objectFit === 'scale-down') s = Math.min(1, s);
  return [r.left + (r.width - img.naturalWidth * s) / 2 + (x + 0.5) * s,
          r.top + (r.height - img.naturalHeight * s) / 2 + (y + 0.5) * s]; }"""


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    root = tmp_path_factory.mktemp("browser")
    base = root / "base.yaml"
    base.write_text("engine: {name: mask, erode: 0, dilate: 0, device: cpu}\n"
                    "outputs: {formats: [alpha, green], previews: 2}\nprompt: {sam2_model: tiny}\n")
    make_sam2_weights(root / "weights", "tiny")
    running = RunningApp(root, {"MATTEPOD_CONFIG": str(base)})
    yield running
    running.stop()


def text_has(page, selector: str, needle: str, timeout: float = 30_000) -> None:
    page.wait_for_function("([s, n]) => (document.querySelector(s)?.innerText || '').includes(n)",
                           arg=[selector, needle], timeout=timeout)


def test_upload_click_run_download(app, tmp_path):
    from playwright.sync_api import sync_playwright

    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    clip = make_clip(tmp_path / "walk.mp4", frames=20)
    shots = iter(range(1, 100))

    def shot(page, name):
        page.screenshot(path=str(ARTIFACTS / f"{next(shots):02d}-{name}.png"), full_page=True)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1500}, accept_downloads=True)
        page.goto(app.url)
        page.wait_for_selector("#upload input[type=file]", state="attached")
        shot(page, "page")

        page.locator("#upload input[type=file]").set_input_files(str(clip))
        text_has(page, "#media-info", "20 frames")
        page.wait_for_selector("#frame img")
        shot(page, "video-loaded")

        # pick a later prompt frame on the slider: the frame is decoded with one seek and shown
        track = page.locator("#frame-slider input[type=range]")
        box = track.bounding_box()
        old_src = page.locator("#frame img").get_attribute("src")
        page.mouse.click(box["x"] + box["width"] * 0.55, box["y"] + box["height"] / 2)
        page.wait_for_function("s => document.querySelector('#frame img')?.src !== s", arg=old_src, timeout=30_000)
        k = int(page.locator("#frame-slider input[type=number]").input_value())
        assert 5 <= k <= 15, k
        shot(page, f"frame-{k}")

        x = BOX["x0"] + k * BOX["speed"] + BOX["size"] // 2
        y = BOX["y0"] + BOX["size"] // 2
        page.mouse.click(*page.evaluate(PIXEL_TO_PAGE, [x, y]))
        text_has(page, "#prompt-info", "1 subject click", timeout=120_000)
        text_has(page, "#prompt-info", "mask covers")  # SAM 2 answered in the app process
        shot(page, "clicked-subject-sam2-mask")

        page.click("#run")
        text_has(page, "#run-status", "completed", timeout=180_000)
        page.wait_for_selector("#downloads a[download$='_alpha.mp4']")
        shot(page, "completed")

        with page.expect_download() as info:
            page.locator("#downloads a[download$='_alpha.mp4']").click()
        alpha_path = ARTIFACTS / info.value.suggested_filename
        info.value.save_as(alpha_path)

        page.get_by_role("tab", name="Jobs").click()
        page.wait_for_selector("#jobs-table")
        text_has(page, "#jobs-table", "completed")
        page.locator("#jobs-table").get_by_text("walk_").filter(visible=True).first.click()
        text_has(page, "#job-detail", "completed")
        page.wait_for_selector("#job-files a[download$='_alpha.mp4']")
        shot(page, "jobs-tab")
        browser.close()

    run = next(app.output.glob("walk_*"))
    cfg = (run / "config.yaml").read_text()
    assert f"frame: {k}" in cfg and "prompt_mask.png" in cfg
    assert json.loads((run / "metadata.json").read_text())["status"] == "completed"
    sam_mask = cv2.imread(str(run / "prompt_mask.png"), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255
    assert 0.001 < (sam_mask > 0.5).mean() < 0.999
    cap = cv2.VideoCapture(str(alpha_path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f[..., 0].astype(np.float32) / 255)
    assert len(frames) == 20
    # the mask engine carries the prompt mask: the downloaded alpha of frame k is the SAM mask of the click
    agree = ((frames[k] > 0.5) == (sam_mask > 0.5)).mean()
    assert agree > 0.97, agree
