"""The page's prompt, kept on the output volume so it survives a reload, a closed tab and a pod restart.

Why on the server: the prompt holds masks (an uploaded one, SAM 2's, brush strokes) that are too big for the
browser's storage, and the output volume is the one place that outlives the pod. The browser keeps only a
random key (``gr.BrowserState``); the key is never a path: it must be a plain token (:data:`KEY`), and the file
is ``<output>/.prompts/<key>.npz`` (a dot folder: never listed as a video, never a run).

One file per key, written atomically (temporary file + ``os.replace``), at most :data:`MAX_BYTES` of masks
(bit-packed), pruned by age and count. The record itself is ``app.state.to_record``: JSON types plus bool masks;
reading uses ``np.load(allow_pickle=False)``, so a file in the volume can never run code.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import threading
import time
import weakref
import zipfile
from pathlib import Path

import numpy as np

from app import state as st

log = logging.getLogger("mattepod.app")

KEY = re.compile(r"[A-Za-z0-9_-]{20,64}")
MAX_BYTES = 96 * 1024 * 1024  # bit-packed masks of one prompt (8K: 4 MB per mask)
MAX_FILES = 200  # prompts kept (the newest)
MAX_AGE_S = 30 * 24 * 3600  # a prompt untouched for 30 days is dropped
_META = "__meta__"


def new_key() -> str:
    return secrets.token_urlsafe(24)


def valid_key(key: object) -> str | None:
    """``key`` when it is a token this module could have made, else None (never a path)."""
    return key if isinstance(key, str) and KEY.fullmatch(key) else None


class PromptStore:
    """``<output>/.prompts``: save / load / prune the page's prompts by key."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._pending: dict[str, st.PromptState] = {}  # key -> the latest state not yet written
        self._busy = 0
        self._worker: threading.Thread | None = None
        self._written: dict[str, weakref.ref] = {}  # key -> the state last written (not written twice)
        self._packed: dict[int, tuple] = {}  # id(mask) -> (weak ref to the mask, its packed bits)
        self._writes = 0

    def secret(self) -> str:
        """The key that encrypts what the page keeps in the browser (``gr.BrowserState``). Gradio makes a new
        one at every start, which made a restarted pod unable to read its browsers' keys; this one is made once
        and kept next to the prompts (mode 0600)."""
        path = self.folder / "browser-secret"
        try:
            text = path.read_text().strip()
            if len(text) >= 32:
                return text
        except OSError:
            pass
        value = secrets.token_urlsafe(32)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(value)
        except FileExistsError:
            return path.read_text().strip() or value  # another process made it first
        except OSError as err:
            log.warning("browser secret not kept (%s): a restart forgets the browsers' prompts", err)
        return value

    def path(self, key: str) -> Path:
        k = valid_key(key)
        if k is None:
            raise ValueError("not a prompt key")
        return self.folder / f"{k}.npz"

    def save(self, state: st.PromptState) -> bool:
        """Keep ``state`` under ``state.key``, written by a background thread so a redraw never waits on the
        disk (a drag over many frames writes only the latest state). False: no valid key."""
        key = valid_key(state.key)
        if key is None:
            return False
        with self._cond:
            self._pending[key] = state
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="prompt-store", daemon=True)
                self._worker.start()
            self._cond.notify_all()
        return True

    def flush(self, timeout: float = 60) -> bool:
        """Wait until every state handed to :meth:`save` is on disk (a reload reads the latest one)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._pending))
                key, state = self._pending.popitem()
                self._busy += 1
            try:
                self.write(state)
            except Exception as exc:  # noqa: BLE001 - keeping the prompt is a courtesy: log, go on
                log.warning("prompt %s not saved: %s", key, exc)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def write(self, state: st.PromptState) -> bool:
        """Write ``state`` now (False: no key, too large to keep, or the disk refused -- logged)."""
        key = valid_key(state.key)
        if key is None:
            return False
        last = self._written.get(key)
        if last is not None and last() is state:
            return True  # this very state is on disk already
        if state.media is None and not self.path(key).exists():
            return True  # nothing to keep yet: a visit that never loads a video leaves no file
        meta, arrays = st.to_record(state)
        shapes = {name: list(np.shape(a)) for name, a in arrays.items()}
        packed = {name: self._bits(a) for name, a in arrays.items()}
        size = sum(a.nbytes for a in packed.values())
        if size > MAX_BYTES:
            log.warning("prompt %s not saved: %d MB of masks is more than %d MB", key, size >> 20, MAX_BYTES >> 20)
            return False
        meta["shapes"] = shapes
        packed[_META] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        path = self.path(key)
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{key}.{os.getpid()}.{threading.get_ident()}.tmp")
            try:
                # an .npz np.load reads, deflated at level 1: bit-packed masks are mostly runs, and level 6
                # cost seconds per save on a 4K prompt with many masks for a few kB less
                with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
                    for name, a in packed.items():
                        with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
                            np.lib.format.write_array(fh, a, allow_pickle=False)
                os.replace(tmp, path)
            except OSError as err:
                log.warning("prompt %s not saved: %s", key, err)
                tmp.unlink(missing_ok=True)
                return False
            self._written[key] = weakref.ref(state)
            self._writes += 1
            if self._writes % 50 == 1:
                self.prune()
        return True

    def _bits(self, mask: np.ndarray) -> np.ndarray:
        """``mask >= 0.5`` bit-packed, remembered per array: the state's masks are immutable and most of them
        are the same objects from one save to the next (a frame change re-packs nothing)."""
        hit = self._packed.get(id(mask))
        if hit is not None and hit[0]() is mask:
            return hit[1]
        bits = np.packbits(np.asarray(mask) >= 0.5, axis=None)
        try:
            self._packed[id(mask)] = (weakref.ref(mask, lambda _r, i=id(mask): self._packed.pop(i, None)), bits)
        except TypeError:  # an array that takes no weak reference is packed every time
            pass
        return bits

    def load(self, key: str | None) -> tuple[dict, dict[str, np.ndarray]] | None:
        """(meta, bool arrays) saved under ``key``; None when there is none or it cannot be read."""
        k = valid_key(key)
        if k is None:
            return None
        self.flush()
        path = self.path(k)
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(bytes(z[_META]).decode())
                shapes = meta.pop("shapes")
                arrays = {}
                for name, shape in shapes.items():
                    h, w = (int(v) for v in shape)
                    arrays[name] = np.unpackbits(z[name], count=h * w).astype(bool).reshape(h, w)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError, zipfile.BadZipFile) as err:
            log.warning("saved prompt %s is not readable (%s): starting empty", k, err)
            return None
        if not isinstance(meta, dict):
            return None
        return meta, arrays

    def forget(self, key: str | None) -> None:
        k = valid_key(key)
        if k is not None:
            self.flush()
            self.path(k).unlink(missing_ok=True)
            self._written.pop(k, None)

    def prune(self, now: float | None = None) -> int:
        """Drop prompts older than :data:`MAX_AGE_S` and all but the newest :data:`MAX_FILES`; stale temporary
        files too. Returns how many files went."""
        now = time.time() if now is None else now
        try:
            entries = [(p.stat().st_mtime, p) for p in self.folder.iterdir() if p.is_file()]
        except OSError:
            return 0
        gone = 0
        kept = sorted(((t, p) for t, p in entries if p.suffix == ".npz"), key=lambda e: e[0], reverse=True)
        doomed = [p for t, p in kept[MAX_FILES:]] + [p for t, p in kept[:MAX_FILES] if now - t > MAX_AGE_S]
        doomed += [p for t, p in entries if p.suffix == ".tmp" and now - t > 3600]
        for p in doomed:
            try:
                p.unlink()
                gone += 1
            except OSError:
                pass
        return gone
