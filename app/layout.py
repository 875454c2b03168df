"""The page: components and their wiring. Behaviour lives in app/handlers.py; this file only says which
control calls which handler and redraws the prompt area from the one PromptState (``handlers.render``).

Layout: the frame, its tools (+ / − / box, Undo, Clear), the frame slider, Run and the one job status line
sit together in the first column (on a phone: one stack, tools right above the image; at 1920×1080: Run
visible without scrolling). Video choice, VR180, mask upload, brush and options are in the second column;
results (before/after, the playable previews, downloads) follow below.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

import gradio as gr

from app import api as apimod
from app import handlers as h
from app import media as mediamod
from app import state as st
from app.server import AppState

UI_FORMATS = ["alpha", "green", "prores", "webm", "png", "alpha16", "packed", "idmap"]  # idmap: with subjects (#16)
TOOLS = {"+ subject": "add", "− not subject": "remove", "▭ box": "box"}
# The frame is scaled down to fit (never up: Gradio maps clicks back assuming scale <= 1).
CSS = """
#frame { height: auto !important; }
#frame .image-container, #frame .image-frame { height: auto !important; }
#frame .image-container > button, #frame .image-frame { width: 100% !important; }
#frame img { width: auto !important; height: auto !important; max-width: 100% !important;
             max-height: max(220px, calc(100vh - 500px)) !important; object-fit: contain; margin: 0 auto;
             display: block; }
#tools { align-items: center; gap: 6px; }
#tools button { min-width: 64px; }
#run-row button { min-width: 90px; }
#run-status { min-height: 1.6em; }
#preview-gallery.stale { opacity: 0.35; }
#preview-gallery .thumbnail-item { aspect-ratio: 16 / 10 !important; }
#preview-gallery .fixed-height { min-height: 0 !important; }
#page-message { color: var(--body-text-color-subdued); min-height: 1.2em; }
@media (max-width: 640px) {
  #frame img { max-height: 55vh !important; }
  #preview-gallery .grid-container { grid-template-columns: repeat(2, minmax(100px, 1fr)) !important; }
}
"""
CONFIRM_CANCEL = "Stop this job? It stops at the next frame and can be resumed later."


class FrameSlider(gr.Slider):
    """A slider whose typed number is clamped to the video, not refused: typing 500 on a 20-frame clip goes
    to the last frame (gr.Slider would raise 'Value 500 is greater than maximum' and leave the box at 500
    while the track shows 19 -- the disagreement of defect 1)."""

    def get_block_name(self) -> str:
        return "slider"  # drawn by Gradio's own slider

    def preprocess(self, payload: float | None) -> float:
        try:
            value = float(payload if payload is not None else 0)
        except (TypeError, ValueError):
            value = 0.0
        return value  # handlers.show_frame clamps it to the video's frames


def guard(fn: Callable) -> Callable:
    """A handler refusal becomes one toast with one line (no server path), never a traceback."""

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except h.PageError as err:
                raise gr.Error(str(err), print_exception=False) from None

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except h.PageError as err:
            raise gr.Error(str(err), print_exception=False) from None

    return wrapper


def build_app(app: AppState) -> gr.Blocks:
    roots = app.roots
    # Finished outputs are served from the output volume as they are, not copied into Gradio's cache
    # (a VR180 master can be many GB). Auth still applies to these files.
    gr.set_static_paths([str(roots.output)])
    default_model = app.default_sam_model()
    with gr.Blocks(title="MattePod") as demo:
        ps_state = gr.State(st.PromptState(mode=app.base.stereo.mode, master=app.base.stereo.master,
                                           layout=app.base.stereo.layout))
        job_id = gr.State("")
        shown_final = gr.State("")  # the job whose final results are on the page (drawn once, not every tick)
        # the browser keeps only keys: its last job, its SAM 2 size and the random name its prompt is saved
        # under on the output volume (app/persist.py), so a reload / closed tab / pod restart loses nothing
        saved = gr.BrowserState({"job": "", "sam2_model": "", "prompt": ""}, storage_key="mattepod",
                                secret=app.prompts.secret())

        with gr.Tab("Matte"):
            with gr.Row(equal_height=False):
                with gr.Column(scale=3, min_width=320):
                    with gr.Row(elem_id="source-row"):
                        upload = gr.UploadButton("Upload a video", file_types=sorted(mediamod.VIDEO_EXTS),
                                                 type="filepath", elem_id="upload", scale=1, min_width=140)
                        existing = gr.Dropdown(choices=[], label="…or a file in the volume", elem_id="existing",
                                               scale=3, min_width=160)
                        rescan = gr.Button("↻", scale=0, min_width=40, elem_id="rescan")
                    media_md = gr.Markdown("No video loaded.", elem_id="media-info")
                    with gr.Row(elem_id="tools"):
                        tool = gr.Radio(list(TOOLS), value="+ subject", show_label=False, elem_id="tool",
                                        container=False, scale=3, min_width=200)
                        undo = gr.Button("Undo", elem_id="undo", scale=0, min_width=64, size="sm")
                        clear = gr.Button("Clear", elem_id="clear", scale=0, min_width=64, size="sm")
                        add_subject = gr.Button("Add subject", elem_id="add-subject", scale=0, min_width=100,
                                                size="sm")  # several subjects, a matte each (#16)
                    frame_img = gr.Image(label="Click on the subject", interactive=False, type="numpy",
                                         elem_id="frame", buttons=["fullscreen"], show_label=False)
                    message = gr.Markdown("", elem_id="page-message")
                    frame_slider = FrameSlider(0, 1, value=0, step=1, label="Frame (prompts stay on their frame)",
                                             elem_id="frame-slider")
                    with gr.Row(elem_id="run-row"):
                        run_btn = gr.Button("Run", variant="primary", elem_id="run", interactive=False)
                        preview_btn = gr.Button("Preview", elem_id="preview", interactive=False)  # issue 13
                        cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel", interactive=False)
                        resume_btn = gr.Button("Resume", elem_id="resume", interactive=False)
                    with gr.Row(visible=False, elem_id="confirm-cancel") as confirm_row:
                        gr.Markdown(CONFIRM_CANCEL)
                        confirm_yes = gr.Button("Stop it", variant="stop", elem_id="confirm-yes", size="sm")
                        confirm_no = gr.Button("Keep running", elem_id="confirm-no", size="sm")
                    run_md = gr.Markdown("", elem_id="run-status")
                    # preview (issue 13): the matte on a few frames after the prompt, from a short low-res run
                    preview_md = gr.Markdown("", elem_id="preview-status")
                    preview_gallery = gr.Gallery(label="Preview", columns=4, rows=1, height="auto", visible=False,
                                                 elem_id="preview-gallery", object_fit="contain")
                    preview_stop = gr.Button("Stop preview", size="sm", visible=False, elem_id="preview-stop")
                with gr.Column(scale=2, min_width=300):
                    prompt_md = gr.Markdown("", elem_id="prompt-info")
                    sam_md = gr.Markdown("", elem_id="sam-status")
                    mode = gr.Radio(["mono", "vr180"], value=app.base.stereo.mode, label="Mode", elem_id="mode")
                    with gr.Group(visible=app.base.stereo.mode == "vr180", elem_id="vr-options") as vr_group:
                        with gr.Row():
                            master = gr.Radio(["left", "right"], value=app.base.stereo.master,
                                              label="VR180 master eye (shown)", elem_id="master")
                            layout = gr.Radio(["auto", "sbs", "tb"], value=app.base.stereo.layout,
                                              label="Eye layout", elem_id="layout")
                        layout_md = gr.Markdown("", elem_id="vr-layout")
                    mask_upload = gr.File(label="Mask PNG for this frame (white = subject)", file_types=["image"],
                                          type="filepath", elem_id="mask-upload", height=110)
                    with gr.Accordion("Brush: paint (green) or erase (red) the mask", open=False):
                        editor = gr.ImageEditor(type="numpy", image_mode="RGBA", label="Brush", elem_id="brush",
                                                brush=gr.Brush(colors=["#00FF00", "#FF0000"], color_mode="fixed"),
                                                layers=False, transforms=(), sources=())
                        with gr.Row():
                            to_brush = gr.Button("Edit this frame's mask with the brush")
                            from_brush = gr.Button("Apply brush to mask")
                    gr.Markdown(st.RULES, elem_id="rules")
                    with gr.Accordion("Outputs and options", open=False):
                        formats = gr.CheckboxGroup(UI_FORMATS, value=list(app.base.outputs.formats),
                                                   label="Outputs", elem_id="formats")
                        with gr.Row():
                            engine = gr.Dropdown(["matanyone", "mask"], value=app.base.engine.name,
                                                 label="Engine", elem_id="engine")
                            sam2_model = gr.Dropdown(["tiny", "small", "base_plus", "large"], value=default_model,
                                                     label="SAM 2 model", elem_id="sam2-model")
                            max_frames = gr.Number(value=0, precision=0, minimum=0, label="Max frames (0 = all)",
                                                   elem_id="max-frames")
                        with gr.Row():
                            scale = gr.Slider(0.1, 1.0, value=app.base.scale, step=0.05, label="Scale")
                            max_size = gr.Number(value=app.base.engine.max_size, precision=0,
                                                 label="Max matting size (-1 = none)")
                        with gr.Row():
                            erode = gr.Number(value=app.base.engine.erode, precision=0, label="Erode")
                            dilate = gr.Number(value=app.base.engine.dilate, precision=0, label="Dilate")
                            warmup = gr.Number(value=app.base.engine.warmup, precision=0, label="Warm-up")
                            colour = gr.ColorPicker(value=app.base.outputs.color, label="Background")
            with gr.Group(elem_id="results"):
                compare = gr.ImageSlider(label="Before / after", type="filepath", elem_id="compare",
                                         visible=False, max_height=420)
                with gr.Row():
                    alpha_vid = gr.Video(label="Alpha (preview)", interactive=False, elem_id="alpha-video",
                                         visible=False)
                    other_vid = gr.Video(label="Composite (preview)", interactive=False, elem_id="other-video",
                                         visible=False)
                files_out = gr.File(label="Downloads", file_count="multiple", interactive=False,
                                    elem_id="downloads", visible=False)
                previews = gr.Gallery(label="Previews", columns=4, height=200, visible=False, elem_id="previews")

        with gr.Tab("Jobs", elem_id="jobs-tab"):
            with gr.Row():
                refresh = gr.Button("Refresh", scale=0, min_width=100)
                pick = gr.Textbox(label="Job id (click a row)", elem_id="job-pick", scale=3)
            table = gr.Dataframe(headers=["job", "status", "frames", "elapsed", "created", "outputs", "error"],
                                 interactive=False, elem_id="jobs-table")
            job_md = gr.Markdown("", elem_id="job-detail")
            with gr.Row():
                job_cancel = gr.Button("Cancel this job", variant="stop", interactive=False, elem_id="job-cancel")
                job_resume = gr.Button("Resume", interactive=False, elem_id="job-resume")
                job_zip = gr.Button("Zip outputs", interactive=False, elem_id="job-zip")
                job_delete = gr.Button("Delete", interactive=False, elem_id="job-delete")
            with gr.Row(visible=False, elem_id="job-confirm") as job_confirm_row:
                job_confirm_md = gr.Markdown("")
                job_confirm_yes = gr.Button("Yes", variant="stop", elem_id="job-confirm-yes", size="sm")
                job_confirm_no = gr.Button("No", elem_id="job-confirm-no", size="sm")
            job_confirm_what = gr.State("")
            with gr.Row():
                job_alpha = gr.Video(label="Alpha (preview)", interactive=False, visible=False)
                job_other = gr.Video(label="Composite (preview)", interactive=False, visible=False)
            job_files = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="job-files")
            job_previews = gr.Gallery(label="Previews", columns=4, height=200)

        fast = gr.Timer(1.0)
        slow = gr.Timer(5.0)

        # ---- the prompt area: every control -> one handler -> one redraw -------------------------------------

        preview_key = gr.State("")  # the prompt's fingerprint: a preview of another one is shown as stale
        page_out = [ps_state, frame_img, frame_slider, media_md, prompt_md, message, run_btn, mask_upload,
                    vr_group, layout_md, mode, sam_md, preview_btn, preview_key]

        def draw(ps: st.PromptState, model: str, slider: bool = False) -> tuple:
            """The prompt area from the state. The slider is only set when the state moved it (a new video,
            a clamped number): echoing it back on every event would overwrite what the user is typing.
            Every change is saved here (the one place every prompt event passes), and a refusal is shown
            once as a toast besides the line under the frame."""
            h.save(app, ps)
            if ps.refused and ps.message:
                gr.Warning(ps.message)
            p = h.render(ps)
            msg = p.message or (f"Run is waiting: {p.run_hint}" if p.run_hint and ps.media else "")
            slide = (gr.update(value=p.frame, maximum=p.frame_max, interactive=ps.media is not None) if slider
                     else gr.skip())
            return (ps, p.image, slide,
                    p.media_md, p.prompt_md, msg, gr.update(interactive=p.run_enabled), p.mask_file,
                    gr.update(visible=p.vr), p.layout_md, p.mode, h.sam_status(app, ps, model),
                    gr.update(interactive=p.run_enabled), h.preview_key(ps))  # Preview: exactly when Run

        def on_video(path, ps, model):
            return draw(h.load_video(app, ps, path, model), model, slider=True)

        upload.upload(guard(on_video), [upload, ps_state, sam2_model], page_out, api_visibility="private")
        existing.input(guard(on_video), [existing, ps_state, sam2_model], page_out, api_visibility="private")
        choices = lambda: gr.update(choices=mediamod.list_media(roots))  # noqa: E731
        rescan.click(choices, None, existing, api_visibility="private")
        demo.load(choices, None, existing, api_visibility="private")

        def on_frame(index, ps, model):
            before = ps
            ps = h.show_frame(app, ps, index, model)
            if ps is before:  # the same frame (the slider's echo, release + change): redraw nothing
                return tuple(gr.skip() for _ in page_out)
            try:
                moved = float(index) != ps.frame
            except (TypeError, ValueError):
                moved = True
            return draw(ps, model, slider=moved)

        # change covers drags (always_last: only the latest position is decoded), typed numbers, Home/End and
        # arrow keys. "minimal" progress: a full overlay on the image would swallow the next click.
        frame_slider.change(guard(on_frame), [frame_slider, ps_state, sam2_model], page_out,
                            api_visibility="private", trigger_mode="always_last", concurrency_limit=1,
                            concurrency_id="frames", show_progress="minimal")

        def on_view(mode_v, master_v, layout_v, ps, model):
            return draw(h.set_view(app, ps, mode_v, master_v, layout_v, model), model)

        for ctl in (mode, master, layout):
            ctl.input(guard(on_view), [mode, master, layout, ps_state, sam2_model], page_out,
                      api_visibility="private")

        def on_tool(label, ps, model):
            return draw(h.update(app, ps, st.SetTool(TOOLS[label]), model), model)

        tool.input(on_tool, [tool, ps_state, sam2_model], page_out, api_visibility="private")

        def on_click(ps, model, evt: gr.SelectData):
            x, y = float(evt.index[0]), float(evt.index[1])
            if ps.image is not None and (ps.tool != "box" or ps.corner is not None):
                busy = h.sam_status(app, ps, model)
                note = ("waiting for SAM 2 to finish embedding this frame…" if "embedding" in busy or
                        "loading" in busy else "computing the mask…")
                pending = h.pending_click(ps, x, y)
                yield (gr.skip(), pending, *[gr.skip()] * 3, note, *[gr.skip()] * (len(page_out) - 6))
            yield draw(h.click(app, ps, x, y, model), model)

        frame_img.select(guard(on_click), [ps_state, sam2_model], page_out, api_visibility="private",
                         concurrency_limit=1, concurrency_id="sam2")
        undo.click(lambda ps, m: draw(h.update(app, ps, st.Undo(), m), m), [ps_state, sam2_model], page_out,
                   api_visibility="private", concurrency_limit=1, concurrency_id="sam2")
        clear.click(lambda ps, m: draw(h.update(app, ps, st.ClearFrame(), m), m), [ps_state, sam2_model],
                    page_out, api_visibility="private")
        add_subject.click(lambda ps, m: draw(h.update(app, ps, st.AddSubject(), m), m), [ps_state, sam2_model],
                          page_out, api_visibility="private")
        mask_upload.upload(lambda path, ps, m: draw(h.upload_mask(app, ps, path, m), m),
                           [mask_upload, ps_state, sam2_model], page_out, api_visibility="private",
                           concurrency_limit=1, concurrency_id="sam2")
        mask_upload.clear(lambda ps, m: draw(h.remove_mask(app, ps, m), m), [ps_state, sam2_model], page_out,
                          api_visibility="private")
        to_brush.click(h.brush_background, ps_state, editor, api_visibility="private")

        def on_brush(ps, ed, model):
            ps = h.brush(app, ps, ed, model)
            return (*draw(ps, model), h.brush_background(ps))

        from_brush.click(on_brush, [ps_state, editor, sam2_model], [*page_out, editor], api_visibility="private",
                         concurrency_limit=1, concurrency_id="sam2")

        def on_max_frames(n, ps, model):
            return draw(h.update(app, ps, st.SetMaxFrames(int(n or 0)), model), model)

        max_frames.change(on_max_frames, [max_frames, ps_state, sam2_model], page_out, api_visibility="private")

        def on_model(model, ps, store):
            app.prefetch(model, ps.image)
            store = {**(store or {}), "sam2_model": model}
            return (*draw(h.update(app, ps, st.SetSam(True), model), model), store)

        sam2_model.input(on_model, [sam2_model, ps_state, saved], [*page_out, saved], api_visibility="private")

        # ---- run, progress in one place, cancel / resume -----------------------------------------------------

        option_inputs = [formats, engine, scale, max_size, erode, dilate, warmup, colour, mode, master, layout,
                         max_frames, sam2_model]
        result_out = [compare, alpha_vid, other_vid, files_out, previews]
        job_out = [run_md, cancel_btn, resume_btn]

        def results(view: h.JobView | None) -> tuple:
            if view is None or not view.final:
                return tuple(gr.update(visible=False, value=None) for _ in result_out)
            alpha = view.playable.get("alpha")
            other = next((p for f, p in view.playable.items() if f != "alpha"), None)
            return (gr.update(visible=view.compare is not None, value=view.compare),
                    gr.update(visible=alpha is not None, value=alpha),
                    gr.update(visible=other is not None, value=other),
                    gr.update(visible=bool(view.files), value=view.files or None),
                    gr.update(visible=bool(view.previews), value=view.previews or None))

        def status_line(view: h.JobView | None) -> tuple:
            if view is None:
                return "", gr.update(interactive=False), gr.update(interactive=False)
            return view.line, gr.update(interactive=view.can_cancel), gr.update(interactive=view.can_resume)

        def on_run(ps, store, *opts):
            info = h.run(app, ps, h.ui_overrides(*opts))
            view = h.job_view(app, info.id)
            store = {**(store or {}), "job": info.id}
            return (info.id, store, "", *status_line(view), *results(None))

        run_btn.click(guard(on_run), [ps_state, saved, *option_inputs],
                      [job_id, saved, shown_final, *job_out, *result_out], api_visibility="private",
                      concurrency_limit=None)

        def on_tick(jid, shown, ps, model):
            """Once a second: the job's status (reattached after a reload) and SAM 2's state."""
            view = h.job_view(app, jid)
            final_now = view is not None and view.final and shown != jid
            res = results(view) if final_now else tuple(gr.skip() for _ in result_out)
            return (*status_line(view), jid if final_now else shown, *res, h.sam_status(app, ps, model))

        fast.tick(on_tick, [job_id, shown_final, ps_state, sam2_model],
                  [*job_out, shown_final, *result_out, sam_md], api_visibility="private", show_progress="hidden")

        cancel_btn.click(lambda: gr.update(visible=True), None, confirm_row, api_visibility="private")
        confirm_no.click(lambda: gr.update(visible=False), None, confirm_row, api_visibility="private")

        def on_cancel(jid):
            view = h.cancel(app, jid) if jid else None
            return (gr.update(visible=False), *status_line(view))

        confirm_yes.click(guard(on_cancel), job_id, [confirm_row, *job_out], api_visibility="private",
                          concurrency_limit=None)

        def on_resume(jid):
            view = h.resume(app, jid) if jid else None
            return ("", *status_line(view), *results(None))

        resume_btn.click(guard(on_resume), job_id, [shown_final, *job_out, *result_out], api_visibility="private")

        def on_load(store, ps):
            """Reattach: the job this browser started last, else the newest running one; the SAM 2 choice;
            the prompt this browser was building (app/persist.py), with the controls that show it."""
            store = dict(store or {})
            jid = store.get("job") or ""
            if jid and h.job_view(app, jid) is None:
                jid = ""
            active = h.latest_active_job(app)
            if active and (not jid or h.job_view(app, jid).final):
                jid = active
            model = store.get("sam2_model") or default_model
            app.prefetch(model)
            view = h.job_view(app, jid)
            ps = h.restore(app, store.get("prompt"), ps, model)
            store["prompt"] = ps.key
            controls = (next(label for label, t in TOOLS.items() if t == ps.tool), ps.master, ps.layout,
                        ps.max_frames)
            return (jid, model, *status_line(view), "", store, *controls, *draw(ps, model, slider=True))

        demo.load(on_load, [saved, ps_state],
                  [job_id, sam2_model, *job_out, shown_final, saved, tool, master, layout, max_frames, *page_out],
                  api_visibility="private", show_progress="hidden")

        # ---- preview (issue 13): a short low-res run of what Run would send, kept apart from the jobs -------

        h.preview_service(app)  # previews an earlier app process left behind are removed now
        preview_rec = gr.State(None)  # this browser's latest preview (handlers.start_preview)
        preview_drawn = gr.State("")  # what the gallery shows: "<id>:fresh" / "<id>:stale" / ""
        preview_out = [preview_md, preview_gallery, preview_stop, preview_drawn]
        serial = {"concurrency_limit": 1, "concurrency_id": "preview", "api_visibility": "private"}

        def preview_panel(rec, key, drawn, *opts):
            """The preview line and gallery from the record; the gallery is redrawn only when what it should
            show changes (finished, stale, current again)."""
            if not rec:
                return (gr.skip(),) * len(preview_out)
            try:
                overrides = h.ui_overrides(*opts)
            except (TypeError, ValueError):  # a number box being typed in: Run would refuse it too
                overrides = {}
            view = h.preview_view(app, rec, key, overrides)
            want = f"{rec['id']}:{'stale' if view.stale else 'fresh'}" if view.items else ""
            gallery = gr.skip()
            if want != drawn:
                if not view.items:
                    gallery = gr.update(value=None, visible=False)
                elif view.stale:
                    gallery = gr.update(value=view.items, visible=True, elem_classes=["stale"],
                                        label="Preview of an earlier prompt (stale)")
                else:
                    gallery = gr.update(value=view.items, visible=True, elem_classes=[], label="Preview")
            return view.line, gallery, gr.update(visible=view.running), want

        def on_preview(ps, rec, *opts):
            rec = h.start_preview(app, ps, h.ui_overrides(*opts), rec)
            line, _, stop, _ = preview_panel(rec, rec["prompt"], "", *opts)
            return rec, line, gr.update(value=None, visible=False), stop, ""  # the old gallery goes at once

        preview_btn.click(guard(on_preview), [ps_state, preview_rec, *option_inputs], [preview_rec, *preview_out],
                          **serial)
        panel_in = [preview_rec, preview_key, preview_drawn, *option_inputs]
        fast.tick(preview_panel, panel_in, preview_out, show_progress="hidden", **serial)
        preview_key.change(preview_panel, panel_in, preview_out, show_progress="hidden", **serial)
        for ctl in (engine, scale, max_size, erode, dilate, warmup, sam2_model):
            ctl.input(preview_panel, panel_in, preview_out, show_progress="hidden", **serial)

        def on_preview_stop(rec, key, drawn, *opts):
            h.stop_preview(app, rec)
            return preview_panel(rec, key, drawn, *opts)

        preview_stop.click(guard(on_preview_stop), panel_in, preview_out, **serial)

        # ---- jobs tab ----------------------------------------------------------------------------------------

        table_rows = lambda: h.jobs_table(app)  # noqa: E731
        refresh.click(table_rows, None, table, api_visibility="private")
        demo.load(table_rows, None, table, api_visibility="private")
        slow.tick(table_rows, None, table, api_visibility="private", show_progress="hidden")

        def pick_row(evt: gr.SelectData):
            row = evt.row_value or []
            return row[0] if row else ""

        table.select(pick_row, None, pick, api_visibility="private")

        job_view_out = [job_md, job_cancel, job_resume, job_zip, job_delete, job_alpha, job_other, job_files,
                        job_previews]

        def show_job(jid, full: bool = True) -> tuple:
            view = h.job_view(app, jid)
            if view is None:
                return ("Pick a job." if not jid else f"No job {jid!r}.", *[gr.update(interactive=False)] * 4,
                        *[gr.update(visible=False, value=None)] * 2, None, None)
            buttons = (gr.update(interactive=view.can_cancel), gr.update(interactive=view.can_resume),
                       gr.update(interactive=bool(view.outputs) and view.final),
                       gr.update(interactive=view.can_delete))
            if not full:
                return (view.line, *buttons, *[gr.skip()] * 4)
            alpha = view.playable.get("alpha")
            other = next((p for f, p in view.playable.items() if f != "alpha"), None)
            return (view.line, *buttons, gr.update(visible=alpha is not None, value=alpha),
                    gr.update(visible=other is not None, value=other), view.files or None, view.previews or None)

        pick.change(show_job, pick, job_view_out, api_visibility="private")

        def job_tick(jid, shown):
            """The picked job's line follows the job (it used to freeze at 'running 0/79')."""
            if not jid:
                return (*[gr.skip()] * len(job_view_out), shown)
            view = h.job_view(app, jid)
            if view is not None and view.final and shown != jid:
                return (*show_job(jid), jid)
            return (*show_job(jid, full=False), shown)

        job_shown = gr.State("")
        fast.tick(job_tick, [pick, job_shown], [*job_view_out, job_shown], api_visibility="private",
                  show_progress="hidden")

        def ask(what):
            def handler(jid):
                text = {"cancel": CONFIRM_CANCEL, "delete": f"Delete {jid} and all its files?"}[what]
                return gr.update(visible=bool(jid)), text, what
            return handler

        job_cancel.click(ask("cancel"), pick, [job_confirm_row, job_confirm_md, job_confirm_what],
                         api_visibility="private")
        job_delete.click(ask("delete"), pick, [job_confirm_row, job_confirm_md, job_confirm_what],
                         api_visibility="private")
        job_confirm_no.click(lambda: gr.update(visible=False), None, job_confirm_row, api_visibility="private")

        def on_job_confirm(jid, what):
            if what == "cancel":
                h.cancel(app, jid)
            elif what == "delete":
                h.delete(app, jid)
                return (gr.update(visible=False), "", h.jobs_table(app))
            return (gr.update(visible=False), jid, h.jobs_table(app))

        job_confirm_yes.click(guard(on_job_confirm), [pick, job_confirm_what], [job_confirm_row, pick, table],
                              api_visibility="private", concurrency_limit=None)
        job_resume.click(guard(lambda jid: (h.resume(app, jid), h.jobs_table(app))[1]), pick, table,
                         api_visibility="private")
        job_zip.click(guard(lambda jid: [h.zip_job(app, jid)]), pick, job_files, api_visibility="private")

        apimod.register(app)
    return demo
