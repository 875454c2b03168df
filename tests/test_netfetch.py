"""SSRF-safe fetching (issue 12, defect 5) against real HTTP servers on 127.0.0.1: loopback is refused unless
the self-hosting switch allows it, every redirect is checked again, the error text is the same whatever the
network said, and every download and base64 payload has a size cap."""

from __future__ import annotations

import base64
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from mattepod import netfetch
from mattepod import serverless as sv
from mattepod.errors import InputNotFoundError, MaskError
from tests.batch_media import make_clip, make_mask


@contextmanager
def serve(files: dict[str, bytes], host: str = "127.0.0.1", redirects: dict[str, str] | None = None
          ) -> Iterator[str]:
    """A real HTTP server on ``host``: GET ``files[path]``, 302 for ``redirects[path]``, 404 otherwise."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if redirects and self.path in redirects:
                self.send_response(302)
                self.send_header("Location", redirects[self.path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = files.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer((host, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def _no_switch(monkeypatch):
    monkeypatch.delenv("MATTEPOD_ALLOW_PRIVATE_URLS", raising=False)


def test_loopback_is_refused_without_the_switch(tmp_path: Path, monkeypatch) -> None:
    with serve({"/v.mp4": b"x" * 100}) as base:
        with pytest.raises(netfetch.FetchError) as err:
            netfetch.fetch(f"{base}/v.mp4", tmp_path / "v.mp4", 1000, "video")
        assert "could not be fetched" in str(err.value)
        assert not (tmp_path / "v.mp4").exists()
        monkeypatch.setenv("MATTEPOD_ALLOW_PRIVATE_URLS", "1")
        assert netfetch.fetch(f"{base}/v.mp4", tmp_path / "v.mp4", 1000, "video").read_bytes() == b"x" * 100


@pytest.mark.parametrize("ip", ["127.0.0.1", "10.1.2.3", "192.168.0.1", "172.16.5.5", "169.254.169.254",
                                "::1", "fe80::1", "fc00::1", "0.0.0.0", "224.0.0.1", "::ffff:127.0.0.1",
                                "100.64.0.1"])
def test_private_addresses_are_not_public(ip: str) -> None:
    assert not netfetch.address_allowed(ip)


def test_public_addresses_are_allowed() -> None:
    assert netfetch.address_allowed("93.184.216.34") and netfetch.address_allowed("2606:4700::1111")


def test_a_redirect_is_checked_again(tmp_path: Path, monkeypatch) -> None:
    """Only 127.0.0.1 is allowed; its redirect to 127.0.0.2 (the same machine, another address) is refused."""
    monkeypatch.setenv("MATTEPOD_ALLOW_PRIVATE_URLS", "127.0.0.1/32")
    with serve({"/secret": b"internal"}, host="127.0.0.2") as inner:
        with serve({"/ok": b"fine"}, redirects={"/hop": f"{inner}/secret", "/file": "file:///etc/passwd"}) as base:
            assert netfetch.fetch(f"{base}/ok", tmp_path / "a", 100, "video").read_bytes() == b"fine"
            for path in ("/hop", "/file"):
                with pytest.raises(netfetch.FetchError, match="could not be fetched"):
                    netfetch.fetch(f"{base}{path}", tmp_path / "b", 100, "video")
            assert not (tmp_path / "b").exists()
            monkeypatch.setenv("MATTEPOD_ALLOW_PRIVATE_URLS", "127.0.0.0/8")
            assert netfetch.fetch(f"{base}/hop", tmp_path / "b", 100, "video").read_bytes() == b"internal"


def test_one_neutral_error_whatever_the_network_said(tmp_path: Path, monkeypatch) -> None:
    """Connection refused, HTTP 404, a refused address: the same text (the worker is no port scanner)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens here once the socket is closed
    texts = set()
    with serve({}) as base:
        texts.add(_error(f"{base}/nothere.mp4", tmp_path))  # refused address (switch off)
        monkeypatch.setenv("MATTEPOD_ALLOW_PRIVATE_URLS", "1")
        texts.add(_error(f"{base}/nothere.mp4", tmp_path))  # HTTP 404
    texts.add(_error(f"http://127.0.0.1:{closed}/x.mp4", tmp_path))  # connection refused
    texts.add(_error("http://nonexistent.invalid/x.mp4", tmp_path))  # no DNS answer
    assert len(texts) == 1, texts
    assert "404" not in texts.pop()


def _error(url: str, tmp_path: Path) -> str:
    with pytest.raises(InputNotFoundError) as err:
        netfetch.fetch(url, tmp_path / "x", 1000, "video")
    return str(err.value)


def test_size_caps_on_downloads_and_base64(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MATTEPOD_ALLOW_PRIVATE_URLS", "1")
    monkeypatch.setenv("MATTEPOD_MAX_MASK_MB", "0.01")  # about 10 kB
    big = b"\x89PNG" + b"\0" * 20000
    with serve({"/m.png": big}) as base:
        with pytest.raises(InputNotFoundError, match="over the"):
            sv.resolve_mask(f"{base}/m.png", tmp_path / "w")
    with pytest.raises(MaskError, match="over the"):
        sv.resolve_mask(base64.b64encode(big).decode(), tmp_path / "w")
    assert not (tmp_path / "w" / "prompt" / "mask.png").exists()


def test_a_job_with_a_loopback_video_url_is_refused(tmp_path: Path, monkeypatch) -> None:
    vol = tmp_path / "vol"
    make_mask(vol / "mask.png")
    clip = make_clip(tmp_path / "clip.mp4", frames=3)
    for k, v in {"RUNPOD_VOLUME_PATH": vol, "MATTEPOD_ALLOWED_ROOTS": vol, "OUTPUT_DIR": vol / "out"}.items():
        monkeypatch.setenv(k, str(v))
    inp = {"prompt": {"mask": "mask.png"}, "outputs": ["alpha"], "set": {"engine.name": "mask"}}
    with serve({"/c.mp4": clip.read_bytes()}) as base:
        out = sv.handler({"id": "s1", "input": {**inp, "video": f"{base}/c.mp4"}})
        assert out.get("error_type") == "InputNotFoundError" and "could not be fetched" in out["error"], out
        out = sv.handler({"id": "s2", "input": {**inp, "video": "in.mp4", "prompt": {"mask": f"{base}/m.png"}}})
        assert "error" in out, out


def test_a_bucket_endpoint_must_be_public(monkeypatch) -> None:
    for url in ("http://127.0.0.1:9000", "http://169.254.169.254/", "ftp://example.com"):
        with pytest.raises(InputNotFoundError):
            netfetch.check_url(url, "upload.bucket.endpoint_url")
    monkeypatch.setenv("MATTEPOD_ALLOW_PRIVATE_URLS", "127.0.0.0/8")
    assert netfetch.check_url("http://127.0.0.1:9000", "x") == "http://127.0.0.1:9000"
