"""Fetching (and PUTting) the URLs a request names, without letting a job reach into the worker's network.

Why: a job's ``video``/``mask``/``put_urls`` are chosen by whoever holds the endpoint's API key. Fetched
naively they reach 127.0.0.1, the cloud metadata service (169.254.169.254) and the private network, and an
error text that tells "connection refused" from "HTTP 404" makes the worker a port scanner. So:

* only ``http``/``https``; redirects are followed by hand (at most 5), each one checked again;
* the address is checked *after* DNS resolution, on the very address the socket connects to (no second
  lookup that a rebinding DNS server could answer differently); private, loopback, link-local, multicast,
  reserved and unspecified addresses are refused unless ``MATTEPOD_ALLOW_PRIVATE_URLS`` allows them
  (``1`` = all, or a comma list of networks such as ``127.0.0.1/32,10.0.0.0/8``) for a self-hosted setup;
* every download has a size cap (Content-Length first, then counted while streaming to a ``.part`` file);
* every network failure is the same neutral :class:`FetchError` line; the detail goes to the worker's log.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import os
import socket
import ssl
from pathlib import Path
from typing import IO
from urllib.parse import urljoin, urlsplit

from mattepod import settings
from mattepod.errors import InputNotFoundError

log = logging.getLogger("mattepod.netfetch")

MAX_REDIRECTS = 5
CHUNK = 1 << 20


# A URL that could not be used is an input that cannot be found (exit 3, error_type InputNotFoundError, as
# before); the text never says why at the network level (see the module doc).
FetchError = InputNotFoundError


class _Blocked(OSError):
    pass


def neutral(what: str) -> FetchError:
    return FetchError(f"{what}: the URL could not be fetched",
                      "give a public http(s) URL that answers 200 (a presigned link may have expired), "
                      "or put the file on the volume and give its path")


def is_url(text: str) -> bool:
    return urlsplit(text).scheme.lower() in ("http", "https")


def _allowed_networks() -> tuple[bool, list[ipaddress._BaseNetwork]]:
    raw = (settings.get().allow_private_urls or "").strip()
    if raw.lower() in ("1", "true", "yes", "all"):
        return True, []
    if raw.lower() in ("", "0", "false", "no"):
        return False, []
    nets = []
    for part in raw.split(","):
        try:
            nets.append(ipaddress.ip_network(part.strip(), strict=False))
        except ValueError:
            log.warning("MATTEPOD_ALLOW_PRIVATE_URLS: %r is not a network; ignored", part)
    return False, nets


def address_allowed(ip: str) -> bool:
    """True for a public address, or one the self-hosting switch allows."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    if mapped is not None:
        addr = mapped
    allow_all, nets = _allowed_networks()
    if allow_all or any(addr in n for n in nets):
        return True
    return addr.is_global and not addr.is_multicast


def _checked_connect(address: tuple[str, int], timeout: float | None = None, source_address=None) -> socket.socket:
    """socket.create_connection, but each resolved address is checked before it is connected to."""
    host, port = address
    last: OSError | None = None
    for family, kind, proto, _name, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        if not address_allowed(sockaddr[0]):
            last = _Blocked(f"{host} resolves to {sockaddr[0]}, a non-public address")
            continue
        sock = socket.socket(family, kind, proto)
        try:
            if timeout is not None:
                sock.settimeout(timeout)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last or OSError(f"{host} did not resolve")


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise _Blocked(f"scheme {scheme!r} is not http(s)")
    if scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout, context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    conn._create_connection = _checked_connect  # type: ignore[attr-defined]
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return conn, path


def _open(method: str, url: str, what: str, timeout: float, body: IO[bytes] | None = None,
          headers: dict[str, str] | None = None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """The final response of ``method url`` after checked redirects (GET/HEAD only follow them)."""
    for _ in range(MAX_REDIRECTS + 1):
        try:
            conn, path = _connection(url, timeout)
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException, ValueError) as exc:
            log.warning("%s: %s %s failed: %s", what, method, _redact(url), exc)
            raise neutral(what) from None
        if resp.status in (301, 302, 303, 307, 308) and method in ("GET", "HEAD") and resp.getheader("Location"):
            url = urljoin(url, resp.getheader("Location"))
            conn.close()
            continue
        return conn, resp
    log.warning("%s: more than %d redirects from %s", what, MAX_REDIRECTS, _redact(url))
    raise neutral(what)


def _redact(url: str) -> str:
    """A URL for the log: no query string (presigned signatures) and no user info."""
    p = urlsplit(url)
    return f"{p.scheme}://{p.hostname or ''}{':' + str(p.port) if p.port else ''}{p.path}"


def fetch(url: str, dest: Path, limit: int, what: str, timeout: float = 60.0) -> Path:
    """Stream ``url`` into the file ``dest`` (named by the caller, never after the URL), at most ``limit``
    bytes; a partial file never stays behind."""
    if not is_url(url):
        raise FetchError(f"{what}: only http(s) URLs are fetched", "use https:// or a path on the volume")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    conn, resp = _open("GET", url, what, timeout)
    try:
        if resp.status != 200:
            log.warning("%s: HTTP %s from %s", what, resp.status, _redact(url))
            raise neutral(what)
        length = int(resp.getheader("Content-Length") or 0)
        if length > limit:
            raise FetchError(f"{what} is {length / settings.MB:.1f} MB, over the {limit / settings.MB:.0f} MB limit",
                             "put it on the network volume and pass its path, or raise the limit")
        got = 0
        with open(part, "wb") as f:
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    log.warning("%s: reading %s failed: %s", what, _redact(url), exc)
                    raise neutral(what) from None
                if not chunk:
                    break
                got += len(chunk)
                if got > limit:
                    raise FetchError(f"{what} exceeds the {limit / settings.MB:.0f} MB download limit",
                                     "put it on the network volume and pass its path, or raise the limit")
                f.write(chunk)
        os.replace(part, dest)
    finally:
        conn.close()
        part.unlink(missing_ok=True)
    return dest


def check_url(url: str, what: str) -> str:
    """``url`` if it is http(s) and every address its host resolves to is allowed; for clients we do not drive
    ourselves (boto3 for ``upload.bucket``), so at least the endpoint a job names is not an internal one."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise FetchError(f"{what}: only http(s) URLs are used", "give an https:// endpoint")
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, type=socket.SOCK_STREAM)
    except OSError as exc:
        log.warning("%s: %s does not resolve: %s", what, parts.hostname, exc)
        raise neutral(what) from None
    if not infos or not all(address_allowed(i[4][0]) for i in infos):
        log.warning("%s: %s resolves to a non-public address", what, parts.hostname)
        raise neutral(what)
    return url


def put(url: str, path: Path, what: str, timeout: float = 600.0) -> int:
    """PUT the file at ``path`` to ``url`` (a presigned upload URL); the HTTP status, or a neutral error."""
    if not is_url(url):
        raise FetchError(f"{what}: only http(s) URLs are used", "give an https:// presigned PUT URL")
    size = path.stat().st_size
    with open(path, "rb") as f:
        conn, resp = _open("PUT", url, what, timeout, body=f, headers={"Content-Length": str(size)})
    try:
        resp.read()
        return resp.status
    finally:
        conn.close()
