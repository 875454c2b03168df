"""Fetch the weights named in the manifest into the weights volume, verified, once, safely in parallel.

Why this is more than ``hf_hub_download``: the container restarts often on RunPod and several pods may share one
network volume, so setup must (1) make no network request at all when the files are already there and verified,
(2) let exactly one container download while the others wait, (3) replace corrupt or partial files, (4) retry a
flaky hub with back-off, and (5) stop loudly with a WeightsError instead of starting the app without weights.

Verification: the expected sha256 is the manifest's pin when it has one, else the hub's own LFS object id (the
``X-Linked-Etag`` of ``HEAD /{repo}/resolve/{revision}/{file}``; for small non-LFS files the etag is the git blob
sha1, which is checked the same way). After a download verifies, its sha256, size, mtime and the hub's commit are
recorded in ``<weights_dir>/<model>/.mattepod-verified.json``; later runs check the files against that record
without the network (hashing only files whose size or mtime changed, or every file with MATTEPOD_VERIFY=full).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mattepod.errors import DiskFullError, MattePodError, WeightsError
from mattepod.weights import Model, WeightFile, load_manifest, model_dir, select

RECORD_NAME = ".mattepod-verified.json"
LOCK_DIR = ".locks"
_HEX = "0123456789abcdef"

Log = Callable[[str], None]


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass
class Settings:
    """Everything that steers a setup run; ``from_env`` reads the variables documented in .env.example."""

    weights_dir: Path
    endpoint: str | None = None  # HF_ENDPOINT (from_env: https://huggingface.co when unset or empty)
    token: str | None = None  # HF_TOKEN
    offline: bool = False  # HF_HUB_OFFLINE
    retries: int = 4  # MATTEPOD_DOWNLOAD_RETRIES: extra tries after the first
    backoff: float = 2.0  # MATTEPOD_DOWNLOAD_BACKOFF: first wait in seconds, doubled each retry (max 60)
    lock_timeout: float = 3600.0  # MATTEPOD_LOCK_TIMEOUT: how long to wait for another container's download
    verify: str = "stamp"  # MATTEPOD_VERIFY: stamp (hash only changed files) | full (hash every file)
    timeout: float = 10.0  # seconds for the metadata request (HF_HUB_ETAG_TIMEOUT)

    @classmethod
    def from_env(cls, weights_dir: str | Path | None = None, env: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)

        def num(name: str, default: float) -> float:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = float(raw)
            except ValueError:
                raise WeightsError(f"{name}={raw!r} is not a number", f"set {name} to a number or unset it") from None
            if value < 0:
                raise WeightsError(f"{name}={raw!r} is negative", f"set {name} to 0 or more")
            return value

        verify = env.get("MATTEPOD_VERIFY", "stamp").strip() or "stamp"
        if verify not in {"stamp", "full"}:
            raise WeightsError(f"MATTEPOD_VERIFY={verify!r} is not stamp or full", "set MATTEPOD_VERIFY=stamp or full")
        return cls(
            weights_dir=Path(weights_dir or env.get("MODEL_CACHE_DIR") or "weights"),
            # explicit default: huggingface_hub reads an empty HF_ENDPOINT as "" at import time
            endpoint=(env.get("HF_ENDPOINT") or "").rstrip("/") or "https://huggingface.co",
            token=env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN") or None,
            offline=_truthy(env.get("HF_HUB_OFFLINE")),
            retries=int(num("MATTEPOD_DOWNLOAD_RETRIES", 4)),
            backoff=num("MATTEPOD_DOWNLOAD_BACKOFF", 2.0),
            lock_timeout=num("MATTEPOD_LOCK_TIMEOUT", 3600.0),
            verify=verify,
            timeout=num("HF_HUB_ETAG_TIMEOUT", 10.0),
        )


@dataclass
class FileResult:
    model: str
    filename: str
    path: Path
    status: str  # verified (already there) | downloaded | unverified (present, no hash known, hub unreachable)
    sha256: str | None
    size: int
    seconds: float = 0.0


# --------------------------------------------------------------------------------------------------- hashing


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def git_blob_sha1_file(path: Path, chunk: int = 8 << 20) -> str:
    """The git object id of a file: what the hub reports as the etag of a small (non-LFS) file."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _is_hex(value: str, length: int) -> bool:
    return len(value) == length and all(c in _HEX for c in value)


# --------------------------------------------------------------------------------------------------- record


def _record_path(folder: Path) -> Path:
    return folder / RECORD_NAME


def read_record(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads(_record_path(folder).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_record(folder: Path, record: dict[str, Any]) -> None:
    tmp = folder / f"{RECORD_NAME}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, _record_path(folder))


def _record_entry(record: dict[str, Any], model: Model, filename: str) -> dict[str, Any] | None:
    """The recorded verification of ``filename``, if it was made for this repo and revision."""
    if record.get("repo_id") != model.repo_id or record.get("revision") != model.revision:
        return None
    entry = record.get("files", {}).get(filename)
    return entry if isinstance(entry, dict) else None


# --------------------------------------------------------------------------------------------------- local check


def check_local(model: Model, wf: WeightFile, folder: Path, record: dict[str, Any], verify: str = "stamp"
                ) -> tuple[bool, str, str | None]:
    """(ok, reason, sha256) for the file on disk, without any network request."""
    path = folder / wf.filename
    try:
        st = path.stat()
    except FileNotFoundError:
        return False, "missing", None
    entry = _record_entry(record, model, wf.filename)
    expected = wf.sha256 or (entry or {}).get("sha256")
    expected_size = wf.size if wf.size is not None else (entry or {}).get("size")
    if expected is None:
        return False, "present but never verified", None
    if expected_size is not None and st.st_size != expected_size:
        return False, f"size {st.st_size} != {expected_size} (partial or corrupt)", None
    if (verify == "stamp" and entry and entry.get("sha256") == expected
            and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns):
        return True, "verified (record)", expected
    actual = sha256_file(path)
    if actual != expected:
        return False, f"sha256 {actual[:12]}... != {expected[:12]}... (corrupt)", actual
    return True, "verified (hashed)", expected


# --------------------------------------------------------------------------------------------------- lock


@contextlib.contextmanager
def model_lock(weights_dir: Path, name: str, timeout: float, log: Log) -> Iterator[None]:
    """An exclusive lock on ``<weights_dir>/.locks/<name>.lock`` shared by every container on the volume.

    ``flock`` where the filesystem supports it (the kernel drops it when a container dies); on a network volume
    without it, an atomically created ``<name>.lock.d`` folder, taken over once older than ``timeout``.
    """
    lock_dir = weights_dir / LOCK_DIR
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / f"{name}.lock"
    deadline = time.monotonic() + timeout
    told = False

    def wait(holder: Path) -> None:
        nonlocal told
        if not told:
            log(f"{name}: another process is fetching it (lock {holder}); waiting")
            told = True
        if time.monotonic() > deadline:
            raise WeightsError(f"{name}: lock {holder} still held after {timeout:.0f}s",
                               "another container is stuck downloading; stop it, or raise MATTEPOD_LOCK_TIMEOUT")
        time.sleep(0.2)

    owner = f"pid {os.getpid()} host {os.uname().nodename}\n"
    with open(path, "a+") as handle:
        use_flock = True
        while use_flock:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                wait(path)
            except OSError as exc:  # ENOLCK/EOPNOTSUPP: some network filesystems have no flock
                log(f"{name}: file locks unsupported on {lock_dir} ({exc.strerror}); using a lock folder")
                use_flock = False
        if use_flock:
            try:
                handle.seek(0)
                handle.truncate()
                handle.write(owner)
                handle.flush()
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            return
    folder = lock_dir / f"{name}.lock.d"
    while True:
        try:
            folder.mkdir()
            break
        except FileExistsError:
            try:
                if time.time() - folder.stat().st_mtime > timeout:
                    log(f"{name}: taking over the stale lock {folder}")
                    shutil.rmtree(folder, ignore_errors=True)
                    continue
            except FileNotFoundError:
                continue
            wait(folder)
    try:
        (folder / "owner").write_text(owner)
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------------------------------- hub


class _Retry(Exception):
    """A failure worth another try (network, 5xx, 429, a download that did not verify)."""


def _classify(exc: BaseException, model: Model, wf: WeightFile, settings: Settings) -> BaseException:
    """Turn a huggingface_hub/httpx error into a final WeightsError or a _Retry."""
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, RemoteEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    where = f"{model.repo_id}@{model.revision}/{wf.filename}"
    if isinstance(exc, GatedRepoError):
        return WeightsError(f"{where}: the repo is gated and this token has no access",
                            "accept the licence on the model page and set HF_TOKEN to a token of that account")
    if isinstance(exc, RevisionNotFoundError):
        return WeightsError(f"{where}: revision {model.revision} not found on the hub", "fix the manifest revision")
    if isinstance(exc, RemoteEntryNotFoundError):
        return WeightsError(f"{where}: file not found on the hub", "fix the manifest filename")
    if isinstance(exc, RepositoryNotFoundError):
        return WeightsError(f"{where}: repository not found (or private)",
                            "check the repo id, or set HF_TOKEN for a private repo")
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            return WeightsError(f"{where}: the hub refused access (HTTP {status})", "set HF_TOKEN to a valid token")
        return _Retry(f"HTTP {status}: {str(exc).splitlines()[0]}")
    return _Retry(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": "))


def _fetch_once(model: Model, wf: WeightFile, folder: Path, settings: Settings, log: Log,
                revision: str) -> dict[str, Any]:
    """One metadata request + one download + verification; returns the record entry. Raises on any failure."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    url = hf_hub_url(model.repo_id, wf.filename, revision=revision, endpoint=settings.endpoint)
    meta = get_hf_file_metadata(url, token=settings.token, timeout=settings.timeout, endpoint=settings.endpoint)
    etag, commit, size = (meta.etag or "").lower(), meta.commit_hash, meta.size
    if not commit or not etag:
        raise _Retry(f"{url}: the hub sent no commit or etag")
    if wf.sha256 and _is_hex(etag, 64) and etag != wf.sha256:
        raise WeightsError(f"{model.name}/{wf.filename}: the hub's sha256 {etag} differs from the manifest pin "
                           f"{wf.sha256}", "the file changed upstream: check it, then update the manifest pin")
    if size is not None:
        free = shutil.disk_usage(folder).free
        if free < size:
            raise DiskFullError(f"{folder} has {free / 1e9:.2f} GB free, {wf.filename} needs {size / 1e9:.2f} GB",
                                "free space on the volume or mount a bigger one")
    log(f"{model.name}: downloading {wf.filename} ({(size or 0) / 1e6:.1f} MB) from "
        f"{settings.endpoint or 'huggingface.co'} {model.repo_id}@{commit[:12]}")
    path = Path(hf_hub_download(model.repo_id, wf.filename, revision=commit, local_dir=folder,
                                endpoint=settings.endpoint, token=settings.token, etag_timeout=settings.timeout))
    got_size = path.stat().st_size
    if size is not None and got_size != size:
        path.unlink(missing_ok=True)
        raise _Retry(f"downloaded {got_size} bytes, the hub said {size}")
    sha = sha256_file(path)
    if _is_hex(etag, 64):
        ok, source = sha == etag, "hub-lfs-sha256"
    elif _is_hex(etag, 40):
        ok, source = git_blob_sha1_file(path) == etag, "hub-git-blob-sha1"
    else:
        raise WeightsError(f"{model.name}/{wf.filename}: the hub's etag {etag!r} is neither a sha256 nor a git sha1",
                           "check HF_ENDPOINT points to a Hugging Face compatible hub")
    if wf.sha256 and sha != wf.sha256:
        ok = False
    if not ok:
        path.unlink(missing_ok=True)
        raise _Retry(f"downloaded {wf.filename} does not match its checksum (hub etag {etag[:12]}...)")
    st = path.stat()
    return {"sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "commit": commit,
            "verified_by": "manifest-sha256" if wf.sha256 else source, "etag": etag}


def _fetch(model: Model, wf: WeightFile, folder: Path, settings: Settings, log: Log,
           present: bool, commit: str | None = None) -> dict[str, Any] | None:
    """``_fetch_once`` with retries; None when the hub is unreachable but a present file may be kept.

    ``commit``: the commit the model's other files came from; fetching from it keeps a model's files consistent
    when the branch moved on since (falls back to the manifest revision if the hub no longer has that commit).
    """
    from huggingface_hub.errors import RevisionNotFoundError

    tries = 1 if present else settings.retries + 1
    last = ""
    revision = commit or model.revision
    for attempt in range(tries):
        try:
            return _fetch_once(model, wf, folder, settings, log, revision)
        except (WeightsError, DiskFullError):
            raise
        except _Retry as exc:
            last = str(exc)
        except RevisionNotFoundError as exc:
            if revision == model.revision:
                raise _classify(exc, model, wf, settings) from None
            log(f"{model.name}: commit {revision[:12]} is gone from the hub; taking {model.revision}")
            revision = model.revision
            continue
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskFullError(f"{folder} ran out of space while downloading {wf.filename}",
                                    "free space on the volume or mount a bigger one") from None
            final = _classify(exc, model, wf, settings)
            if not isinstance(final, _Retry):
                raise final from None
            last = str(final)
        except Exception as exc:  # noqa: BLE001 - network stacks raise many kinds; classified below
            final = _classify(exc, model, wf, settings)
            if not isinstance(final, _Retry):
                raise final from None
            last = str(final)
        if attempt + 1 < tries:
            wait = min(60.0, settings.backoff * 2 ** attempt)
            log(f"{model.name}: {wf.filename}: {last}; retry {attempt + 1}/{tries - 1} in {wait:.1f}s")
            time.sleep(wait)
    if present:
        log(f"{model.name}: WARNING hub unreachable ({last}); keeping the present {wf.filename} unverified")
        return None
    hub = settings.endpoint or "https://huggingface.co"
    raise WeightsError(
        f"cannot download {model.repo_id}/{wf.filename} from {hub} after {tries} tries ({last})",
        f"check the network / HF_ENDPOINT, or copy the file to {folder / wf.filename} and start again")


# --------------------------------------------------------------------------------------------------- public


def ensure_model(model: Model, settings: Settings, log: Log = print) -> list[FileResult]:
    """Make every file of ``model`` present and verified under ``settings.weights_dir``; WeightsError if impossible."""
    folder = model_dir(model.name, settings.weights_dir)
    folder.mkdir(parents=True, exist_ok=True)

    def local_pass(record: dict[str, Any]) -> list[tuple[WeightFile, bool, str, str | None]]:
        return [(wf, *check_local(model, wf, folder, record, settings.verify)) for wf in model.files]

    checks = local_pass(read_record(folder))
    if all(ok for _, ok, _, _ in checks):  # the common restart: no lock, no network
        if any(reason == "verified (hashed)" for _, _, reason, _ in checks):
            with model_lock(settings.weights_dir, model.name, settings.lock_timeout, log):
                _stamp(folder, model, [(wf, sha) for wf, _, _, sha in checks])
        return [FileResult(model.name, wf.filename, folder / wf.filename, "verified", sha,
                           (folder / wf.filename).stat().st_size) for wf, _, _, sha in checks]

    with model_lock(settings.weights_dir, model.name, settings.lock_timeout, log):
        record = read_record(folder)  # another container may have finished while we waited
        checks = local_pass(record)
        if record.get("repo_id") != model.repo_id or record.get("revision") != model.revision:
            record = {"repo_id": model.repo_id, "revision": model.revision, "files": {}}
        record.setdefault("files", {})
        results = []
        for wf, ok, reason, sha in checks:
            path = folder / wf.filename
            if ok:
                st = path.stat()
                entry = record["files"].setdefault(wf.filename, {})
                entry.update(sha256=sha, size=st.st_size, mtime_ns=st.st_mtime_ns)
                results.append(FileResult(model.name, wf.filename, path, "verified", sha, st.st_size))
                continue
            present = path.is_file()
            if settings.offline:
                if present and reason == "present but never verified":
                    log(f"{model.name}: WARNING HF_HUB_OFFLINE set; keeping {wf.filename} unverified")
                    results.append(FileResult(model.name, wf.filename, path, "unverified", None, path.stat().st_size))
                    continue
                raise WeightsError(f"{model.name}: {wf.filename} is {reason} in {folder} and HF_HUB_OFFLINE is set",
                                   "unset HF_HUB_OFFLINE to download it, or copy a good file there")
            keep_if_unreachable = present and reason == "present but never verified"
            if present and not keep_if_unreachable:
                log(f"{model.name}: {wf.filename} is {reason}; fetching it again")
                path.unlink()
            elif not present:
                log(f"{model.name}: {wf.filename} missing; fetching it")
            start = time.monotonic()
            commit = next((e.get("commit") for e in record["files"].values() if e.get("commit")), None)
            entry = _fetch(model, wf, folder, settings, log, present=keep_if_unreachable, commit=commit)
            if entry is None:
                results.append(FileResult(model.name, wf.filename, path, "unverified", None, path.stat().st_size))
                continue
            record["files"][wf.filename] = entry
            _write_record(folder, record)
            results.append(FileResult(model.name, wf.filename, path, "downloaded", entry["sha256"], entry["size"],
                                      time.monotonic() - start))
        _write_record(folder, record)
    return results


def _stamp(folder: Path, model: Model, verified: list[tuple[WeightFile, str | None]]) -> None:
    """Record size/mtime of files just verified by hashing, so the next start need not hash them again."""
    record = read_record(folder)
    if record.get("repo_id") != model.repo_id or record.get("revision") != model.revision:
        record = {"repo_id": model.repo_id, "revision": model.revision, "files": {}}
    files = record.setdefault("files", {})
    for wf, sha in verified:
        st = (folder / wf.filename).stat()
        files.setdefault(wf.filename, {}).update(sha256=sha, size=st.st_size, mtime_ns=st.st_mtime_ns)
    _write_record(folder, record)


def ensure_models(names: list[str] | None = None, settings: Settings | None = None,
                  models: dict[str, Model] | None = None, log: Log = print) -> list[FileResult]:
    """Fetch/verify every selected model (None = MODELS env, else the manifest's default selection)."""
    settings = settings or Settings.from_env()
    if models is None:
        models, default = load_manifest()
    else:
        default = tuple(models)
    if names is None:
        names = select(os.environ.get("MODELS"), models, default)
    results: list[FileResult] = []
    for name in names:
        if name not in models:
            raise WeightsError(f"unknown model {name!r}", f"choose from {', '.join(models)}")
        results.extend(ensure_model(models[name], settings, log))
    return results


def pins(results: list[FileResult], models: dict[str, Model], weights_dir: Path) -> dict[str, Any]:
    """What to paste into the manifest after a real download: the verified sha256, size and commit per file."""
    out: dict[str, Any] = {}
    for r in results:
        entry = read_record(model_dir(r.model, weights_dir)).get("files", {}).get(r.filename, {})
        out.setdefault(r.model, {"repo_id": models[r.model].repo_id, "commit": entry.get("commit"), "files": {}})
        out[r.model]["files"][r.filename] = {"sha256": r.sha256, "size": r.size}
    return out


def main(argv: list[str] | None = None) -> int:
    """``scripts/download_models.py``: fetch and verify weights; exit code of the WeightsError on failure."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="download_models.py",
        description="Download and verify the model weights named in the manifest (mattepod/weights.py).")
    parser.add_argument("--models", default=None,
                        help="comma-separated model names or groups (all, none, sam2, matanyone_all); "
                             "default: env MODELS, else the manifest's default selection")
    parser.add_argument("--config", default=None,
                        help="fetch what this run config (YAML) needs: its SAM 2.1 size and MatAnyone weights")
    parser.add_argument("--weights-dir", default=None, help="default: env MODEL_CACHE_DIR, else ./weights")
    parser.add_argument("--list", action="store_true", help="list the manifest and exit")
    parser.add_argument("--print-pins", action="store_true",
                        help="after verifying, print the sha256/size/commit to record in the manifest (JSON)")
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(f"[weights] {msg}", file=sys.stderr, flush=True)

    try:
        models, default = load_manifest()
        if args.list:
            for m in models.values():
                mark = "*" if m.name in default else " "
                files = ", ".join(f.filename for f in m.files)
                print(f"{mark} {m.name:18} {m.repo_id}@{m.revision}  {files}  [{m.licence or 'see model card'}]")
            return 0
        settings = Settings.from_env(args.weights_dir)
        spec = args.models if args.models is not None else os.environ.get("MODELS")
        if args.config is not None:
            from mattepod.config import load as load_config
            from mattepod.weights import models_for_config

            from_config = models_for_config(load_config(args.config))
            names = select(",".join(from_config + ([spec] if args.models else [])), models, default)
        else:
            names = select(spec, models, default)
        if not names:
            log("MODELS=none: nothing to fetch")
            return 0
        log(f"models: {', '.join(names)} -> {settings.weights_dir}"
            + (" (offline)" if settings.offline else f" (hub: {settings.endpoint or 'https://huggingface.co'})"))
        start = time.monotonic()
        results = ensure_models(names, settings, models, log)
        fetched = [r for r in results if r.status == "downloaded"]
        unverified = [r for r in results if r.status == "unverified"]
        log(f"ready: {len(results)} files, {len(fetched)} downloaded "
            f"({sum(r.size for r in fetched) / 1e6:.1f} MB), {len(unverified)} unverified, "
            f"{time.monotonic() - start:.1f}s")
        if args.print_pins:
            print(json.dumps(pins(results, models, settings.weights_dir), indent=2))
        return 0
    except MattePodError as err:
        print(f"[weights] ERROR: {err}", file=sys.stderr, flush=True)
        return err.exit_code
