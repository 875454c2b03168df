"""Named API endpoints for ``gradio_client`` (README.md, CONFIG.md): submit, status, wait, files, cancel, list.

They share the page's request building (``handlers.submit``) and job layer; only the transport differs:
hidden components carry the arguments, and errors are one line with no server paths.
"""

from __future__ import annotations

import functools

import gradio as gr

from app import handlers as h
from app import media as mediamod
from app.server import AppState
from mattepod import jobs
from mattepod.errors import MattePodError


def _fail(err: BaseException) -> gr.Error:
    return gr.Error(mediamod.public_message(err), print_exception=False)


def parse_points(text: str | list | None) -> list[list[float]]:
    """Points as JSON ``[[x, y, label], ...]`` / ``[{"x":..,"y":..,"label":..}]`` or ``"x,y,l;x,y,l"``."""
    import json

    if text is None or text == "" or text == []:
        return []
    data = text
    if isinstance(text, str):
        try:
            data = json.loads(text)
        except ValueError:
            data = [p.split(",") for p in text.split(";") if p.strip()]
    out = []
    for item in data:
        if isinstance(item, dict):
            item = [item.get("x"), item.get("y"), item.get("label", 1)]
        try:
            x, y = float(item[0]), float(item[1])
            label = int(item[2]) if len(item) > 2 else 1
        except (TypeError, ValueError, IndexError):
            raise h.PageError(f"point {item!r} is not [x, y, label] -> give numbers, label 1 (subject) or 0") from None
        if label not in (0, 1):
            raise h.PageError(f"point label {label} must be 1 (subject) or 0 (not subject)")
        out.append([x, y, label])
    return out


def parse_box(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        vals = [float(v) for v in str(text).replace(";", ",").strip("[]() ").split(",")]
    except ValueError:
        vals = []
    if len(vals) != 4:
        raise h.PageError(f"box {text!r} is not x0,y0,x1,y1")
    return vals


def submit_job(app: AppState, video, input_path, points, box, prompt_frame, mask, options) -> dict:
    """The submit_job endpoint's work (documented on the endpoint in ``register``)."""
    from app.state import FrameRequest

    try:
        src = mediamod.adopt_upload(video, app.roots) if video else jobs.inside(
            input_path, [app.roots.input, app.roots.output])
    except MattePodError as err:
        raise h.PageError(mediamod.public_message(err)) from None
    opts = h.parse_options(options)
    m = None
    if mask:  # full-frame pixels, like the CLI (VR180: the master eye's half is the prompt)
        try:
            info = mediamod.probe_media(str(src))
            m = mediamod.mask_from_file(mask, (info.width, info.height))
        except MattePodError as err:
            raise h.PageError(mediamod.public_message(err)) from None
    frame = FrameRequest(int(prompt_frame or 0), m, parse_points(points), parse_box(box))
    return h.submit(app, str(src), [frame], opts).to_dict()


def register(app: AppState) -> None:
    """Add the hidden API components and named endpoints to the Blocks being built."""

    def guarded(fn):
        @functools.wraps(fn)  # gradio_client names the parameters from the signature
        def call(*args):
            try:
                return fn(*args)
            except (h.PageError, MattePodError) as err:
                raise _fail(err) from None

        return call

    with gr.Row(visible=False):
        api_video = gr.File(label="video", type="filepath")
        api_mask = gr.File(label="mask", type="filepath")
        api_input = gr.Textbox(label="input_path")
        api_points = gr.Textbox(label="points")
        api_box = gr.Textbox(label="box")
        api_frame = gr.Number(label="prompt_frame", precision=0)
        api_options = gr.Textbox(label="options")
        api_job = gr.Textbox(label="job_id")
        api_json = gr.JSON(label="result")
        api_files_out = gr.File(label="files", file_count="multiple")
        api_btn = gr.Button()

    def submit(video, input_path, points, box, prompt_frame, mask, options):
        """Queue a job. video: an uploaded file (handle_file) or empty; input_path: a file already in the
        input/output volume; points: "[[x,y,label],...]" in pixels of the prompt frame; box: "x0,y0,x1,y1";
        mask: a mask PNG (white = subject); options: JSON of config keys, e.g. {"engine.name": "mask"}."""
        return submit_job(app, video, input_path, points, box, prompt_frame, mask, options)

    def status(job_id):
        """Status of one job: status, position, frame/total/fps/eta, elapsed, error, outputs, previews."""
        return app.manager.status(job_id).to_dict()

    def wait(job_id):
        """Block until the job ends (or 10 minutes pass); returns its status."""
        app.manager.status(job_id)
        app.manager.wait(job_id, timeout=600)
        return app.manager.status(job_id).to_dict()

    def files(job_id):
        """The job's output files and preview PNGs (downloaded by gradio_client)."""
        return app.manager.status(job_id).files() or None

    def cancel(job_id):
        """Stop a queued or running job (SIGTERM to its process group; it stops at a frame and can resume)."""
        return app.manager.cancel(job_id).to_dict()

    def resume(job_id):
        """Queue an interrupted / cancelled job again (the CLI's run --resume continues from its checkpoint)."""
        return app.manager.resume(job_id).to_dict()

    def list_jobs():
        """Every job in the output folder, newest first."""
        return [j.to_dict() for j in app.manager.list_jobs()]

    api_btn.click(guarded(submit), [api_video, api_input, api_points, api_box, api_frame, api_mask, api_options],
                  api_json, api_name="submit_job", concurrency_limit=None)
    api_btn.click(guarded(status), api_job, api_json, api_name="job_status", concurrency_limit=None)
    api_btn.click(guarded(wait), api_job, api_json, api_name="wait_job", concurrency_limit=None)
    api_btn.click(guarded(files), api_job, api_files_out, api_name="job_files", concurrency_limit=None)
    api_btn.click(guarded(cancel), api_job, api_json, api_name="cancel_job", concurrency_limit=None)
    api_btn.click(guarded(resume), api_job, api_json, api_name="resume_job", concurrency_limit=None)
    api_btn.click(guarded(list_jobs), None, api_json, api_name="list_jobs", concurrency_limit=None)
