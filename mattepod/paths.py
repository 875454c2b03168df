"""The one confinement rule: every file a request names lies inside the folders the face allows.

Why one rule: the CLI, batch, app and serverless faces used to confine paths each their own way (an
allow-list, a deny-list of keys, a per-key check), and the copies drifted into holes. Now the schema marks
its path-typed fields (``config.PATH_FIELDS``), and :func:`confine` resolves every one of them -- symlinks
included -- against :class:`Roots` after the last override has been applied, so no key can slip past.

* ``read`` roots: files a run reads (input, masks, background);
* ``write`` roots: where run folders are made (``output_dir``, a run folder);
* ``weights`` roots: model weights (``weights_dir``): a weights file is code-like (torch pickles), so a
  request may only name the server's own weights folder.

:func:`safe_name` is the rule for names that become one path component (job ids, run names, stems).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from mattepod.errors import ConfigError, InputNotFoundError

if TYPE_CHECKING:
    from mattepod.config import Config

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def safe_name(text: str | None, what: str = "name") -> str:
    """``text`` if it is one safe path component (letters, digits, ``._-``, not starting with a dot);
    a ConfigError otherwise (``..``, ``.``, slashes, NUL, empty)."""
    value = "" if text is None else str(text)
    if not _NAME.fullmatch(value) or ".." in value:
        raise ConfigError(f"{what} {value!r} is not a plain name",
                          "use letters, digits, '_', '.', '-' only (no '/', no '..', not starting with '.')")
    return value


def slug(text: str, fallback: str = "run") -> str:
    """Any text (a file stem) made into a safe name: other characters become '_'."""
    out = re.sub(r"[^A-Za-z0-9._-]+", "_", text or "").strip("._-")[:200]
    return out or fallback


def _check_text(text: str | os.PathLike | None, what: str) -> str:
    value = "" if text is None else os.fspath(text)
    if not value.strip():
        raise InputNotFoundError(f"{what}: no file path given", "give a file path")
    if "\x00" in value:
        raise InputNotFoundError(f"{what}: the path holds a NUL character", "give a plain file path")
    return value


def inside(path: str | os.PathLike, roots: Iterable[Path], what: str = "file", base: Path | None = None) -> Path:
    """``path`` resolved (symlinks followed; relative paths against ``base``) if it lies inside one of
    ``roots``; an InputNotFoundError naming the allowed folders otherwise (``..``, absolute paths elsewhere
    and symlinks that leave the roots are all refused the same way)."""
    text = _check_text(path, what)
    p = Path(text).expanduser()
    if not p.is_absolute() and base is not None:
        p = Path(base) / p
    real = p.resolve()
    roots = [Path(r).resolve() for r in roots]
    for root in roots:
        if real == root or root in real.parents:
            return real
    names = ", ".join(str(r) for r in roots) or "none"
    raise InputNotFoundError(f"{what} {text} is outside the allowed folders ({names})",
                             "put the file into an allowed folder and name it from there")


@dataclass(frozen=True)
class Roots:
    """The folders a face allows; ``base`` is where relative paths point (the volume, the input folder)."""

    read: tuple[Path, ...]
    write: tuple[Path, ...]
    weights: tuple[Path, ...] = ()
    base: Path | None = None

    @classmethod
    def of(cls, read: Iterable[str | Path], write: Iterable[str | Path], weights: Iterable[str | Path] = (),
           base: str | Path | None = None) -> "Roots":
        res = lambda items: tuple(Path(p).expanduser().resolve() for p in items)  # noqa: E731
        write_t = res(write)
        return cls(read=res(read) + write_t, write=write_t, weights=res(weights),
                   base=Path(base).expanduser().resolve() if base is not None else None)

    def for_kind(self, kind: str) -> tuple[Path, ...]:
        return {"read": self.read, "write": self.write, "weights": self.weights}[kind]


def confine(cfg: "Config", roots: Roots) -> "Config":
    """A copy of ``cfg`` whose every path-typed field is absolute, resolved and inside its kind of root.

    Call it after the last override: it is the single gate between a request and the files of the host.
    """
    from mattepod.config import iter_paths, validate

    data = cfg.model_dump(mode="json")
    for key, kind, value, put in iter_paths(data):
        allowed = roots.for_kind(kind)
        put(str(inside(value, allowed, key, roots.base)))
    return validate(data, "config")


def confine_run_dir(path: str | Path, roots: Roots, what: str = "run folder") -> Path:
    """A run folder (given, or made from a run name) must resolve inside a write root."""
    return inside(path, roots.write, what, roots.base)
