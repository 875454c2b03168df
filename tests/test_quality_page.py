"""The Jobs detail shows a completed run's quality.json (the means as a table); runs without one show nothing."""

from __future__ import annotations

import json

import pytest

from app import handlers as h
from app.server import AppState
from mattepod import jobs


def _run(root, name, **files):
    run = root / "output" / name
    run.mkdir(parents=True)
    (run / "metadata.json").write_text(json.dumps({"status": "completed", "outputs": {}}))
    for fname, data in files.items():
        (run / fname.replace("_", ".")).write_text(json.dumps(data))
    return run


def test_job_detail_shows_quality(tmp_path):
    app = AppState(jobs.Roots(tmp_path / "input", tmp_path / "output", tmp_path / "weights"))
    try:
        report = {"frames": 24, "depth": "field", "gt": {"path": "/workspace/gt"},
                  "mean": {"mad": 3.25, "mse": 0.5, "grad": 0.75, "conn": 1.0, "dtssd": 2.5}}
        _run(tmp_path, "with_gt", quality_json=report)
        _run(tmp_path, "plain")
        line = h.job_view(app, "with_gt").line
        assert "**Quality**" in line and "| frames | MAD | MSE | Grad | Conn | dtSSD |" in line
        assert "| 24 | 3.2500 | 0.5000 | 0.7500 | 1.0000 | 2.5000 |" in line
        assert "Quality" not in h.job_view(app, "plain").line
    finally:
        app.manager.close(cancel_running=True)


@pytest.mark.browser
@pytest.mark.slow
def test_the_page_shows_quality_of_a_run_with_ground_truth(tmp_path):
    """A real `run --gt` (the moving square, its true masks as ground truth) in the app's output folder;
    Debian's headless chromium opens the Jobs tab and the job's detail shows the metrics table."""
    from pathlib import Path

    import cv2

    from tests.app_harness import RunningApp, box_mask, make_clip, write_mask
    from tests.conftest import run_cli

    chromium = "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    with RunningApp(tmp_path / "app") as app:
        clip = make_clip(app.input / "square.mp4", frames=12)
        mask = write_mask(tmp_path / "mask.png")
        gt = tmp_path / "gt"
        gt.mkdir()
        for n in range(12):
            cv2.imwrite(str(gt / f"{n:03d}.png"), box_mask(n))
        res = run_cli("run", "--input", str(clip), "--mask", str(mask), "--engine", "mask", "--outputs", "alpha16",
                      "--gt", str(gt), "--run-dir", str(app.output / "square_gt"), "-q")
        assert res.returncode == 0, res.stderr
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(app.url)
            page.get_by_role("tab", name="Jobs").click()
            page.wait_for_selector("#jobs-table")
            page.locator("#jobs-table").get_by_text("square_gt").filter(visible=True).first.click()
            page.wait_for_function("() => (document.querySelector('#job-detail')?.innerText || '').includes('dtSSD')",
                                   timeout=60_000)
            headers = page.locator("#job-detail table th").all_inner_texts()
            assert [t.strip() for t in headers] == ["frames", "MAD", "MSE", "Grad", "Conn", "dtSSD"]
            cells = page.locator("#job-detail table td").all_inner_texts()
            assert cells[0].strip() == "12"
            out = Path(__file__).resolve().parent.parent / "test-artifacts" / "quality"
            out.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out / "jobs-detail-quality.png"), full_page=True)
            browser.close()
