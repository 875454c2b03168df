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
from mattepod import request as rq
from mattepod.errors import MattePodError


def _fail(err: BaseException) -> gr.Error:
    return gr.Error(mediamod.public_message(err), print_exception=False)


def parse_points(text: str | list | None) -> list[list[float]]:
    """Points as JSON ``[[x, y, label], ...]`` / ``[{"x":..,"y":..,"label":..}]`` or ``"x,y,l;x,y,l"``
    (``mattepod.request.parse_points``, the one parser of every face)."""
    try:
        return [[p["x"], p["y"], p["label"]] for p in rq.parse_points(text)]
    except MattePodError as err:
        raise h.PageError(mediamod.public_message(err)) from None


def parse_box(text: str | None) -> list[float] | None:
    try:
        return rq.parse_box(text)
    except MattePodError as err:
        raise h.PageError(mediamod.public_message(err)) from None


def submit_job(app: AppState, video, input_path, points, box, prompt_frame, mask, options) -> dict:
    """The submit_job endpoint's work (documented on the endpoint in ``register``)."""
    from app.state import FrameRequest

    try:
        src = mediamod.adopt_upload(video, app.roots) if video else h.resolve_input(app, input_path)
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
        mask: a mask PNG (white = subject); options: JSON of config keys, e.g. {"engine.name": "mask"}.
        Several subjects: leave points/box/mask empty and give options {"prompt.subjects": [{"name": "a",
        "points": [{"x": 10, "y": 20}]}, {"name": "b", "box": [...]}, ...]} (clicks, boxes or auto_person)."""
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
