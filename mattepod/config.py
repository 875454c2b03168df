"""The typed run configuration: one pydantic schema behind configs/generate.yaml, CLI flags and jobs.

The field descriptions are the single source of the documentation: ``render_yaml`` writes the fully
commented generate.yaml from them, and tests check that configs/generate.yaml and CONFIG.md agree with it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mattepod.errors import ConfigError


# Path-typed fields carry their kind in the schema; paths.confine resolves every one of them against the
# face's allowed folders (read: files a run reads; write: where run folders go; weights: the model folder).
READ: dict[str, Any] = {"path": "read"}
WRITE: dict[str, Any] = {"path": "write"}
WEIGHTS: dict[str, Any] = {"path": "weights"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Point(_Strict):
    x: float = Field(description="horizontal coordinate (pixels, or 0..1 with prompt.normalized)")
    y: float = Field(description="vertical coordinate (pixels, or 0..1 with prompt.normalized)")
    label: Literal[0, 1] = Field(1, description="1 = on the subject (positive), 0 = not the subject (negative)")


class Keyframe(_Strict):
    frame: int = Field(ge=0, description="frame index (relative to start_frame) where the matte re-anchors")
    mask: str | None = Field(None, description="mask PNG for this keyframe", json_schema_extra=READ)
    points: list[Point] = Field(default_factory=list, description="SAM 2 clicks for this keyframe")
    box: tuple[float, float, float, float] | None = Field(None, description="SAM 2 box [x0, y0, x1, y1]")
    auto_person: bool = Field(False, description="find the people on this keyframe automatically")

    @model_validator(mode="after")
    def _has_prompt(self) -> "Keyframe":
        if not (self.mask or self.points or self.box or self.auto_person):
            raise ValueError(f"keyframe {self.frame} has no prompt: give mask, points, box or auto_person: true")
        return self


class SubjectConfig(_Strict):
    """One named subject of a multi-subject run (``prompt.subjects``); see CONFIG.md."""

    name: str = Field(description="file-name safe name: letters, digits, _ or - (outputs <stem>_<name>_alpha.mp4)")
    frame: int | None = Field(None, ge=0, description="frame of this subject's prompt (default prompt.frame)")
    mask: str | None = Field(None, description="mask PNG of this subject on its prompt frame", json_schema_extra=READ)
    points: list[Point] = Field(default_factory=list, description="SAM 2 clicks on this subject")
    box: tuple[float, float, float, float] | None = Field(None, description="SAM 2 box [x0, y0, x1, y1]")
    auto_person: bool = Field(False, description="this subject is a detected person (see person_rank)")
    person_rank: int = Field(1, ge=1, description="with auto_person: which person by box size (1 = largest)")
    color: str | None = Field(None, description="#RRGGBB of this subject in previews and the page")
    keyframes: list[Keyframe] = Field(default_factory=list, description="this subject's re-anchoring prompts")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}", v):
            raise ValueError(f"subject name {v!r} must be 1-32 letters, digits, '_' or '-', starting with a "
                             "letter or digit")
        return v

    @field_validator("color")
    @classmethod
    def _colour(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"#[0-9A-Fa-f]{6}", v):
            raise ValueError(f"colour {v!r} is not #RRGGBB (for example #FF4040)")
        return None if v is None else v.upper()

    @model_validator(mode="after")
    def _one_prompt(self) -> "SubjectConfig":
        if not (self.mask or self.points or self.box or self.auto_person):
            raise ValueError(f"subject {self.name} has no prompt: give mask, points, box or auto_person: true")
        if self.mask and (self.points or self.box or self.auto_person):
            raise ValueError(f"subject {self.name}: give either a mask or points/box/auto_person")
        return self


class PromptConfig(_Strict):
    frame: int = Field(0, ge=0, description="frame (relative to start_frame) the prompt is given on; "
                       "matting runs forward to the end and backward to the first frame")
    mask: str | None = Field(None, description="mask PNG (any channel count; 0/1, 0/255 or soft) of the subject",
                             json_schema_extra=READ)
    points: list[Point] = Field(default_factory=list,
                                description="SAM 2 clicks, e.g. [{x: 640, y: 360, label: 1}]")
    box: tuple[float, float, float, float] | None = Field(None, description="SAM 2 box [x0, y0, x1, y1]")
    normalized: bool = Field(False, description="points and box are given in 0..1 of the frame size")
    mask_add: list[str] = Field(default_factory=list, description="mask PNGs added (union) to the prompt mask",
                                json_schema_extra=READ)
    mask_subtract: list[str] = Field(default_factory=list, description="mask PNGs removed from the prompt mask",
                                     json_schema_extra=READ)
    mask_dilate: int = Field(0, ge=0, description="grow the prompt mask by this many pixels")
    mask_erode: int = Field(0, ge=0, description="shrink the prompt mask by this many pixels")
    auto_person: bool = Field(False, description="find people on the prompt frame automatically (batch runs)")
    person_select: Literal["largest", "all", "n_largest"] = Field(
        "largest", description="with auto_person: which people become the subject")
    person_count: int = Field(1, ge=1, description="with person_select n_largest: how many")
    person_min_score: float = Field(0.5, ge=0, le=1, description="with auto_person: detector confidence a "
                                    "person needs (lower finds more, and more false people)")
    sam2_model: Literal["tiny", "small", "base_plus", "large"] = Field(
        "base_plus", description="SAM 2.1 model size used to turn clicks/boxes into masks")
    keyframes: list[Keyframe] = Field(default_factory=list,
                                      description="extra prompts on later frames; the matte re-anchors there")
    reprompt_every: int = Field(0, ge=0, description="re-prompt automatically every N frames with the "
                                "automatic person prompt (0 = never)")
    subjects: list[SubjectConfig] = Field(
        default_factory=list, description="several named subjects, each with its own prompt and keyframes "
        "(instead of the single prompt above); a matte per subject plus their union")
    exclusive: bool = Field(True, description="with subjects: two subjects never both claim a pixel (where "
                            "their alphas add up to more than 1 each is divided by the sum)")

    @model_validator(mode="after")
    def _subjects_or_single(self) -> "PromptConfig":
        if not self.subjects:
            return self
        if self.mask or self.points or self.box or self.auto_person or self.keyframes or self.reprompt_every:
            raise ValueError("give the prompt either as prompt.subjects or as the single prompt "
                             "(mask/points/box/auto_person/keyframes/reprompt_every), not both")
        names = [s.name for s in self.subjects]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"subject names repeat: {dup}")
        for s in self.subjects:
            frames = [s.frame if s.frame is not None else self.frame] + [k.frame for k in s.keyframes]
            if len(set(frames)) != len(frames):
                raise ValueError(f"subject {s.name}: a keyframe repeats a frame (or its prompt frame)")
        return self


class EngineConfig(_Strict):
    name: Literal["matanyone", "mask"] = Field(
        "matanyone", description="matanyone = the network; mask = carry the prompt mask only (no weights, a check)")
    model: Literal["matanyone", "matanyone2"] = Field("matanyone", description="which MatAnyone weights")
    device: str = Field("auto", description="auto (cuda when available), cpu, cuda or cuda:N")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto = fp16 on cuda, fp32 on cpu")
    warmup: int = Field(10, ge=0, description="warm-up steps on the prompt frame before the first output")
    erode: int = Field(10, ge=0, description="erode radius applied to the prompt mask (after dilate)")
    dilate: int = Field(10, ge=0, description="dilate radius applied to the prompt mask")
    max_size: int = Field(-1, description="internal matting size: shorter side limit in pixels (-1 = no limit)")
    mem_every: int = Field(5, ge=1, description="a memory frame every N frames")
    max_mem_frames: int = Field(5, ge=2, description="memory frames kept (1 permanent + FIFO)")
    top_k: int = Field(30, ge=1, description="top-k of the memory readout")
    compile: bool = Field(False, description="torch.compile the network (GPU; slow first frames)")
    tf32: bool = Field(True, description="allow TF32 matmuls on GPU (faster, slightly less exact)")


OutputFormat = Literal["alpha", "green", "composite", "prores", "webm", "png", "alpha16", "packed", "idmap"]


class OutputsConfig(_Strict):
    formats: list[OutputFormat] = Field(
        default_factory=lambda: ["alpha", "green"],
        description="any of: alpha (matte video), green (foreground over a colour), composite (over "
                    "background), prores (RGBA .mov), webm (RGBA VP9), png (RGBA sequence), alpha16 "
                    "(16-bit alpha PNGs), packed (VR180 fisheye alpha-packed passthrough), idmap (with prompt.subjects: "
                    "8-bit PNGs, pixel = 1 + index of the subject with the largest alpha, 0 = background)")
    alpha_codec: Literal["hevc10", "ffv1"] = Field("hevc10", description="alpha video codec: 10-bit HEVC or lossless FFV1")
    color: str = Field("#00B140", description="background colour of the green output, #RRGGBB")
    background: str | None = Field(None, description="image or video behind the subject for composite",
                                   json_schema_extra=READ)
    encoder: Literal["auto", "nvenc", "cpu"] = Field(
        "auto", description="auto = NVENC when ffmpeg and the GPU have it, else libx264/libx265")
    crf: int = Field(18, ge=0, le=51, description="quality of the lossy video outputs (lower = better)")
    previews: int = Field(3, ge=0, description="frames written as preview PNGs (alpha and composite)")
    copy_audio: bool = Field(True, description="copy the source audio (no re-encode) into video outputs")

    @field_validator("color")
    @classmethod
    def _colour(cls, v: str) -> str:
        if not re.fullmatch(r"#[0-9A-Fa-f]{6}", v):
            raise ValueError(f"colour {v!r} is not #RRGGBB (for example #00B140)")
        return v.upper()


class StereoConfig(_Strict):
    mode: Literal["mono", "vr180"] = Field("mono", description="mono, or vr180 (two eyes in one frame)")
    layout: Literal["auto", "sbs", "tb"] = Field(
        "auto", description="eye layout: side-by-side, top-bottom, or auto (metadata, file name tokens, shape)")
    swap_eyes: bool = Field(False, description="the right eye comes first (left/top half is the right eye)")
    master: Literal["left", "right"] = Field("left", description="the eye the prompt is given on")
    projection: Literal["auto", "equirect", "fisheye"] = Field(
        "auto", description="source projection of each eye (auto: metadata, file name tokens, else equirect)")
    fov: float = Field(180.0, gt=0, le=220, description="field of view of the fisheye passthrough output, degrees")
    consistency_threshold: float = Field(0.8, ge=0, le=1, description="flag frames whose eye IoU is below this")
    reprompt_on_drift: bool = Field(False, description="re-prompt the slave eye from the master when it drifts")
    reprompt_cooldown: int = Field(15, ge=1, description="frames between two automatic re-prompts of the slave eye")
    max_disparity: float = Field(0.15, gt=0, le=0.5,
                                 description="largest horizontal eye disparity searched, fraction of the eye width")
    max_vertical_offset: float = Field(0.02, ge=0, le=0.2,
                                       description="largest vertical eye offset searched, fraction of the eye height")
    batch_eyes: bool = Field(True, description="both eyes through the network as one batch of two (false: "
                             "one by one, less GPU memory)")


class RecoveryConfig(_Strict):
    auto_resume: bool = Field(False, description="resume the newest unfinished run of the same input automatically")
    segment_frames: int = Field(300, ge=1, description="frames per output segment (a checkpoint after each)")


class RuntimeConfig(_Strict):
    queue_size: int = Field(8, ge=1, le=256, description="frames buffered between decode, model and encode")
    threads: int = Field(0, ge=0, description="CPU threads for torch (0 = torch's default)")
    adaptive_scale: bool = Field(True, description="choose the matting size from the free device memory and "
                                 "step it down on out-of-memory instead of failing (MatAnyone)")
    min_scale: float = Field(0.25, gt=0, le=1, description="smallest matting size adaptive scaling may use, "
                             "fraction of the size engine.max_size gives")
    max_scale: float = Field(1.0, gt=0, le=1, description="largest matting size adaptive scaling may use, "
                             "fraction of the size engine.max_size gives")
    target_memory: float = Field(0.85, gt=0, le=1, description="fraction of the device memory free at start "
                                 "the predicted matting peak may use")

    @model_validator(mode="after")
    def _scale_range(self) -> "RuntimeConfig":
        if self.min_scale > self.max_scale:
            raise ValueError(f"runtime.min_scale {self.min_scale} is above runtime.max_scale {self.max_scale}")
        return self


class QualityConfig(_Strict):
    gt: str | None = Field(None, description="ground-truth matte of the input (PNG folder or video; one frame per "
                           "input or per processed frame): the run ends by measuring its matte (quality.json)",
                           json_schema_extra=READ)
    depth: Literal["field", "native"] = Field("field", description="how mattes are read for the metrics: field "
                                              "(8-bit grey, as published evaluations) or native (full precision)")


class Config(_Strict):
    input: str | None = Field(None, description="video file or folder of images (also --input)",
                              json_schema_extra=READ)
    output_dir: str = Field("output", description="where run folders are created (env OUTPUT_DIR overrides the default)",
                            json_schema_extra=WRITE)
    weights_dir: str | None = Field(None, description="model weights folder (default: env MODEL_CACHE_DIR, else ./weights)",
                                    json_schema_extra=WEIGHTS)
    start_frame: int = Field(0, ge=0, description="first frame of the input to process")
    max_frames: int | None = Field(None, ge=1, description="process at most this many frames (null = all)")
    scale: float = Field(1.0, gt=0, le=1, description="matting resolution relative to the input; alpha is upsampled back")
    prompt: PromptConfig = Field(default_factory=PromptConfig, description="how the subject is chosen")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="the matting network")
    outputs: OutputsConfig = Field(default_factory=OutputsConfig, description="what is written")
    stereo: StereoConfig = Field(default_factory=StereoConfig, description="VR180 stereo mode")
    recovery: RecoveryConfig = Field(default_factory=RecoveryConfig, description="segments and resume")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="threads and queues")
    quality: QualityConfig = Field(default_factory=QualityConfig, description="matting metrics against a ground truth")

    @model_validator(mode="after")
    def _packed_needs_vr(self) -> "Config":
        if "packed" in self.outputs.formats and self.stereo.mode != "vr180":
            raise ValueError("outputs.formats 'packed' needs stereo.mode: vr180")
        if "idmap" in self.outputs.formats and not self.prompt.subjects:
            raise ValueError("outputs.formats 'idmap' needs prompt.subjects (several subjects)")
        if "composite" in self.outputs.formats and not self.outputs.background:
            raise ValueError("outputs.formats 'composite' needs outputs.background (an image or video path)")
        return self

    def resolved_weights_dir(self) -> Path:
        from mattepod import settings

        return Path(self.weights_dir) if self.weights_dir else settings.weights_dir()


def _format_error(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "literal_error" and "expected" in e.get("ctx", {}):
            msg = f"must be one of {e['ctx']['expected']}, got {e.get('input')!r}"
        parts.append(f"{key}: {msg}")
    return f"{source}: " + "; ".join(parts)


def validate(data: dict[str, Any], source: str = "config") -> Config:
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source), "fix the key (see CONFIG.md or --generate-config)") from None
    for key, _kind, value, _put in iter_paths(cfg.model_dump(mode="json")):
        if "\x00" in value or not value.strip():
            raise ConfigError(f"{source}: {key}: {'holds a NUL character' if value.strip() else 'is empty'}",
                              "give a plain file path")
    return cfg


def _inner_model(ann: Any) -> type[BaseModel] | None:
    """The model class inside ``Model``, ``list[Model]`` or ``Model | None`` (else None)."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def path_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, kind) of every path-typed field in the schema; list items show as ``key[]``."""
    out = []
    for name, f in model.model_fields.items():
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        if "path" in extra:
            out.append((prefix + name, str(extra["path"])))
        inner = _inner_model(f.annotation)
        if inner is not None:
            many = "list" in str(f.annotation)
            out.extend(path_keys(inner, f"{prefix}{name}{'[]' if many else ''}."))
    return out


def iter_paths(data: dict[str, Any], model: type[BaseModel] = Config, prefix: str = ""):
    """(dotted key, kind, value, setter) for every path value present in a config dict (as dumped).

    The setter replaces that one value in ``data``; ``paths.confine`` uses it to write resolved paths back.
    """
    for name, f in model.model_fields.items():
        if name not in data or data[name] is None:
            continue
        value = data[name]
        key = prefix + name
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        if "path" in extra:
            kind = str(extra["path"])
            if isinstance(value, list):
                for i, item in enumerate(value):
                    yield f"{key}[{i}]", kind, str(item), (lambda v, lst=value, i=i: lst.__setitem__(i, v))
            else:
                yield key, kind, str(value), (lambda v, d=data, n=name: d.__setitem__(n, v))
            continue
        inner = _inner_model(f.annotation)
        if inner is None:
            continue
        if isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    yield from iter_paths(item, inner, f"{key}[{i}].")
        elif isinstance(value, dict):
            yield from iter_paths(value, inner, key + ".")


def read_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file (not validated yet: overrides come first)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found", "give a path to a YAML file, or write one with --generate-config")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{p} is not UTF-8 text", "save the config as UTF-8 YAML") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p} is not valid YAML: {exc}".replace("\n", " "), "fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a mapping of keys", "see configs/generate.yaml")
    return data


def load(path: str | Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """Read a YAML file (None = all defaults), apply dotted-key overrides, validate (no face rules: a run
    folder's own config.yaml, a base config; faces go through ``mattepod.request.to_config``)."""
    data: dict[str, Any] = read_file(path) if path is not None else {}
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return validate(data, str(path or "config"))


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {part} is not a section", "use a key listed in CONFIG.md")
    node[leaf] = value


def parse_set(item: str) -> tuple[str, Any]:
    """``--set engine.warmup=5`` -> ("engine.warmup", 5), the value parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r} has no '='", "write --set key.sub=value")
    key, raw = item.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def dump(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def iter_keys(model: type[BaseModel] = Config, prefix: str = ""):
    """(dotted key, FieldInfo) for every key, sections included, in declaration order."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        yield key, field
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from iter_keys(ann, key + ".")


def render_yaml() -> str:
    """The fully commented default config, generated from the schema (what --generate-config writes)."""
    lines = ["# MattePod run configuration (generated from mattepod/config.py; every key in CONFIG.md).",
             "# Any key can be overridden on the command line: --set section.key=value", ""]

    def walk(model: BaseModel, indent: str) -> None:
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            desc = field.description or ""
            if isinstance(value, BaseModel):
                lines.append(f"{indent}# {desc}")
                lines.append(f"{indent}{name}:")
                walk(value, indent + "  ")
                lines.append("")
                continue
            dumped = yaml.safe_dump(value if not isinstance(value, tuple) else list(value),
                                    default_flow_style=True).strip()
            if dumped.endswith("..."):
                dumped = dumped[:-3].strip()
            lines.append(f"{indent}{name}: {dumped}  # {desc}")

    walk(Config(), "")
    return "\n".join(lines).rstrip() + "\n"
