"""RunPod serverless worker: one job = one matting run (or a split plan, or a join), on the ``mattepod`` layer.

    python -m mattepod.serverless                          # on RunPod: takes jobs from the endpoint's queue
    python -m mattepod.serverless --test_input '{"input": {...}}'   # local: one job, then exit
    python -m mattepod.serverless --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port 8000

Job input (``job["input"]``; every key is checked, unknown keys are errors; see BUILD.md)::

    {"action": "run" | "plan" | "join",          # default run; "split" on a run means plan
     "video": "/runpod-volume/in/clip.mp4" | "in/clip.mp4" (relative to the volume) | "https://...",
     "prompt": {"mask": PATH | "data:image/png;base64,..." | BASE64 | URL, "points": [[x, y, label], ...],
                "box": [x0, y0, x1, y1], "frame": 0, "auto_person": false, "normalized": false},
     "outputs": ["alpha", "green"], "config": {nested config keys}, "set": {"engine.warmup": 5},
     "start_frame": 0, "max_frames": null, "scale": 1.0, "run_name": "name under the output folder",
     "upload": {"put_urls": {"alpha": "https://presigned-put-url"}, "bucket": {...}},
     "split": {"ranges": 4} | {"segment_seconds": 60}, "join": {"plan": PLAN_DIR} | {"segments": [RUN_DIR...]}}

Models load once per worker: engines are kept in a module-level pool and lent to each job (a VR180 job
borrows two). Errors the user can fix come back as ``{"error": one line, "error_type", "exit_code"}``.
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import json
import logging
import re
import shutil
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mattepod import config as cfgmod
from mattepod import netfetch, settings
from mattepod import request as rq
from mattepod import split as splitmod
from mattepod.engine import Engine
from mattepod.errors import ConfigError, InputNotFoundError, MaskError, MattePodError, RunStateError
from mattepod.media.exts import VIDEO_EXTS
from mattepod.paths import Roots, confine, inside, safe_name
from mattepod.runfolder import METADATA, read_json, write_atomic

log = logging.getLogger("mattepod.serverless")

MB = settings.MB
JOBS_DIR = ".jobs"  # per-job scratch (downloaded inputs) under the output folder


def volume_root() -> Path:
    return Path(settings.get().volume)


def allowed_roots() -> list[Path]:
    """Folders a job may name local files in (the network volume, the container's workspace, our outputs)."""
    roots = settings.allowed_roots() or [volume_root(), Path("/workspace")]
    return [Path(r).resolve() for r in [*roots, output_root()]]


def job_roots() -> Roots:
    """The one confinement rule for a job: read from the allowed roots, write run folders into the output
    folder, weights only from the worker's own MODEL_CACHE_DIR; relative paths are on the volume."""
    return Roots.of(read=allowed_roots(), write=[output_root()], weights=[settings.weights_dir()],
                    base=volume_root())


def output_root() -> Path:
    """OUTPUT_DIR, else ``<volume>/output`` (where a pod with the same volume mounted
    at /workspace sees ``/workspace/output``), else ./output."""
    env = settings.get().output_dir
    if env:
        return Path(env)
    vol = volume_root()
    return vol / "output" if vol.is_dir() else Path("output")


def check_storage() -> list[str]:
    """Warnings for a worker whose outputs or weights would live on the container disk (lost, re-downloaded)."""
    vol = volume_root().resolve()
    if not vol.is_dir():
        return [f"no network volume at {vol}: outputs stay on this worker's disk (attach a volume, or upload)"]
    warn = []
    for what, path in (("outputs", output_root()), ("weights", settings.weights_dir())):
        p = path.resolve()
        if p != vol and vol not in p.parents:
            warn.append(f"{what} go to {p}, not onto the volume {vol} -> set "
                        f"{'OUTPUT_DIR' if what == 'outputs' else 'MODEL_CACHE_DIR'}={vol}/{what}")
    return warn


def max_download_bytes() -> int:
    return settings.get().max_download_bytes


# --------------------------------------------------------------------------- job input schema


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


PromptIn = rq.PromptRequest  # the prompt part of the one request model (mask may also be a URL or base64)


class BucketIn(_In):
    endpoint_url: str
    access_id: str
    access_secret: str
    bucket_name: str | None = None
    prefix: str | None = None


class UploadIn(_In):
    put_urls: dict[str, str] = Field(default_factory=dict, description="format -> presigned PUT URL")
    bucket: BucketIn | None = None

    @field_validator("put_urls")
    @classmethod
    def _http(cls, v: dict[str, str]) -> dict[str, str]:
        for fmt, url in v.items():
            if not netfetch.is_url(url):
                raise ValueError(f"put_urls.{fmt} must be an http(s) URL")
        return v


class SplitIn(_In):
    ranges: int | None = Field(None, ge=1, le=1000)
    segment_seconds: float | None = Field(None, gt=0)
    quick_scale: float = Field(0.25, gt=0, le=1, description="scale of the quick pass that carries a mask prompt")
    dispatch: bool = Field(False, description="submit the range jobs to this endpoint (RUNPOD_ENDPOINT_ID/API_KEY)")


class JoinIn(_In):
    plan: str | None = None
    segments: list[str] = Field(default_factory=list)
    formats: list[str] | None = None
    audio: bool = True


class JobIn(_In):
    action: Literal["run", "plan", "join"] = "run"
    video: str | None = None
    prompt: PromptIn | None = None
    outputs: list[str] | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    set: dict[str, Any] = Field(default_factory=dict)
    start_frame: int | None = Field(None, ge=0)
    max_frames: int | None = Field(None, ge=1)
    scale: float | None = Field(None, gt=0, le=1)
    run_name: str | None = None
    upload: UploadIn | None = None
    split: SplitIn | None = None
    join: JoinIn | None = None

    @field_validator("run_name")
    @classmethod
    def _plain(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                safe_name(v, "run_name")
            except ConfigError:
                raise ValueError("must be one plain name: letters, digits, '_', '.', '-' (no '/', no '..')") from None
        return v


def parse_input(raw: Any) -> JobIn:
    if not isinstance(raw, dict):
        raise ConfigError("job input must be a JSON object", 'send {"input": {"video": ..., "prompt": ...}}')
    try:
        job = JobIn.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(rq.format_error(err, "job input"), "see the job input schema in BUILD.md") from None
    if job.action in ("run", "plan") and not job.video:
        raise ConfigError("job input: no video", 'give "video": a path on the volume or an http(s) URL')
    if job.action == "join" and not job.join:
        raise ConfigError("job input: join needs a join section", 'give "join": {"plan": PLAN_DIR}')
    return job


# --------------------------------------------------------------------------- files in and out


def local_path(text: str, what: str) -> Path:
    """A file named by a job: relative = on the volume; absolute = must lie under an allowed root."""
    p = inside(text, allowed_roots(), what, base=volume_root())
    if not p.exists():
        raise InputNotFoundError(f"{what} {text} not found", f"check the path on the volume ({volume_root()})")
    return p


is_url = netfetch.is_url


def download(url: str, dest_dir: Path, limit: int, what: str, name: str | None = None) -> Path:
    """Stream an http(s) URL into ``dest_dir`` (never into memory), at most ``limit`` bytes, through the
    SSRF-safe fetcher. The file is named by us (``name``, else ``<what>`` + a media extension from the URL),
    never after the URL, so a URL cannot plant a ``metadata.json`` or ``plan.json`` on the volume."""
    if name is None:
        suffix = Path(url.split("?", 1)[0]).suffix.lower()
        name = what.replace(" ", "_") + (suffix if suffix in VIDEO_EXTS else ".bin")
    return netfetch.fetch(url, dest_dir / name, limit, what)


def resolve_video(text: str, work: Path) -> Path:
    if is_url(text):
        return download(text, work / "input", max_download_bytes(), "video")
    if "://" in text:
        raise InputNotFoundError(f"video {text}: only http(s) URLs are fetched", "use https:// or a volume path")
    return local_path(text, "video")


def resolve_mask(text: str, work: Path) -> Path:
    """Mask from a path, a URL, a data: URL or bare base64 (written to the job's folder as a PNG).
    URL and base64 masks share one size cap (MATTEPOD_MAX_MASK_MB), checked before decoding."""
    data = None
    limit = settings.get().max_mask_bytes
    if text.startswith("data:"):
        data = text.split(",", 1)[-1]
    elif is_url(text):
        return download(text, work / "prompt", limit, "mask", name="mask.img")
    elif len(text) > 512 and re.fullmatch(r"[A-Za-z0-9+/=\s]+", text):
        data = text
    if data is not None:
        if len(data) * 3 // 4 > limit:
            raise MaskError(f"prompt.mask base64 is over the {limit / MB:.0f} MB limit",
                            "send a smaller mask (a PNG of the frame size), or put it on the volume")
        try:
            raw = base64.b64decode(data, validate=False)
        except (binascii.Error, ValueError):
            raise MaskError("prompt.mask is neither a path, a URL nor valid base64", "send a PNG as base64") from None
        if not raw.startswith(b"\x89PNG") and not raw[:3] == b"\xff\xd8\xff":
            raise MaskError("prompt.mask base64 is not a PNG or JPEG image", "encode the mask PNG file's bytes")
        path = work / "prompt" / "mask.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw)
        return path
    return local_path(text, "mask")


def upload_outputs(spec: UploadIn | None, run_dir: Path, outputs: dict[str, str], job_id: str) -> dict[str, str]:
    """PUT each output to its presigned URL, and/or copy them to an S3-compatible bucket (runpod's rp_upload)."""
    if spec is None:
        return {}
    done: dict[str, str] = {}
    unknown = sorted(set(spec.put_urls) - set(outputs))
    if unknown:
        raise ConfigError(f"upload.put_urls names {unknown}, not outputs of this job ({sorted(outputs)})",
                          "give a URL per output format the job writes")
    for fmt, url in spec.put_urls.items():
        path = run_dir / outputs[fmt]
        if path.is_dir():
            raise ConfigError(f"{fmt} is a folder of images; a PUT URL takes one file", "upload a video format")
        status = netfetch.put(url, path, f"upload of {fmt}")
        if status >= 300:  # the same neutral text as every network failure; the status goes to the log
            log.warning("upload of %s: HTTP %s", fmt, status)
            raise RunStateError(f"upload of {fmt}: the URL could not be used",
                                "check the presigned PUT URL (expired? wrong method?); the file stays in "
                                f"{path}")
        done[fmt] = url.split("?", 1)[0]
    if spec.bucket is not None:
        if importlib.util.find_spec("boto3") is None:
            raise ConfigError("upload.bucket needs boto3 in the worker image", "pip install boto3 in the image")
        from runpod.serverless.utils import rp_upload

        netfetch.check_url(spec.bucket.endpoint_url, "upload.bucket.endpoint_url")  # no internal endpoints

        creds = {"endpointUrl": spec.bucket.endpoint_url, "accessId": spec.bucket.access_id,
                 "accessSecret": spec.bucket.access_secret}
        for fmt, name in outputs.items():
            path = run_dir / name
            if path.is_file():
                done[fmt] = rp_upload.upload_file_to_bucket(
                    name, str(path), creds, spec.bucket.bucket_name, spec.bucket.prefix or job_id)
    return done


# --------------------------------------------------------------------------- models once per worker


class EnginePool:
    """Engines kept between jobs, keyed by their engine config (weights load once per worker).

    A job *borrows* engines for its run (VR180 borrows two) and gives them back at the end, so two jobs never
    share one engine's memory. At most ``keep`` different engine configs stay loaded (least recently used go).
    """

    def __init__(self, keep: int = 2):
        self.keep = keep
        self._free: OrderedDict[str, list[Engine]] = OrderedDict()
        self._lock = threading.Lock()
        self.created = 0

    @staticmethod
    def key(cfg: cfgmod.Config) -> str:
        return json.dumps([cfg.engine.model_dump(mode="json"), str(cfg.resolved_weights_dir())], sort_keys=True)

    @contextmanager
    def lease(self) -> Iterator[Any]:
        from mattepod.pipeline import build_engine

        borrowed: list[tuple[str, Engine]] = []

        def factory(cfg: cfgmod.Config) -> Engine:
            k = self.key(cfg)
            with self._lock:
                free = self._free.get(k)
                engine = free.pop() if free else None
            if engine is None:
                engine = build_engine(cfg)
                self.created += 1
            borrowed.append((k, engine))
            return engine

        try:
            yield factory
        finally:
            with self._lock:
                for k, engine in borrowed:
                    self._free.setdefault(k, []).append(engine)
                    self._free.move_to_end(k)
                while len(self._free) > self.keep:
                    self._free.popitem(last=False)

    def clear(self) -> int:
        """Forget every idle engine (after a CUDA fault they hold a dead context); returns how many."""
        with self._lock:
            count = sum(len(engines) for engines in self._free.values())
            self._free.clear()
        return count

    def preload(self, cfg: cfgmod.Config) -> None:
        """Build the engine before the first job (worker start), so no job pays for loading weights."""
        with self.lease() as factory:
            factory(cfg)


ENGINES = EnginePool(settings.get().engine_cache)


# --------------------------------------------------------------------------- progress


class ProgressRelay:
    """Pipeline progress events -> ``runpod.serverless.progress_update`` (throttled; stage changes always)."""

    def __init__(self, job: dict[str, Any], interval: float | None = None, prefix: str = ""):
        self.job = job
        self.interval = settings.get().progress_interval if interval is None else interval
        self.prefix = prefix
        self._last = 0.0
        self._stage: str | None = None
        self.sent = 0

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("event") != "progress":
            return
        now = time.monotonic()
        stage = self.prefix + str(event.get("stage"))
        final = event.get("frame") == event.get("total")
        if stage == self._stage and now - self._last < self.interval and not final:
            return
        self._last, self._stage = now, stage
        total = event.get("total") or 0
        payload = {"stage": stage, "frame": event.get("frame"), "total": total, "fps": event.get("fps"),
                   "eta": event.get("eta"),
                   "percent": round(100.0 * (event.get("frame") or 0) / total, 1) if total else None}
        self.send(payload)

    def send(self, payload: dict[str, Any]) -> None:
        self.sent += 1
        # Off RunPod (local test mode without a webhook) there is nowhere to post: log only.
        if settings.get().webhook_post_output:
            import runpod

            runpod.serverless.progress_update(self.job, payload)
        log.info("progress %s", json.dumps(payload))


# --------------------------------------------------------------------------- actions


def build_config(spec: JobIn, video: Path | None, mask: Path | None, out_root: Path) -> cfgmod.Config:
    """Job input -> a validated, confined Config through the one front door (``mattepod.request``): nested
    ``config`` first, then the job's own keys, then ``set``; the worker fixes the input (the job's ``video``),
    the output folder and the weights, and every path key is confined after the last override."""
    if not isinstance(spec.config, dict):
        raise ConfigError("job input: config must be an object of config keys", "see CONFIG.md")
    prompt = spec.prompt
    if prompt is not None and mask is not None:
        prompt = prompt.model_copy(update={"mask": str(mask)})
    req = rq.RunRequest(prompt=prompt, outputs=spec.outputs, start_frame=spec.start_frame,
                        max_frames=spec.max_frames, scale=spec.scale, config=spec.config, overrides=spec.set)
    fixed: dict[str, Any] = {"output_dir": str(out_root), "weights_dir": None}
    if video is not None:
        fixed["input"] = str(video)
    cfg = rq.to_config(req, roots=job_roots(), fixed=fixed, source="job input")
    rq.require_prompt(cfg)
    return cfg


def run_name(stem: str, job_id: str, suffix: str = "") -> str:
    """The one naming of a worker's run folder: ``<stem>_<job id><suffix>`` (a retried job finds it again)."""
    from mattepod.paths import slug

    return safe_name(f"{slug(stem)}_{job_id}{suffix}", "run folder name")


def _stem(spec: JobIn, video: Path) -> str:
    """The name a run is called after: the video's, or for a URL the last part of its path (the download
    itself is always called ``video.<ext>``)."""
    if spec.video and is_url(spec.video):
        return Path(spec.video.split("?", 1)[0]).stem or video.stem
    return video.stem


def _job_dirs(spec: JobIn, job_id: str, stem: str, suffix: str = "") -> tuple[Path, Path]:
    root = output_root()
    name = spec.run_name or run_name(stem, job_id, suffix)
    run_dir = inside(root / name, [root], "run_name")  # a symlink named like a run may not lead outside
    if run_dir == root.resolve() or run_dir.parent != root.resolve():
        raise InputNotFoundError(f"run_name {name} is not a folder of its own in {root}", "choose another name")
    return root, run_dir


def _work_dir(job_id: str) -> Path:
    return output_root() / JOBS_DIR / safe_name(job_id, "job id")


def _summary(meta: dict[str, Any]) -> dict[str, Any]:
    keep = ("status", "frames", "input", "timings", "encoder", "weights", "error", "previews", "audio", "segments")
    return {k: meta[k] for k in keep if k in meta}


def _run_pipeline(cfg: cfgmod.Config, run_dir: Path, relay: ProgressRelay) -> dict[str, Any]:
    """Run (or resume, or return) the run in ``run_dir``: a retried job id lands on its own folder again."""
    from mattepod import pipeline

    from mattepod.jobs import next_action  # the one resume policy

    action = next_action(run_dir)
    if action == "skip":
        log.info("run %s already completed; returning it", run_dir)
        return read_json(run_dir / METADATA) or {}
    resume = run_dir if action == "resume" else None
    if resume is not None and (run_dir / "config.yaml").is_file():  # a resumed run's own paths obey the rule too
        confine(cfgmod.load(run_dir / "config.yaml"), job_roots())
    with ENGINES.lease() as factory:
        opts = pipeline.RunOptions(run_dir=None if resume else run_dir, resume=resume, progress_bar=False,
                                   keep_prompt_models=True,
                                   listener=relay, engine_factory=factory)
        pipeline.run(cfg, opts)
    return read_json(run_dir / METADATA) or {}


def do_run(job: dict[str, Any], spec: JobIn) -> dict[str, Any]:
    job_id = job_id_of(job)
    work = _work_dir(job_id)
    video = resolve_video(spec.video or "", work)
    mask = resolve_mask(spec.prompt.mask, work) if spec.prompt and spec.prompt.mask else None
    root, run_dir = _job_dirs(spec, job_id, _stem(spec, video))
    cfg = build_config(spec, video, mask, root)
    relay = ProgressRelay(job)
    meta = _run_pipeline(cfg, run_dir, relay)
    outputs = meta.get("outputs") or {}
    uploads = upload_outputs(spec.upload, run_dir, outputs, job_id)
    result = {"status": meta.get("status"), "run_dir": str(run_dir),
              "outputs": {fmt: str(run_dir / name) for fmt, name in outputs.items()},
              "uploads": uploads, "metadata": _summary(meta), "progress_updates": relay.sent}
    write_atomic(run_dir / "serverless_result.json", json.dumps(result, indent=2, default=str))
    if meta.get("status") == "completed" and work.is_dir():
        shutil.rmtree(work, ignore_errors=True)  # downloaded inputs: the volume is not a cache (kept on failure)
    return result


def do_plan(job: dict[str, Any], spec: JobIn) -> dict[str, Any]:
    """Split into ranges, make each range's prompt, write plan.json; return the range jobs and the join job."""
    from mattepod.media.probe import probe

    job_id = job_id_of(job)
    split = spec.split or SplitIn(ranges=2)
    work = _work_dir(job_id)
    video = resolve_video(spec.video or "", work)
    mask = resolve_mask(spec.prompt.mask, work) if spec.prompt and spec.prompt.mask else None
    root, plan_dir = _job_dirs(spec, job_id, _stem(spec, video), "_split")
    cfg = build_config(spec, video, mask, root)
    images = sorted(set(cfg.outputs.formats) - splitmod.video_formats())
    if images:
        raise ConfigError(f"split cannot join {images} (image sequences) without re-encoding",
                          f"choose video outputs: {', '.join(sorted(splitmod.video_formats()))}")
    info = probe(video)
    count = info.frame_count - cfg.start_frame
    if cfg.max_frames:
        count = min(count, cfg.max_frames)
    ranges = splitmod.plan_ranges(count, float(info.fps), cfg.start_frame, split.ranges, split.segment_seconds,
                                  min_frames=max(1, round(float(info.fps))))
    relay = ProgressRelay(job, prefix="quick pass: ")

    def quick_pass(qcfg: cfgmod.Config, run_dir: Path) -> Path:
        meta = _run_pipeline(qcfg, run_dir, relay)
        return run_dir / meta["outputs"]["alpha"]

    plan_dir.mkdir(parents=True, exist_ok=True)
    prompts, notes = splitmod.range_prompts(cfg, ranges, plan_dir, quick_pass, split.quick_scale)
    base = cfg.model_dump(mode="json", exclude_defaults=True,
                          exclude={"input", "output_dir", "prompt", "start_frame", "max_frames"})
    base.setdefault("outputs", {})["copy_audio"] = False  # the join copies the source audio once, whole length
    jobs, segments = [], []
    for r, prompt in zip(ranges, prompts):
        name = safe_name(f"{plan_dir.name}.range_{r.index:03d}", "range run name")
        jobs.append({"action": "run", "video": str(video), "start_frame": r.start_frame, "max_frames": r.frames,
                     "config": {**base, "prompt": prompt}, "run_name": name})
        segments.append(str(root / name))
    join_job = {"action": "join", "join": {"plan": str(plan_dir)}}
    if spec.upload is not None:
        join_job["upload"] = spec.upload.model_dump(mode="json", exclude_none=True)
    plan = {"video": str(video), "ranges": splitmod.ranges_json(ranges), "segments": segments,
            "prompts": notes, "fps": float(info.fps), "formats": list(cfg.outputs.formats),
            "audio": bool(cfg.outputs.copy_audio and info.audio)}
    write_atomic(plan_dir / "plan.json", json.dumps(plan, indent=2))
    result = {"status": "planned", "plan_dir": str(plan_dir), "ranges": plan["ranges"], "prompts": notes,
              "jobs": jobs, "join": join_job}
    if split.dispatch:
        result["dispatched"] = dispatch(jobs)
    return result


def dispatch(jobs: list[dict[str, Any]]) -> list[str]:
    """Submit the range jobs to this same endpoint; RunPod's queue gives each to the next free worker."""
    env = settings.get()
    endpoint_id, api_key = env.runpod_endpoint_id, env.runpod_api_key
    if not endpoint_id or not api_key:
        raise ConfigError("split.dispatch needs RUNPOD_ENDPOINT_ID and RUNPOD_API_KEY in the worker's env",
                          "set them on the endpoint, or submit the returned jobs yourself")
    import runpod

    endpoint = runpod.Endpoint(endpoint_id, api_key=api_key)
    return [endpoint.run({"input": inp}).job_id for inp in jobs]


def run_folder(text: str, what: str) -> Path:
    """A run folder a join reads: inside the output folder (where this worker makes run folders), never in a
    job's scratch folder (``.jobs``: downloads land there), and existing."""
    root = output_root().resolve()
    p = inside(text, [root], what, base=volume_root())
    if JOBS_DIR in p.relative_to(root).parts or p == root:
        raise InputNotFoundError(f"{what} {text} is not a run folder", "give a run_dir or plan_dir a job returned")
    if not p.is_dir():
        raise InputNotFoundError(f"{what} {text} not found", "give a run_dir or plan_dir a job returned")
    return p


def do_join(job: dict[str, Any], spec: JobIn) -> dict[str, Any]:
    assert spec.join is not None
    job_id = job_id_of(job)
    j = spec.join
    audio_from = None
    if j.plan:
        plan_dir = run_folder(j.plan, "join.plan")
        plan = read_json(plan_dir / "plan.json")
        if not isinstance(plan, dict) or not isinstance(plan.get("segments"), list):
            raise RunStateError(f"{plan_dir} holds no plan.json", "give the plan_dir a plan job returned")
        # a plan file is data on the volume like any other: every path in it obeys the same rule
        segments = [run_folder(str(seg), "plan.json segment") for seg in plan["segments"]]
        if plan.get("audio") and j.audio:
            audio_from = str(local_path(str(plan.get("video")), "plan.json video"))
        out_dir = plan_dir / "joined" if not spec.run_name else _job_dirs(spec, job_id, "joined")[1]
    elif j.segments:
        segments = [run_folder(seg, "join segment") for seg in j.segments]
        out_dir = _job_dirs(spec, job_id, "joined")[1]
        if spec.video and j.audio:
            audio_from = str(resolve_video(spec.video, _work_dir(job_id)))
    else:
        raise ConfigError("join needs plan or segments", 'give "join": {"plan": PLAN_DIR}')
    meta = splitmod.join(segments, out_dir, j.formats, audio_from)
    uploads = upload_outputs(spec.upload, out_dir, meta["outputs"], job_id)
    return {"status": meta["status"], "run_dir": str(out_dir),
            "outputs": {fmt: str(out_dir / name) for fmt, name in meta["outputs"].items()},
            "uploads": uploads, "metadata": _summary(meta)}


def job_id_of(job: dict[str, Any]) -> str:
    """The job's id as one safe folder name (``.``/``..``/slashes would leave ``.jobs/``)."""
    return safe_name(str(job.get("id", "local")), "job id")


def handler(job: dict[str, Any]) -> dict[str, Any]:
    """The RunPod handler. User errors come back as ``{"error": ..., "error_type", "exit_code"}``."""
    try:
        job_id_of(job)
        spec = parse_input(job.get("input"))
        if spec.action == "join":
            return do_join(job, spec)
        if spec.action == "plan" or spec.split is not None:
            return do_plan(job, spec)
        return do_run(job, spec)
    except MattePodError as err:
        log.error("job %s failed: %s", job.get("id"), err)
        return {"error": str(err), "error_type": type(err).__name__, "exit_code": err.exit_code}


def preload_from_env() -> None:
    """MATTEPOD_PRELOAD=1 builds the configured engine at worker start (config: MATTEPOD_CONFIG or defaults)."""
    env = settings.get()
    if not env.preload:
        return
    cfg = cfgmod.load(env.config)
    t0 = time.monotonic()
    ENGINES.preload(cfg)
    log.info("preloaded engine %s in %.1fs", cfg.engine.name, time.monotonic() - t0)


def main() -> None:
    import runpod

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for line in check_storage():
        log.warning(line)
    preload_from_env()
    from mattepod import gpuhealth

    runpod.serverless.start({"handler": gpuhealth.guard(handler, ENGINES.clear)})  # CUDA fault -> refresh_worker


if __name__ == "__main__":
    main()
