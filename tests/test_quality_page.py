"""The Jobs detail shows a completed run's quality.json (the means as a table); runs without one show nothing."""

from __future__ import annotations

import json

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
