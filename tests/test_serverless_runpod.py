"""The worker through the real runpod SDK: ``--test_input`` (one local job, progress posted to a local
webhook) and ``--rp_serve_api`` (the SDK's local API server on 127.0.0.1) driving a split -> ranges -> join.

Engine ``mask`` (no weights), clips generated with ffmpeg.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mattepod import split as splitmod
from tests.batch_media import make_clip, make_mask

ROOT = Path(__file__).resolve().parents[1]


class _Webhook(BaseHTTPRequestHandler):
    """Stands where RunPod's job-output webhook would be: records every POST body."""

    posts: list[tuple[str, dict]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.posts.append((self.path, json.loads(body)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    vol = tmp_path / "volume"
    make_clip(vol / "in" / "clip.mp4", frames=30)
    make_mask(vol / "mask.png")
    return vol


def worker_env(vol: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "MATTEPOD_"))}
    env.update(PYTHONPATH=str(ROOT), RUNPOD_VOLUME_PATH=str(vol), MATTEPOD_ALLOWED_ROOTS=str(vol),
               OUTPUT_DIR=str(vol / "out"), PYTHONUNBUFFERED="1", **extra)
    return env


JOB = {"video": "in/clip.mp4", "prompt": {"mask": "mask.png"}, "outputs": ["alpha", "green"],
       "config": {"engine": {"name": "mask"}}, "run_name": "local"}


def test_test_input_mode_runs_the_job_and_posts_progress(volume: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Webhook)
    _Webhook.posts = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{server.server_address[1]}/job-done?id=$ID"
    try:
        res = subprocess.run([sys.executable, "-m", "mattepod.serverless", "--test_input",
                              json.dumps({"id": "job-42", "input": JOB})],
                             env=worker_env(volume, RUNPOD_WEBHOOK_POST_OUTPUT=hook, MATTEPOD_PROGRESS_INTERVAL="0"),
                             capture_output=True, text=True, timeout=120, cwd=volume)
    finally:
        server.shutdown()
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-3000:]
    assert "Job job-42 completed successfully" in log
    run = volume / "out" / "local"
    result = json.loads((run / "serverless_result.json").read_text())
    assert result["status"] == "completed"
    assert set(result["outputs"]) == {"alpha", "green"} and all(Path(p).is_file() for p in result["outputs"].values())
    assert result["metadata"]["frames"] == {"total": 30, "done": 30}
    progress = [body for path, body in _Webhook.posts if body.get("status") == "IN_PROGRESS"]
    assert progress, f"no progress reached the webhook: {_Webhook.posts}"
    assert all(path.startswith("/job-done?id=job-42") for path, _ in _Webhook.posts)
    assert {"stage", "frame", "total", "percent"} <= set(progress[0]["output"]) and progress[0]["output"]["total"] == 30


def test_test_input_mode_reports_a_bad_job(volume: Path) -> None:
    bad = {**JOB, "video": "in/nothere.mp4"}
    res = subprocess.run([sys.executable, "-m", "mattepod.serverless", "--test_input", json.dumps({"input": bad})],
                         env=worker_env(volume), capture_output=True, text=True, timeout=120, cwd=volume)
    assert res.returncode == 1
    assert "video in/nothere.mp4 not found" in res.stdout + res.stderr


def _post(url: str, payload: dict, timeout: float = 120) -> dict:
    req = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _packet_sizes(path: Path) -> list[int]:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=size",
                          "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True).stdout
    return [int(x) for x in out.split()]


def test_api_server_split_ranges_and_join(volume: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mattepod.serverless", "--rp_serve_api", "--rp_api_host",
                             "127.0.0.1", "--rp_api_port", str(port)], env=worker_env(volume),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=volume)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(150):
            try:
                urllib.request.urlopen(base + "/docs", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(proc.stdout.read())
                time.sleep(0.2)

        def submit(inp: dict) -> dict:
            reply = _post(base + "/runsync", {"input": inp})
            return reply.get("output") or {"status": reply.get("status"), "error": reply.get("error")}

        bad = _post(base + "/runsync", {"input": {**JOB, "split": {"ranges": 0}}})
        assert bad["status"] == "FAILED" and "split.ranges" in bad["error"]

        job = {**JOB, "run_name": "long", "prompt": {"mask": "mask.png", "frame": 12}, "split": {"ranges": 3}}
        out = splitmod.run_split(submit, job, parallel=2)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    plan = out["plan"]
    assert [(r["start_frame"], r["frames"]) for r in plan["ranges"]] == [(0, 10), (10, 10), (20, 10)]
    assert plan["prompts"]["method"] == "quick_pass" and plan["prompts"]["prompt_range"] == 1
    assert plan["jobs"][1]["config"]["prompt"]["frame"] == 2  # the user's prompt, range-relative
    assert plan["jobs"][0]["config"]["prompt"]["mask"].endswith("range_000.png")
    assert [r["status"] for r in out["ranges"]] == ["completed"] * 3
    joined = out["join"]
    assert joined["status"] == "completed", joined
    assert joined["metadata"]["frames"]["total"] == 30
    for fmt in ("alpha", "green"):
        segs = [Path(r["outputs"][fmt]) for r in out["ranges"]]
        sizes = _packet_sizes(Path(joined["outputs"][fmt]))
        assert len(sizes) == 30
        assert sizes == [s for seg in segs for s in _packet_sizes(seg)]  # stream copy: the very same packets
