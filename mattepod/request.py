"""The front door: one request model that every face fills, and one function that turns it into a Config.

Why: the CLI, the batch runner, the app and the serverless worker each built their runs their own way,
with their own point parsers and path checks, and the copies drifted into security holes. Now a face keeps
only its transport (argv, Gradio events, the RunPod job dict, a batch list) and fills a :class:`RunRequest`;
:func:`to_config` applies it over a base config in one fixed order, sets what the server decides, validates,
and -- when the face gives :class:`~mattepod.paths.Roots` -- confines every path-typed key, after the last
override, so no key can bypass the rule.

Order (later wins): base config (a file, the app's/worker's base) < ``config`` (nested keys) < the request's
own fields (input, prompt, outputs, frames, scale, folders) < ``overrides`` (dotted keys: ``--set``, the
job's ``set``, the app's options) < ``fixed`` (keys the face decides; a request that sets one of them to
another value is refused, never silently overridden).

The prompt part (:class:`PromptRequest`) mirrors ``config.PromptConfig``'s user-facing keys; a new prompt
kind (e.g. several subjects) is one more optional field here and one more line in ``_prompt_keys``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mattepod import config as cfgmod
from mattepod import settings
from mattepod.errors import ConfigError, MaskError
from mattepod.paths import Roots, confine

# --------------------------------------------------------------------------- points and boxes


def parse_points(value: Any, what: str = "points") -> list[dict[str, Any]]:
    """Clicks in any form a face receives -> ``[{"x", "y", "label"}]`` (label 1 = subject, 0 = not).

    Accepts ``"x,y,label;x,y,label"`` (label optional, default 1), a JSON text of the list forms,
    ``[[x, y, label], [x, y]]`` and ``[{"x": .., "y": .., "label": ..}]``. The one parser of every face.
    """
    if value is None or value == "" or value == []:
        return []
    data: Any = value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                data = json.loads(text)
            except ValueError:
                raise ConfigError(f"{what} {value!r} is not valid JSON",
                                  'write [[x, y, label], ...] or "x,y,label;x,y,label"') from None
        else:
            data = [p.split(",") for p in text.replace(" ", "").split(";") if p]
    if not isinstance(data, (list, tuple)):
        raise ConfigError(f"{what} {value!r} is not a list of clicks", 'write "640,360,1;100,80,0"')
    out = []
    for i, item in enumerate(data):
        if isinstance(item, dict):
            extra = set(item) - {"x", "y", "label"}
            if extra or "x" not in item or "y" not in item:
                raise ConfigError(f"{what}: click {i + 1} {item!r} needs keys x, y (and label)",
                                  'write {"x": 640, "y": 360, "label": 1}')
            item = [item["x"], item["y"], item.get("label", 1)]
        try:
            if isinstance(item, (str, bytes)) or len(item) not in (2, 3):
                raise ValueError
            x, y = float(item[0]), float(item[1])
            label = int(float(item[2])) if len(item) == 3 else 1
        except (TypeError, ValueError):
            raise ConfigError(f"{what}: click {i + 1} {item!r} is not x,y or x,y,label",
                              'write "640,360,1;100,80,0" (label 1 = subject, 0 = not)') from None
        if label not in (0, 1):
            raise ConfigError(f"{what}: click {i + 1} has label {label}", "labels are 1 (subject) or 0 (not)")
        out.append({"x": x, "y": y, "label": label})
    return out


def parse_box(value: Any, what: str = "box") -> list[float] | None:
    """A box as ``"x0,y0,x1,y1"`` (also ``[..]``/``(..)``/``;``), or a list of four numbers -> 4 floats."""
    if value is None or value == "" or value == []:
        return None
    items: Any = value
    if isinstance(value, str):
        items = [v for v in value.replace(";", ",").strip("[]() ").split(",")]
    try:
        vals = [float(v) for v in items]
    except (TypeError, ValueError):
        vals = []
    if len(vals) != 4:
        raise ConfigError(f"{what} {value!r} is not x0,y0,x1,y1", "write the box as 100,50,400,700")
    return vals


# --------------------------------------------------------------------------- the request


class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromptRequest(_Req):
    """Which subject: a mask file, clicks and/or a box, the automatic person prompt, keyframes."""

    frame: int | None = Field(None, ge=0, description="frame the prompt is given on")
    mask: str | None = Field(None, description="mask image path (serverless: also a URL or base64, fetched "
                             "by the worker into a file before the request becomes a config)")
    points: list[dict[str, Any]] = Field(default_factory=list, description="clicks, any form parse_points reads")
    box: list[float] | None = Field(None, description="x0,y0,x1,y1")
    normalized: bool | None = None
    auto_person: bool | None = None
    keyframes: list[dict[str, Any]] | None = Field(None, description="prompt.keyframes entries")
    subjects: list[dict[str, Any]] | None = Field(None, description="prompt.subjects entries (several subjects)")

    @field_validator("points", mode="before")
    @classmethod
    def _points(cls, v: Any) -> list[dict[str, Any]]:
        try:
            return parse_points(v)
        except ConfigError as err:
            raise ValueError(err.problem) from None

    @field_validator("box", mode="before")
    @classmethod
    def _box(cls, v: Any) -> list[float] | None:
        try:
            return parse_box(v)
        except ConfigError as err:
            raise ValueError(err.problem) from None

    def is_empty(self) -> bool:
        return not (self.mask or self.points or self.box or self.auto_person or self.keyframes or self.subjects)


class RunRequest(_Req):
    """One run as any face asks for it."""

    input: str | None = Field(None, description="video file or image folder")
    prompt: PromptRequest | None = None
    outputs: list[str] | None = Field(None, description="output formats")
    start_frame: int | None = Field(None, ge=0)
    max_frames: int | None = Field(None, ge=1)
    scale: float | None = Field(None, gt=0, le=1)
    output_dir: str | None = None
    weights_dir: str | None = None
    config: dict[str, Any] = Field(default_factory=dict, description="nested config keys (a base)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="dotted config keys, applied last")

    def keys(self) -> dict[str, Any]:
        """Every config key this request sets, as dotted keys (nested ``config`` flattened), in order."""
        out = flatten(self.config)
        for name in ("input", "start_frame", "max_frames", "scale", "output_dir", "weights_dir"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.outputs is not None:
            out["outputs.formats"] = list(self.outputs)
        if self.prompt is not None:
            out.update(_prompt_keys(self.prompt))
        out.update(flatten(self.overrides))
        return out


def _prompt_keys(p: PromptRequest) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("frame", "mask", "normalized", "auto_person", "keyframes", "subjects"):
        value = getattr(p, name)
        if value is not None:
            out[f"prompt.{name}"] = value
    if p.points:
        out["prompt.points"] = p.points
    if p.box is not None:
        out["prompt.box"] = p.box
    return out


def flatten(options: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"prompt": {"mask": x}}`` -> ``{"prompt.mask": x}`` (sections only; list values stay whole)."""
    out: dict[str, Any] = {}
    for key, value in (options or {}).items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, full + "."))  # an empty section sets nothing
        else:
            out[full] = value
    return out


def parse(data: Any, source: str = "request") -> RunRequest:
    """A RunRequest from a plain dict; one ConfigError line naming every bad key."""
    if isinstance(data, RunRequest):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be an object of keys", "see CONFIG.md")
    try:
        return RunRequest.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_error(err, source), "see CONFIG.md") from None


def format_error(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        parts.append(f"{key}: {msg}")
    return f"{source}: " + "; ".join(parts)


# --------------------------------------------------------------------------- request -> Config


def _base_dict(base: str | Path | dict[str, Any] | cfgmod.Config | None) -> dict[str, Any]:
    if base is None:
        return {}
    if isinstance(base, cfgmod.Config):
        return base.model_dump(mode="json", exclude_unset=False)
    if isinstance(base, dict):
        return copy.deepcopy(base)
    return cfgmod.read_file(base)


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def to_config(req: RunRequest | dict[str, Any], base: str | Path | dict[str, Any] | cfgmod.Config | None = None,
              roots: Roots | None = None, fixed: dict[str, Any] | None = None,
              source: str = "request") -> cfgmod.Config:
    """The validated (and, with ``roots``, confined) Config of a request; see the module doc for the order.

    ``fixed``: dotted keys the face decides (the app's input/output folders, the worker's weights). A request
    that sets one of them (or a key below it) to a different value is a ConfigError naming the key.
    """
    req = parse(req, source)
    data = _base_dict(base)
    asked = req.keys()
    for key, value in asked.items():
        cfgmod.set_dotted(data, key, value)
    for key, value in (fixed or {}).items():
        clash = [k for k in asked if (k == key or k.startswith(key + ".")) and not _same(asked[k], value)]
        if clash:
            raise ConfigError(f"{source}: {clash[0]} is chosen by the server, not by the request",
                              f"drop {clash[0]} from the request")
        cfgmod.set_dotted(data, key, value)
    if "output_dir" not in asked and "output_dir" not in (fixed or {}) and data.get("output_dir") in (None, "output"):
        data["output_dir"] = settings.default_output_dir()  # the one OUTPUT_DIR rule
    cfg = cfgmod.validate(data, source)
    return confine(cfg, roots) if roots is not None else cfg


def require_prompt(cfg: cfgmod.Config, hint: str = "give prompt.mask, prompt.points, prompt.box or "
                   "prompt.auto_person") -> None:
    """MaskError when nothing says which subject to matte (checked before any work starts)."""
    p = cfg.prompt
    if not (p.mask or p.points or p.box or p.auto_person or getattr(p, "subjects", None)):
        raise MaskError("no prompt: nothing says which subject to matte", hint)
