"""Every environment variable MattePod's faces read, typed and documented in one place.

Why: the same variables (OUTPUT_DIR above all) were read in five modules with five fallbacks. Here each one is
a field named after its variable, validated by pydantic (a bad value is one ConfigError naming the
variable); :func:`get` reads the environment afresh on each call (cheap), so a test's ``monkeypatch.setenv``
and a long-running worker's environment are both seen as they are now. CONFIG.md lists them
(a test checks that every field is documented).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mattepod.errors import ConfigError

MB = 1024 * 1024


class Settings(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    output_dir: str | None = Field(None, alias="OUTPUT_DIR", description="where run folders are written "
                                   "(the default of output_dir; the app's and the worker's output folder)")
    input_dir: str | None = Field(None, alias="INPUT_DIR", description="the app's input folder (uploads)")
    model_cache_dir: str | None = Field(None, alias="MODEL_CACHE_DIR", description="model weights folder")
    volume: str = Field("/runpod-volume", alias="RUNPOD_VOLUME_PATH",
                        description="the serverless network volume; relative job paths point here")
    allowed_roots: str | None = Field(None, alias="MATTEPOD_ALLOWED_ROOTS",
                                      description="folders (os.pathsep list) a request may name files in; "
                                      "serverless default: the volume and /workspace; CLI/batch: unset = no limit")
    max_download_mb: float = Field(4096, gt=0, alias="MATTEPOD_MAX_DOWNLOAD_MB",
                                   description="size limit of a video fetched by URL")
    max_mask_mb: float = Field(64, gt=0, alias="MATTEPOD_MAX_MASK_MB",
                               description="size limit of a mask (URL download or decoded base64)")
    allow_private_urls: str | None = Field(None, alias="MATTEPOD_ALLOW_PRIVATE_URLS",
                                           description="1 = fetch URLs that resolve to private/loopback/"
                                           "link-local addresses too (a self-hosted setup with a local file "
                                           "server), or a comma list of networks allowed, e.g. 10.0.0.0/8")
    progress_interval: float = Field(2.0, ge=0, alias="MATTEPOD_PROGRESS_INTERVAL",
                                     description="seconds between serverless progress updates")
    engine_cache: int = Field(2, ge=0, alias="MATTEPOD_ENGINE_CACHE",
                              description="engine configs kept loaded per serverless worker")
    preload: bool = Field(False, alias="MATTEPOD_PRELOAD", description="load the engine at worker start")
    config: str | None = Field(None, alias="MATTEPOD_CONFIG", description="base generate.yaml of the app/worker")
    max_jobs: int = Field(1, ge=1, alias="MATTEPOD_MAX_JOBS", description="app jobs running at once")
    job_script: str | None = Field(None, alias="MATTEPOD_JOB_SCRIPT", description="the app's job entry point")
    run_cmd: str | None = Field(None, alias="MATTEPOD_RUN_CMD", description="batch: the `mattepod run` command")
    # the web app (app/): read here so the page and the jobs agree on one typed view of the environment
    gradio_server_name: str = Field("0.0.0.0", alias="GRADIO_SERVER_NAME", description="interface the app listens on")
    gradio_server_port: int = Field(7860, ge=1, le=65535, alias="GRADIO_SERVER_PORT", description="the app's port")
    gradio_root_path: str | None = Field(None, alias="GRADIO_ROOT_PATH", description="public path prefix")
    gradio_max_file_size: str = Field("20gb", alias="GRADIO_MAX_FILE_SIZE", description="largest upload")
    gradio_username: str | None = Field(None, alias="GRADIO_USERNAME", description="log-in user")
    gradio_password: str | None = Field(None, alias="GRADIO_PASSWORD", repr=False, description="log-in password")
    app_password: str | None = Field(None, alias="APP_PASSWORD", repr=False,
                                     description="log-in password with any user name")
    gradio_temp_dir: str | None = Field(None, alias="GRADIO_TEMP_DIR", description="Gradio's upload cache")
    webhook_post_output: str | None = Field(None, alias="RUNPOD_WEBHOOK_POST_OUTPUT",
                                            description="set by RunPod: where progress updates are posted")
    runpod_endpoint_id: str | None = Field(None, alias="RUNPOD_ENDPOINT_ID",
                                           description="split.dispatch: this endpoint's id")
    runpod_api_key: str | None = Field(None, alias="RUNPOD_API_KEY", repr=False,
                                       description="split.dispatch / the split client: the RunPod API key")

    @property
    def max_download_bytes(self) -> int:
        return int(self.max_download_mb * MB)

    @property
    def max_mask_bytes(self) -> int:
        return int(self.max_mask_mb * MB)


def get() -> Settings:
    """The settings as the environment holds them now (empty values count as unset)."""
    env = {k: v for k, v in os.environ.items() if v != ""}
    try:
        return Settings.model_validate(env)
    except ValidationError as err:
        e = err.errors()[0]
        name = ".".join(str(p) for p in e["loc"])  # validated by alias: the loc is the variable's name
        raise ConfigError(f"environment variable {name}={e.get('input')!r}: {e['msg']}",
                          f"fix or unset {name} (see CONFIG.md)") from None


def default_output_dir() -> str:
    """The one OUTPUT_DIR rule: a config's output_dir left at its default means $OUTPUT_DIR when set."""
    return get().output_dir or "output"


def weights_dir() -> Path:
    return Path(get().model_cache_dir or "weights")


def allowed_roots() -> list[Path] | None:
    """MATTEPOD_ALLOWED_ROOTS as paths, or None when unset."""
    raw = get().allowed_roots
    if not raw:
        return None
    return [Path(r) for r in raw.split(os.pathsep) if r]
