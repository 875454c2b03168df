"""FAKE Hugging Face hub for tests: serves generated weight files on 127.0.0.1 the way the real hub does.

Only the parts ``huggingface_hub`` (2.x) touches when it downloads one file are imitated:

* ``HEAD|GET /{repo_id}/resolve/{revision}/{filename}``: ``X-Repo-Commit`` always; for a small (non-LFS) file a
  200 with ``ETag`` = the git blob sha1 and ``Content-Length``; for an LFS file a 302 to a "CDN" on another host
  name (``localhost`` instead of ``127.0.0.1``, so the client drops the token like it does for the real CDN) with
  ``ETag`` and ``X-Linked-Etag`` = the file's sha256 and ``X-Linked-Size``. Errors carry ``X-Error-Code``
  (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo) like the hub's.
* ``GET /cdn/{sha256}``: the bytes, with ``Range`` support (huggingface_hub resumes ``.incomplete`` files).

Knobs for failure tests: ``fail_next`` (answer 503 that many times), ``corrupt_next`` (serve flipped bytes that
many times), ``chunk_delay`` (seconds between 64 KiB chunks, to make concurrent downloads overlap),
``token`` (require ``Authorization: Bearer <token>`` on resolve). Every request is appended to ``requests``.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LFS_THRESHOLD = 1024  # bytes; the real hub stores large and binary files in LFS/Xet


def closed_endpoint() -> str:
    """A loopback URL nothing listens on: an unreachable hub (connection refused at once)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    commit: str = field(default_factory=lambda: hashlib.sha1(str(time.time_ns()).encode()).hexdigest())
    gated: bool = False


@dataclass
class Request:
    method: str
    path: str
    authorization: str | None


class FakeHub:
    """A threaded HTTP server; use as a context manager. ``endpoint`` is the HF_ENDPOINT value."""

    def __init__(self, repos: dict[str, FakeRepo]):
        self.repos = repos
        self.requests: list[Request] = []
        self.fail_next = 0
        self.corrupt_next = 0
        self.chunk_delay = 0.0
        self.token: str | None = None
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def count(self, prefix: str = "/", method: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.path.startswith(prefix) and (method is None or r.method == method))

    def blob(self, sha: str) -> bytes | None:
        for repo in self.repos.values():
            for data in repo.files.values():
                if hashlib.sha256(data).hexdigest() == sha:
                    return data
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _send(self, status: int, headers: dict[str, str], data: bytes = b"", body: bool = True) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body and data:
                    view = memoryview(data)
                    for i in range(0, len(view), 65536):
                        if hub.chunk_delay:
                            time.sleep(hub.chunk_delay)
                        try:
                            self.wfile.write(view[i:i + 65536])
                        except (BrokenPipeError, ConnectionResetError):
                            return

            def _error(self, status: int, code: str, body: bool, extra: dict[str, str] | None = None) -> None:
                msg = f'{{"error": "{code}"}}'.encode()
                self._send(status, {"X-Error-Code": code, "Content-Type": "application/json", **(extra or {})},
                           msg, body)

            def _serve(self, body: bool) -> None:
                with hub._lock:
                    hub.requests.append(Request(self.command, self.path, self.headers.get("Authorization")))
                    failing = hub.fail_next > 0
                    if failing:
                        hub.fail_next -= 1
                if failing:
                    return self._error(503, "ServiceUnavailable", body)
                path = self.path.split("?", 1)[0]
                if path.startswith("/cdn/"):
                    return self._cdn(path[len("/cdn/"):], body)
                m = re.fullmatch(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", path)
                if not m:
                    return self._error(404, "NotFound", body)
                repo = hub.repos.get(m["repo"])
                if repo is None:
                    return self._error(401, "RepoNotFound", body)
                if repo.gated or hub.token:
                    if self.headers.get("Authorization") != f"Bearer {hub.token}":
                        return self._error(403 if repo.gated else 401, "GatedRepo" if repo.gated else "RepoNotFound",
                                           body)
                if m["rev"] not in ("main", repo.commit):
                    return self._error(404, "RevisionNotFound", body)
                data = repo.files.get(m["file"])
                if data is None:
                    return self._error(404, "EntryNotFound", body, {"X-Repo-Commit": repo.commit})
                if len(data) < LFS_THRESHOLD:
                    return self._send(200, {"X-Repo-Commit": repo.commit, "ETag": f'"{git_blob_sha1(data)}"',
                                            "Content-Type": "application/octet-stream"},
                                      self._maybe_corrupt(data) if body else data, body)
                sha = hashlib.sha256(data).hexdigest()
                location = f"http://localhost:{hub.port}/cdn/{sha}?repo={m['repo']}"
                self._send(302, {"X-Repo-Commit": repo.commit, "ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"',
                                 "X-Linked-Size": str(len(data)), "Location": location}, b"", body)

            def _maybe_corrupt(self, data: bytes) -> bytes:
                with hub._lock:
                    if hub.corrupt_next <= 0:
                        return data
                    hub.corrupt_next -= 1
                return bytes(b ^ 0xFF for b in data[:16]) + data[16:]

            def _cdn(self, sha: str, body: bool) -> None:
                data = hub.blob(sha)
                if data is None:
                    return self._error(404, "NotFound", body)
                if body:
                    data = self._maybe_corrupt(data)
                rng = self.headers.get("Range")
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
                if m:
                    start = int(m[1])
                    end = int(m[2]) if m[2] else len(data) - 1
                    part = data[start:end + 1]
                    return self._send(206, {"Content-Range": f"bytes {start}-{end}/{len(data)}",
                                            "Content-Type": "application/octet-stream", "ETag": f'"{sha}"'},
                                      part, body)
                self._send(200, {"Content-Type": "application/octet-stream", "ETag": f'"{sha}"'}, data, body)

        return Handler
