"""mattepod.serverless in-process: job input validation, fetching inputs (paths, base64, URLs with a size
limit), uploads to a presigned PUT URL, the per-worker engine pool, progress relay; split range planning."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from mattepod import serverless as sv
from mattepod import split as splitmod
from mattepod.errors import ConfigError, InputNotFoundError, MaskError
from tests.batch_media import make_clip, make_mask


class _Files(BaseHTTPRequestHandler):
    """Serves GET /<name> from ``files`` (``/nolength/...`` streams without Content-Length); stores PUTs."""

    files: dict[str, bytes] = {}
    puts: dict[str, bytes] = {}

    def do_GET(self) -> None:  # noqa: N802
        chunked = self.path.startswith("/nolength/")
        body = self.files.get(self.path.removeprefix("/nolength"))
        if body is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        if not chunked:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if chunked:
            self.close_connection = True

    def do_PUT(self) -> None:  # noqa: N802
        n = int(self.headers.get("Content-Length") or 0)
        self.puts[self.path] = self.rfile.read(n)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    _Files.files, _Files.puts = {}, {}
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Files
    server.shutdown()


@pytest.fixture
def volume(tmp_path: Path, monkeypatch) -> Path:
    vol = tmp_path / "volume"
    make_clip(vol / "in" / "clip.mp4", frames=12)
    make_mask(vol / "mask.png")
    monkeypatch.setenv("RUNPOD_VOLUME_PATH", str(vol))
    monkeypatch.setenv("MATTEPOD_ALLOWED_ROOTS", str(vol))
    monkeypatch.setenv("OUTPUT_DIR", str(vol / "out"))
    monkeypatch.delenv("RUNPOD_WEBHOOK_POST_OUTPUT", raising=False)
    monkeypatch.setenv("MATTEPOD_ALLOW_PRIVATE_URLS", "127.0.0.1/32")  # the test server (tests/test_netfetch.py)
    return vol


def job(inp, jid: str = "t1") -> dict:
    return {"id": jid, "input": inp}


MASKED = {"video": "in/clip.mp4", "prompt": {"mask": "mask.png"}, "set": {"engine.name": "mask"},
          "outputs": ["alpha"]}


@pytest.mark.parametrize("inp, kind, words", [
    ("not an object", "ConfigError", "JSON object"),
    ({"vidoe": "in/clip.mp4"}, "ConfigError", "vidoe: unknown key"),
    ({"prompt": {"auto_person": True}}, "ConfigError", "no video"),
    ({"video": "in/clip.mp4"}, "MaskError", "no prompt"),
    ({"video": "in/clip.mp4", "prompt": {"box": [1, 2, 3]}}, "ConfigError", "prompt.box"),
    ({"video": "in/missing.mp4", "prompt": {"auto_person": True}}, "InputNotFoundError", "not found"),
    ({"video": "/etc/hostname", "prompt": {"auto_person": True}}, "InputNotFoundError", "outside the allowed"),
    ({"video": "file:///etc/hostname", "prompt": {"auto_person": True}}, "InputNotFoundError", "http(s)"),
    ({**MASKED, "set": {"engine.name": "gpu"}}, "ConfigError", "engine.name"),
    ({"video": "in/clip.mp4", "prompt": {"mask": "mask.png"}, "config": {"outputs": {"formats": ["gif"]}}},
     "ConfigError", "outputs.formats"),
    ({**MASKED, "run_name": "../escape"}, "ConfigError", "run_name"),
    ({**MASKED, "upload": {"put_urls": {"alpha": "ftp://x/y"}}}, "ConfigError", "put_urls"),
    ({**MASKED, "split": {"ranges": 2}, "outputs": ["png"]}, "ConfigError", "image sequences"),
    ({"action": "join"}, "ConfigError", "join section"),
    ({**MASKED, "config": {"weights_dir": "/tmp"}}, "ConfigError", "weights_dir"),
    ({"video": "in/clip.mp4", "config": {"prompt": {"mask": "/etc/hostname"}}}, "InputNotFoundError",
     "prompt.mask /etc/hostname is outside"),
    ({**MASKED, "outputs": ["composite"], "config": {"outputs": {"background": "/etc/hostname"}}},
     "InputNotFoundError", "outputs.background"),
])
def test_bad_job_input_is_one_clear_error(volume: Path, inp, kind: str, words: str) -> None:
    out = sv.handler(job(inp))
    assert out["error_type"] == kind, out
    assert words in out["error"] and "\n" not in out["error"] and "->" in out["error"]
    assert out["exit_code"] == {"ConfigError": 2, "InputNotFoundError": 3, "MaskError": 5}[kind]


def test_run_job_reuses_the_engine_and_returns_outputs(volume: Path, monkeypatch) -> None:
    pool = sv.EnginePool()
    monkeypatch.setattr(sv, "ENGINES", pool)
    first = sv.handler(job(MASKED, "a"))
    assert first["status"] == "completed", first
    assert Path(first["outputs"]["alpha"]).is_file() and first["metadata"]["frames"] == {"total": 12, "done": 12}
    assert Path(first["run_dir"]) == volume / "out" / "clip_a"
    data = "data:image/png;base64," + base64.b64encode((volume / "mask.png").read_bytes()).decode()
    second = sv.handler(job({**MASKED, "prompt": {"mask": data}}, "b"))
    assert second["status"] == "completed", second
    assert pool.created == 1  # the second job borrowed the first job's engine
    again = sv.handler(job(MASKED, "a"))  # a retried job id finds its completed run folder
    assert again["outputs"] == first["outputs"] and pool.created == 1


def test_mask_base64_must_be_an_image(volume: Path) -> None:
    with pytest.raises(MaskError, match="not a PNG"):
        sv.resolve_mask("data:image/png;base64," + base64.b64encode(b"hello" * 40).decode(), volume / "w")


def test_url_video_download_and_size_limit(volume: Path, http, monkeypatch) -> None:
    base, files = http
    files.files["/clip.mp4"] = (volume / "in" / "clip.mp4").read_bytes()
    got = sv.download(f"{base}/clip.mp4", volume / "dl", 10 * sv.MB, "video")
    assert got.read_bytes() == files.files["/clip.mp4"]
    size = len(files.files["/clip.mp4"])
    with pytest.raises(InputNotFoundError, match="over the"):
        sv.download(f"{base}/clip.mp4", volume / "dl2", size - 1, "video")
    with pytest.raises(InputNotFoundError, match="exceeds"):  # no Content-Length: counted while streaming
        sv.download(f"{base}/nolength/clip.mp4", volume / "dl3", size - 1, "video")
    assert not list((volume / "dl3").iterdir())  # the partial file is removed
    with pytest.raises(InputNotFoundError, match="could not be fetched"):  # neutral: no HTTP code
        sv.download(f"{base}/nothere.mp4", volume / "dl4", sv.MB, "video")


def test_url_job_with_presigned_put_upload(volume: Path, http) -> None:
    base, files = http
    files.files["/v/clip.mp4"] = (volume / "in" / "clip.mp4").read_bytes()
    out = sv.handler(job({**MASKED, "video": f"{base}/v/clip.mp4",
                          "upload": {"put_urls": {"alpha": f"{base}/bucket/alpha.mp4?X-Sig=abc"}}}, "u"))
    assert out["status"] == "completed", out
    assert files.puts["/bucket/alpha.mp4?X-Sig=abc"] == Path(out["outputs"]["alpha"]).read_bytes()
    assert out["uploads"] == {"alpha": f"{base}/bucket/alpha.mp4"}  # the signature is not echoed back
    assert Path(out["run_dir"]).name == "clip_u"  # named after the URL; the download itself is video.mp4
    assert not (volume / "out" / ".jobs" / "u").exists()  # the downloaded input is gone after success
    bad = sv.handler(job({**MASKED, "upload": {"put_urls": {"green": f"{base}/g"}}}, "u2"))
    assert "not outputs of this job" in bad["error"]


def test_progress_relay_throttles_but_keeps_stage_changes() -> None:
    relay = sv.ProgressRelay({"id": "x"}, interval=3600)
    for n in range(1, 11):
        relay({"event": "progress", "stage": "matting", "frame": n, "total": 10, "fps": 5.0, "eta": 1})
    relay({"event": "progress", "stage": "joining", "frame": 10, "total": 10})
    relay({"event": "done", "status": "completed"})
    assert relay.sent == 3  # first matting update, the final frame, the stage change


@pytest.mark.parametrize("total, kw, want", [
    (100, {"ranges": 4}, [(0, 25), (25, 25), (50, 25), (75, 25)]),
    (10, {"ranges": 3}, [(0, 3), (3, 4), (7, 3)]),
    (2, {"ranges": 5}, [(0, 1), (1, 1)]),
    (95, {"segment_seconds": 3.0}, [(0, 30), (30, 30), (60, 35)]),  # a 5-frame tail joins the last range
])
def test_plan_ranges(total: int, kw: dict, want: list) -> None:
    got = splitmod.plan_ranges(total, 10.0, 0, min_frames=10, **kw)
    assert [(r.start_frame, r.frames) for r in got] == want
    assert sum(r.frames for r in got) == total and got[-1].end_time == total / 10.0


def test_plan_ranges_rejects_ambiguous_split() -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        splitmod.plan_ranges(10, 10.0, ranges=2, segment_seconds=1.0)
    with pytest.raises(ConfigError, match="exactly one"):
        splitmod.plan_ranges(10, 10.0)


def test_plan_offsets_by_start_frame() -> None:
    got = splitmod.plan_ranges(20, 10.0, first=30, ranges=2)
    assert [(r.start_frame, r.start_time) for r in got] == [(30, 3.0), (40, 4.0)]
    assert json.loads(json.dumps(splitmod.ranges_json(got)))[1]["end_time"] == 5.0


def test_storage_warnings_name_the_variable_to_set(volume: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MODEL_CACHE_DIR", str(volume / "weights"))
    assert sv.check_storage() == []
    monkeypatch.setenv("OUTPUT_DIR", str(tmp_path / "container-disk"))
    monkeypatch.setenv("MODEL_CACHE_DIR", "/workspace/weights")
    warnings = sv.check_storage()
    assert len(warnings) == 2 and "OUTPUT_DIR=" in warnings[0] and f"MODEL_CACHE_DIR={volume}" in warnings[1]
    monkeypatch.delenv("OUTPUT_DIR")
    assert sv.output_root() == volume / "output"


def test_paths_inside_config_resolve_on_the_volume(volume: Path) -> None:
    out = sv.handler(job({"video": "in/clip.mp4", "outputs": ["alpha"],
                          "config": {"prompt": {"mask": "mask.png"}, "engine": {"name": "mask"}}}, "cfgmask"))
    assert out["status"] == "completed", out
    used = yaml.safe_load((Path(out["run_dir"]) / "config.yaml").read_text())["prompt"]["mask"]
    assert used == str(volume / "mask.png")
