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

from tests.app_harness import BOX, REPO, RunningApp, box_mask, make_clip, make_long_clip
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
    with RunningApp(root, {"MATTEPOD_CONFIG": str(base)}) as running:
        yield running


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


def test_brush_then_cancel_a_running_job(app, tmp_path):
    """Paint on the mask with the brush, run a long job, press Cancel: the job's process group is gone."""
    import subprocess

    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    clip = make_long_clip(tmp_path / "long.mp4")
    mask = tmp_path / "mask.png"
    cv2.imwrite(str(mask), box_mask(0))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1500})
        page.goto(app.url)
        page.locator("#upload input[type=file]").set_input_files(str(clip))
        text_has(page, "#media-info", "3000 frames")
        page.locator("#mask-upload input[type=file]").set_input_files(str(mask))
        text_has(page, "#prompt-info", "mask covers 10.4%")

        page.get_by_text("Brush: paint").click()
        page.get_by_role("button", name="Edit this mask with the brush").click()
        canvas = page.locator("#brush canvas").filter(visible=True).first
        canvas.wait_for()
        page.wait_for_timeout(1000)
        bb = canvas.bounding_box()
        x0, y0 = bb["x"] + bb["width"] * 0.75, bb["y"] + bb["height"] * 0.3
        page.mouse.move(x0, y0)
        page.mouse.down()
        for i in range(1, 9):
            page.mouse.move(x0, y0 + bb["height"] * 0.05 * i)
        page.mouse.up()
        shot = ARTIFACTS / "brush-1-painted.png"
        page.screenshot(path=str(shot), full_page=True)
        page.get_by_role("button", name="Apply brush to mask").click()
        page.wait_for_function("() => !document.querySelector('#prompt-info').innerText.includes('10.4%')",
                               timeout=30_000)
        covered = float(page.locator("#prompt-info").inner_text().split("covers ")[1].split("%")[0])
        assert covered > 12, covered  # the green stroke was added to the mask
        page.screenshot(path=str(ARTIFACTS / "brush-2-applied.png"), full_page=True)

        page.click("#run")
        page.wait_for_function("() => /matting \\d+\\/3000/.test(document.body.innerText)", timeout=120_000)
        page.screenshot(path=str(ARTIFACTS / "cancel-1-running.png"), full_page=True)
        page.click("#cancel")
        text_has(page, "#run-status", "cancelled", timeout=60_000)
        # the Run handler notices the end too and replaces its progress bars with the (empty) results
        page.wait_for_function("() => !/matting \\d+\\/3000/.test(document.body.innerText)", timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "cancel-2-cancelled.png"), full_page=True)
        browser.close()

    run = next(app.output.glob("long_*"))
    job = json.loads((run / "job.json").read_text())
    assert job["status"] == "cancelled"
    groups = subprocess.run(["ps", "-eo", "pgid=,stat="], capture_output=True, text=True).stdout.split("\n")
    alive = {int(line.split()[0]) for line in groups if line.strip() and "Z" not in line.split()[1]}
    assert job["pid"] not in alive, "the cancelled job's process group is still running"
    assert not any(run.glob("long_alpha.mp4")), "a cancelled run must not present a finished output"
    saved = cv2.imread(str(run / "prompt_mask.png"), cv2.IMREAD_GRAYSCALE)
    assert (saved > 127).mean() * 100 == pytest.approx(covered, abs=0.2)  # the brushed mask went to the job
    assert saved[BOX["y0"] + 5, BOX["x0"] + 5] > 127  # and the uploaded square is still in it
