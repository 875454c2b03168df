"""MattePod web app (Gradio 6): pick a frame, click the subject, run a matting job, download the matte.

The page is thin: frames come from ``mattepod.media`` (one ``-ss`` seek per frame, never a full decode), masks
from ``mattepod.prompts`` (a SAM 2 image predictor kept loaded in this process), and every run is a separate
job process from ``mattepod.jobs`` -- so a crashed job never takes the app down, Cancel kills it for real, and
jobs outlive the browser tab and the app. The same functions are named API endpoints for ``gradio_client``
(README.md, CONFIG.md).

    python app/gradio_app.py        # env: GRADIO_SERVER_NAME/PORT, GRADIO_USERNAME/PASSWORD or APP_PASSWORD,
                                    # INPUT_DIR, OUTPUT_DIR, MODEL_CACHE_DIR, GRADIO_ROOT_PATH, GRADIO_MAX_FILE_SIZE
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python app/gradio_app.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2
import gradio as gr
import numpy as np

from mattepod import config as configmod
from mattepod import jobs
from mattepod import request as rq
from mattepod.errors import MattePodError
from mattepod.media.exts import VIDEO_EXTS

log = logging.getLogger("mattepod.app")

UI_FORMATS = ["alpha", "green", "prores", "webm", "png", "alpha16", "packed"]
POSITIVE, NEGATIVE = "subject (+)", "not subject (-)"


# ---------------------------------------------------------------- settings ------------------------------------

def settings() -> dict[str, Any]:
    """Everything the app reads from the environment, in one place (documented in CONFIG.md)."""
    return {
        "server_name": os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
        "server_port": int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        "root_path": os.environ.get("GRADIO_ROOT_PATH") or None,
        "max_file_size": os.environ.get("GRADIO_MAX_FILE_SIZE", "20gb"),
        "username": os.environ.get("GRADIO_USERNAME") or None,
        "password": os.environ.get("GRADIO_PASSWORD") or os.environ.get("APP_PASSWORD") or None,
        "base_config": os.environ.get("MATTEPOD_CONFIG") or None,
    }


def auth_checker(username: str | None, password: str | None):
    """A constant-time check for launch(auth=...): user+password, or the password alone (APP_PASSWORD)."""
    if not password:
        return None

    def check(user: str, pw: str) -> bool:
        ok_pw = hmac.compare_digest((pw or "").encode(), password.encode())
        ok_user = username is None or hmac.compare_digest((user or "").encode(), username.encode())
        return ok_pw and ok_user

    return check


# ---------------------------------------------------------------- the app's shared state ----------------------

class AppState:
    """What one app process holds: roots, the job queue, the SAM 2 predictor (loaded once, reused)."""

    def __init__(self, roots: jobs.Roots, base_config: str | None = None):
        self.roots = roots
        for root in (roots.input, roots.output):
            root.mkdir(parents=True, exist_ok=True)
        self.base = configmod.load(base_config) if base_config else configmod.Config()
        self.manager = jobs.JobManager(roots.output)
        self._prompters: dict[str, Any] = {}
        self._sam_lock = threading.Lock()

    def prompter(self, model: str):
        """The SAM 2 image predictor for ``model`` (built on first use, then kept with its cached frame
        embedding); None while its weights are not in the weights folder (they may still be downloading)."""
        from mattepod import sam, weights

        try:
            weights.require(f"sam2.1_{model}", self.roots.weights)
        except MattePodError:
            return None
        with self._sam_lock:
            try:
                return sam.get_prompter(model, self.roots.weights, self.base.engine.device)
            except MattePodError as err:
                log.warning("SAM 2 %s cannot be loaded: %s", model, err)
                return None

    def prefetch(self, model: str, frame: np.ndarray | None = None) -> None:
        """Load the predictor and embed ``frame`` in the background, so the first click only decodes the
        mask (the image encoder is the slow part: seconds on CPU, tens of ms on a GPU)."""

        def work() -> None:
            try:
                prompter = self.prompter(model)
                if prompter is not None and frame is not None:
                    prompter.set_frame(np.array(frame, dtype=np.uint8, order="C"))
            except Exception as exc:  # noqa: BLE001 - a failed prefetch only costs the first click its speed
                log.warning("SAM 2 prefetch failed: %s", exc)

        threading.Thread(target=work, name="sam2-prefetch", daemon=True).start()

    def sam_mask(self, model: str, frame: np.ndarray, points: list[list[float]]) -> np.ndarray | None:
        prompter = self.prompter(model)
        if prompter is None or not points:
            return None
        frame = np.array(frame, dtype=np.uint8, order="C")  # writable, contiguous: what torch wants
        try:
            mask = prompter.mask_for(frame, [tuple(p) for p in points], None, False)  # locks internally
        except MattePodError as err:
            raise gr.Error(str(err)) from None
        return np.asarray(mask, dtype=np.float32)


# ---------------------------------------------------------------- frames and overlays ------------------------

def probe_media(path: str) -> dict[str, Any]:
    from mattepod.media.probe import probe

    info = probe(path)
    return {"path": str(path), "width": info.width, "height": info.height, "frames": info.frame_count,
            "fps": float(info.fps), "name": Path(path).name}


def load_view(state: "AppState", path: str, index: int, mode: str, layout: str, master: str):
    """(image to prompt, view): the whole frame (mono) or the master eye of a VR180 frame.

    ``view`` says where that image sits in the full frame ({x, y, w, h, full: [W, H]}): jobs take their
    prompt in full-frame pixels (as the CLI does), so UI clicks and masks are moved back with it.
    """
    from mattepod.media.probe import probe
    from mattepod.media.reader import read_frame as _read

    info = probe(path)
    frame = _read(info, max(0, min(int(index), info.frame_count - 1)))
    h, w = frame.shape[:2]
    if mode != "vr180":
        return frame, {"x": 0, "y": 0, "w": w, "h": h, "full": [w, h]}
    from mattepod.stereo import detect_layout

    stereo_cfg = state.base.stereo.model_copy(update={"layout": layout, "master": master})
    lay = detect_layout(path, w, h, info.side_data, config=stereo_cfg)
    first = (master == "left") != lay.swapped  # the master eye is the first half of the frame
    if lay.arrangement == "sbs":
        half = w // 2
        x = 0 if first else half
        view = {"x": x, "y": 0, "w": half, "h": h, "full": [w, h]}
    else:
        half = h // 2
        y = 0 if first else half
        view = {"x": 0, "y": y, "w": w, "h": half, "full": [w, h]}
    eye = frame[view["y"] : view["y"] + view["h"], view["x"] : view["x"] + view["w"]]
    return np.ascontiguousarray(eye), view


def to_full_frame(view: dict, mask: np.ndarray | None, points: list) -> tuple[np.ndarray | None, list]:
    """Master-eye mask and clicks -> full-frame ones (the other eye left empty for the stereo engine)."""
    if mask is not None and list(mask.shape[::-1]) != list(view["full"]):
        full = np.zeros((view["full"][1], view["full"][0]), np.float32)
        full[view["y"] : view["y"] + view["h"], view["x"] : view["x"] + view["w"]] = mask
        mask = full
    return mask, [[x + view["x"], y + view["y"], lab] for x, y, lab in points]


def overlay(frame: np.ndarray, mask: np.ndarray | None, points: list[list[float]]) -> np.ndarray:
    """Frame with the mask tinted green and the clicks as dots (green = subject, red = not subject)."""
    out = frame.copy()
    if mask is not None:
        m = mask >= 0.5
        out[m] = (0.45 * out[m] + 0.55 * np.array([40, 220, 90])).astype(np.uint8)
        edges = cv2.morphologyEx(m.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
        out[edges] = (255, 255, 255)
    r = max(3, min(frame.shape[:2]) // 60)
    for x, y, label in points:
        colour = (40, 220, 90) if label == 1 else (230, 40, 40)
        cv2.circle(out, (int(round(x)), int(round(y))), r + 2, (255, 255, 255), -1)
        cv2.circle(out, (int(round(x)), int(round(y))), r, colour, -1)
    return out


def mask_from_file(path: str, size: tuple[int, int]) -> np.ndarray:
    from mattepod.prompts import load_mask_file

    return load_mask_file(path, size)


def apply_brush(mask: np.ndarray | None, editor: dict | None, shape: tuple[int, int]) -> np.ndarray:
    """Green strokes add to the mask, red strokes remove from it (the editor's fixed brush colours)."""
    h, w = shape
    out = np.zeros((h, w), np.float32) if mask is None else mask.astype(np.float32).copy()
    for layer in (editor or {}).get("layers") or []:
        if layer is None:
            continue
        layer = np.asarray(layer)
        if layer.ndim != 3 or layer.shape[2] < 4:
            continue
        if layer.shape[:2] != (h, w):
            layer = cv2.resize(layer, (w, h), interpolation=cv2.INTER_NEAREST)
        painted = layer[..., 3] > 0
        red, green = layer[..., 0].astype(int), layer[..., 1].astype(int)
        out[painted & (green > red)] = 1.0
        out[painted & (red >= green)] = 0.0
    return out


# ---------------------------------------------------------------- inputs --------------------------------------

def list_media(roots: jobs.Roots, limit: int = 500) -> list[tuple[str, str]]:
    """(label, path) of the videos already in the input and output volumes."""
    found: list[tuple[str, str]] = []
    for root in (roots.input, roots.output):
        if not root.is_dir():
            continue
        for dirpath, _dirs, files in os.walk(root):
            for name in sorted(files):
                if Path(name).suffix.lower() in VIDEO_EXTS:
                    p = Path(dirpath) / name
                    found.append((f"{root.name}/{p.relative_to(root)}", str(p)))
                    if len(found) >= limit:
                        return found
    return sorted(found)


def adopt_upload(upload: str, roots: jobs.Roots) -> Path:
    """Move an upload from Gradio's cache into the input volume (a job must outlive the cache and the app)."""
    src = Path(upload)
    cache = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")
    try:
        src = jobs.inside(src, [cache])
    except MattePodError:
        src = jobs.inside(src, [roots.input, roots.output])  # the file was chosen from the volume
        return src
    dest_dir = roots.input / "uploads"
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / src.name
    n = 1
    while dest.exists():
        if dest.stat().st_size == src.stat().st_size:
            return dest
        dest = dest_dir / f"{src.stem}-{n}{src.suffix}"
        n += 1
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)
    return dest


def parse_points(text: str | list | None) -> list[list[float]]:
    """Points as JSON ``[[x, y, label], ...]`` / ``[{"x":..,"y":..,"label":..}]`` or ``"x,y,l;x,y,l"``
    (``mattepod.request.parse_points``, the one parser of every face)."""
    try:
        return [[p["x"], p["y"], p["label"]] for p in rq.parse_points(text)]
    except MattePodError as err:
        raise gr.Error(str(err)) from None


def parse_box(text: str | None) -> list[float] | None:
    try:
        return rq.parse_box(text)
    except MattePodError as err:
        raise gr.Error(str(err)) from None


def resolve_input(state: AppState, input_path: str) -> Path:
    """A file the caller names: relative = in the input folder; it must lie in the input or output folder."""
    try:
        return jobs.inside(input_path, [state.roots.input, state.roots.output], "input_path", base=state.roots.input)
    except MattePodError as err:
        raise gr.Error(str(err)) from None


def build_config(state: AppState, input_path: Path, overrides: dict[str, Any],
                 prompt: dict[str, Any] | None = None) -> configmod.Config:
    """The base config + the user's choices through the one front door (``mattepod.request``): the server
    fixes the input, the folders and auto-resume; every path key is confined to the app's folders."""
    fixed = {"input": str(input_path), "output_dir": str(state.roots.output),
             "weights_dir": str(state.roots.weights), "recovery.auto_resume": False}
    try:
        req = rq.parse({"overrides": overrides, "prompt": prompt}, "job options")
        return rq.to_config(req, base=state.base, roots=state.roots.confinement(), fixed=fixed, source="job options")
    except MattePodError as err:
        raise gr.Error(str(err)) from None


def start_job(state: AppState, input_path: str, points: list, box: list | None, prompt_frame: int,
              mask: np.ndarray | None, overrides: dict[str, Any]) -> jobs.JobInfo:
    """Validate everything, create the run folder (config + prompt mask), queue it."""
    if not input_path:
        raise gr.Error("choose a video first (upload one or pick a file from the volume)")
    src = resolve_input(state, input_path)
    if not src.is_file():
        raise gr.Error(f"{src.name} does not exist any more -> upload it again")
    subjects = rq.flatten(overrides).get("prompt.subjects")  # issue 16: a subjects list replaces the single prompt
    if mask is None and not points and box is None and not subjects:
        raise gr.Error("no prompt: click on the subject, paint it with the brush, or upload a mask")
    prompt: dict[str, Any] = {"frame": int(prompt_frame or 0)}
    if subjects and (mask is not None or points or box is not None):
        raise gr.Error("give either prompt.subjects (in options) or one prompt (points/box/mask), not both")
    if mask is None and not subjects:
        prompt["points"] = [{"x": x, "y": y, "label": int(lab)} for x, y, lab in points]
        prompt["box"] = box
    cfg = build_config(state, src, overrides, prompt)
    try:
        run = jobs.create_run(cfg, state.roots.output, mask=mask)
        job_id = state.manager.submit(run)
    except MattePodError as err:
        raise gr.Error(str(err)) from None
    log.info("job %s queued (%s)", job_id, src.name)
    return state.manager.status(job_id)


def job_or_error(state: AppState, job_id: str) -> jobs.JobInfo:
    try:
        return state.manager.status(job_id)
    except MattePodError as err:
        raise gr.Error(str(err)) from None


def ui_overrides(formats, engine, scale, max_size, erode, dilate, warmup, colour, mode, master, layout,
                 max_frames, sam2_model) -> dict[str, Any]:
    o: dict[str, Any] = {
        "outputs.formats": list(formats or []), "engine.name": engine, "scale": float(scale),
        "engine.max_size": int(max_size), "engine.erode": int(erode), "engine.dilate": int(dilate),
        "engine.warmup": int(warmup), "outputs.color": _hex(colour), "stereo.mode": mode,
        "stereo.master": master, "stereo.layout": layout, "prompt.sam2_model": sam2_model,
    }
    if max_frames:
        o["max_frames"] = int(max_frames)
    return o


def _hex(colour: str | None) -> str:
    """gr.ColorPicker may answer rgba(...) or #rgb; the config wants #RRGGBB."""
    c = (colour or "#00B140").strip()
    if c.startswith("rgb"):
        nums = [float(v) for v in c[c.index("(") + 1 : c.index(")")].split(",")[:3]]
        return "#" + "".join(f"{int(round(v)):02X}" for v in nums)
    if len(c) == 4 and c.startswith("#"):
        return "#" + "".join(ch * 2 for ch in c[1:]).upper()
    return c[:7].upper()


# ---------------------------------------------------------------- results -------------------------------------

def result_views(info: jobs.JobInfo):
    """(status markdown, main video, second video, files, previews) for one job."""
    videos = [p for f, p in info.outputs.items() if Path(p).suffix.lower() in (".mp4", ".webm", ".mov")]
    alpha = info.outputs.get("alpha")
    other = next((p for p in videos if p != alpha and Path(p).suffix.lower() in (".mp4", ".webm")), None)
    md = f"**{info.id}** — {info.summary()}"
    if info.error and info.status not in ("completed",):
        md += f"\n\n> {info.error.get('type', 'Error')}: {info.error.get('message', '')}"
    return md, alpha, other, info.files() or None, info.previews or None


def jobs_table(state: AppState) -> list[list[Any]]:
    rows = []
    for j in state.manager.list_jobs():
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(j.created)) if j.created else ""
        err = (j.error or {}).get("message", "") if j.status in ("failed", "interrupted") else ""
        rows.append([j.id, j.status, f"{j.frame or 0}/{j.total or '?'}", created, ", ".join(j.outputs), err])
    return rows


# ---------------------------------------------------------------- the page -----------------------------------

def build_app(state: AppState) -> gr.Blocks:
    roots = state.roots
    # Finished outputs are served from the output volume as they are, not copied into Gradio's cache
    # (a VR180 master can be many GB). Auth still applies to these files.
    gr.set_static_paths([str(roots.output)])
    with gr.Blocks(title="MattePod") as demo:
        gr.Markdown("# MattePod — video matting\nUpload a video, pick a frame, click on the subject, run.")
        video_path = gr.State("")
        media = gr.State({})
        frame_state = gr.State(None)  # the image being prompted (frame or master eye), RGB
        view_state = gr.State({})  # where that image sits in the full frame (load_view)
        points = gr.State([])
        mask_state = gr.State(None)
        job_id = gr.State("")

        with gr.Tab("Matte"):
            with gr.Row():
                with gr.Column(scale=1, min_width=320):
                    upload = gr.File(label="Upload a video", file_types=sorted(VIDEO_EXTS), type="filepath",
                                     elem_id="upload")
                    with gr.Row():
                        existing = gr.Dropdown(choices=list_media(roots), label="…or a file in the volume",
                                               elem_id="existing", scale=4)
                        rescan = gr.Button("↻", scale=1, min_width=40)
                    media_md = gr.Markdown("No video loaded.", elem_id="media-info")
                    mode = gr.Radio(["mono", "vr180"], value=state.base.stereo.mode, label="Mode")
                    with gr.Row():
                        master = gr.Radio(["left", "right"], value=state.base.stereo.master,
                                          label="VR180 master eye (shown)")
                        layout = gr.Radio(["auto", "sbs", "tb"], value=state.base.stereo.layout, label="Eye layout")
                    frame_slider = gr.Slider(0, 1, value=0, step=1, label="Prompt frame", elem_id="frame-slider")
                    label_toggle = gr.Radio([POSITIVE, NEGATIVE], value=POSITIVE, label="Next click marks",
                                            elem_id="label-toggle")
                    with gr.Row():
                        undo = gr.Button("Undo click", elem_id="undo")
                        clear = gr.Button("Clear", elem_id="clear")
                    mask_upload = gr.File(label="…or upload a mask PNG (white = subject)", file_types=["image"],
                                          type="filepath", elem_id="mask-upload")
                with gr.Column(scale=2):
                    frame_img = gr.Image(label="Click on the subject", interactive=False, type="numpy", height=420,
                                         elem_id="frame", buttons=["fullscreen"])
                    prompt_md = gr.Markdown("", elem_id="prompt-info")
                    with gr.Accordion("Brush: paint (green) or erase (red) the mask", open=False):
                        editor = gr.ImageEditor(type="numpy", image_mode="RGBA", label="Brush", elem_id="brush",
                                                brush=gr.Brush(colors=["#00FF00", "#FF0000"], color_mode="fixed"),
                                                layers=False, transforms=(), sources=())
                        with gr.Row():
                            to_brush = gr.Button("Edit this mask with the brush")
                            from_brush = gr.Button("Apply brush to mask")
            with gr.Accordion("Outputs and options", open=True):
                with gr.Row():
                    formats = gr.CheckboxGroup(UI_FORMATS, value=list(state.base.outputs.formats),
                                               label="Outputs", elem_id="formats")
                    engine = gr.Dropdown(["matanyone", "mask"], value=state.base.engine.name, label="Engine",
                                         elem_id="engine")
                    sam2_model = gr.Dropdown(["tiny", "small", "base_plus", "large"],
                                             value=state.base.prompt.sam2_model, label="SAM 2 model")
                with gr.Row():
                    scale = gr.Slider(0.1, 1.0, value=state.base.scale, step=0.05, label="Scale (matting size)")
                    max_size = gr.Number(value=state.base.engine.max_size, precision=0,
                                         label="Max matting size (shorter side, -1 = none)")
                    erode = gr.Number(value=state.base.engine.erode, precision=0, label="Erode")
                    dilate = gr.Number(value=state.base.engine.dilate, precision=0, label="Dilate")
                    warmup = gr.Number(value=state.base.engine.warmup, precision=0, label="Warm-up")
                    colour = gr.ColorPicker(value=state.base.outputs.color, label="Background colour")
                    max_frames = gr.Number(value=0, precision=0, minimum=0, label="Max frames (0 = all)")
            with gr.Row():
                run_btn = gr.Button("Run", variant="primary", elem_id="run")
                cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel")
            run_md = gr.Markdown("", elem_id="run-status")
            with gr.Row():
                alpha_vid = gr.Video(label="Alpha", interactive=False, elem_id="alpha-video")
                other_vid = gr.Video(label="Foreground", interactive=False)
            files_out = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="downloads")
            previews = gr.Gallery(label="Previews", columns=4, height=220)

        with gr.Tab("Jobs", elem_id="jobs-tab"):
            refresh = gr.Button("Refresh")
            table = gr.Dataframe(headers=["job", "status", "frames", "created", "outputs", "error"],
                                 interactive=False, elem_id="jobs-table")
            pick = gr.Textbox(label="Job id (click a row)", elem_id="job-pick")
            with gr.Row():
                show_btn = gr.Button("Show")
                job_cancel = gr.Button("Cancel this job", variant="stop")
            job_md = gr.Markdown("", elem_id="job-detail")
            with gr.Row():
                job_alpha = gr.Video(label="Alpha", interactive=False)
                job_other = gr.Video(label="Foreground", interactive=False)
            job_files = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="job-files")
            job_previews = gr.Gallery(label="Previews", columns=4, height=220)
            timer = gr.Timer(5.0)

        # ---- prompt flow -------------------------------------------------------------------------------------

        def load_video(path, mode_v, master_v, layout_v, model):
            if not path:
                return "", {}, gr.update(), None, {}, [], None, "No video loaded.", None, ""
            try:
                src = adopt_upload(path, roots)
                info = probe_media(str(src))
                frame, view = load_view(state, str(src), 0, mode_v, layout_v, master_v)
            except MattePodError as err:
                raise gr.Error(str(err)) from None
            md = (f"**{info['name']}** — {info['width']}×{info['height']}, {info['frames']} frames, "
                  f"{info['fps']:.3f} fps")
            slider = gr.update(minimum=0, maximum=max(info["frames"] - 1, 1), value=0,
                               interactive=info["frames"] > 1)
            state.prefetch(model, frame)
            return str(src), info, slider, frame, view, [], None, md, frame, _prompt_text([], None)

        load_outputs = [video_path, media, frame_slider, frame_state, view_state, points, mask_state, media_md,
                        frame_img, prompt_md]
        upload.upload(load_video, [upload, mode, master, layout, sam2_model], load_outputs, api_visibility="private")
        existing.input(load_video, [existing, mode, master, layout, sam2_model], load_outputs,
                       api_visibility="private")
        rescan.click(lambda: gr.update(choices=list_media(roots)), None, existing, api_visibility="private")

        def show_frame(path, info, index, mode_v, master_v, layout_v, model):
            if not path:
                return None, {}, [], None, None, ""
            try:
                frame, view = load_view(state, path, int(index), mode_v, layout_v, master_v)
            except MattePodError as err:
                raise gr.Error(str(err)) from None
            state.prefetch(model, frame)
            return frame, view, [], None, frame, _prompt_text([], None)

        frame_outputs = [frame_state, view_state, points, mask_state, frame_img, prompt_md]
        frame_inputs = [video_path, media, frame_slider, mode, master, layout, sam2_model]
        frame_slider.release(show_frame, frame_inputs, frame_outputs, api_visibility="private")
        for ctl in (mode, master, layout):
            ctl.input(show_frame, frame_inputs, frame_outputs, api_visibility="private")

        def refresh_mask(frame, pts, model, mask):
            """With SAM 2 the clicks define the mask; without it the mask (upload/brush) is kept and the
            clicks are sent to the job as points when there is no mask."""
            if frame is None:
                return None, mask, _prompt_text(pts, mask)
            if state.prompter(model) is None:
                return overlay(frame, mask, pts), mask, _prompt_text(pts, mask, sam=False)
            new = state.sam_mask(model, frame, pts) if pts else None
            return overlay(frame, new, pts), new, _prompt_text(pts, new)

        def click(frame, pts, model, label, mask, evt: gr.SelectData):
            if frame is None:
                raise gr.Error("load a video first")
            x, y = evt.index[0], evt.index[1]
            pts = [*pts, [float(x), float(y), 1 if label == POSITIVE else 0]]
            img, new_mask, md = refresh_mask(frame, pts, model, mask)
            return pts, img, new_mask, md

        frame_img.select(click, [frame_state, points, sam2_model, label_toggle, mask_state],
                         [points, frame_img, mask_state, prompt_md], api_visibility="private",
                         concurrency_limit=1, concurrency_id="sam2")

        def undo_click(frame, pts, model, mask):
            pts = pts[:-1]
            img, new_mask, md = refresh_mask(frame, pts, model, mask)
            return pts, img, new_mask, md

        undo.click(undo_click, [frame_state, points, sam2_model, mask_state], [points, frame_img, mask_state, prompt_md],
                   api_visibility="private", concurrency_limit=1, concurrency_id="sam2")
        clear.click(lambda f: ([], f, None, _prompt_text([], None)), frame_state,
                    [points, frame_img, mask_state, prompt_md], api_visibility="private")

        def use_mask_file(frame, pts, path):
            if frame is None or not path:
                return gr.update(), gr.update(), gr.update()
            try:
                m = mask_from_file(path, (frame.shape[1], frame.shape[0]))
            except MattePodError as err:
                raise gr.Error(str(err)) from None
            return overlay(frame, m, pts), m, _prompt_text(pts, m)

        mask_upload.upload(use_mask_file, [frame_state, points, mask_upload], [frame_img, mask_state, prompt_md],
                           api_visibility="private")

        def brush_start(frame, pts, mask):
            if frame is None:
                raise gr.Error("load a video first")
            return {"background": overlay(frame, mask, pts), "layers": [], "composite": None}

        to_brush.click(brush_start, [frame_state, points, mask_state], editor, api_visibility="private")

        def brush_apply(frame, pts, mask, ed):
            if frame is None:
                raise gr.Error("load a video first")
            m = apply_brush(mask, ed, frame.shape[:2])
            return overlay(frame, m, pts), m, _prompt_text(pts, m), brush_start(frame, pts, m)

        from_brush.click(brush_apply, [frame_state, points, mask_state, editor],
                         [frame_img, mask_state, prompt_md, editor], api_visibility="private")

        # ---- run / cancel ------------------------------------------------------------------------------------

        option_inputs = [formats, engine, scale, max_size, erode, dilate, warmup, colour, mode, master, layout,
                         max_frames, sam2_model]

        def run(path, view, pts, mask, index, *opts, progress=gr.Progress()):
            if view:
                mask, pts = to_full_frame(view, mask, pts)
            info = start_job(state, path, pts, None, int(index), mask, ui_overrides(*opts))
            yield info.id, f"**{info.id}** — submitted ({info.summary()})", None, None, None, None
            info = follow(state, info.id, progress)
            yield (info.id, *result_views(info))

        run_btn.click(run, [video_path, view_state, points, mask_state, frame_slider, *option_inputs],
                      [job_id, run_md, alpha_vid, other_vid, files_out, previews],
                      api_visibility="private", concurrency_limit=None)

        def cancel(jid):
            if not jid:
                return "Nothing to cancel."
            info = state.manager.cancel(jid)
            return f"**{info.id}** — {info.summary()}"

        cancel_btn.click(cancel, job_id, run_md, api_visibility="private", concurrency_limit=None)

        # ---- jobs tab ----------------------------------------------------------------------------------------

        refresh.click(lambda: jobs_table(state), None, table, api_visibility="private")
        demo.load(lambda: jobs_table(state), None, table, api_visibility="private")
        timer.tick(lambda: jobs_table(state), None, table, api_visibility="private", show_progress="hidden")

        def pick_row(evt: gr.SelectData):
            row = evt.row_value or []
            return row[0] if row else ""

        table.select(pick_row, None, pick, api_visibility="private")

        def show_job(jid):
            if not jid:
                return "Pick a job.", None, None, None, None
            return result_views(job_or_error(state, jid))

        job_view = [job_md, job_alpha, job_other, job_files, job_previews]
        pick.change(show_job, pick, job_view, api_visibility="private")
        show_btn.click(show_job, pick, job_view, api_visibility="private")
        job_cancel.click(lambda jid: cancel(jid) if jid else "Pick a job.", pick, job_md, api_visibility="private")

        # ---- API for gradio_client (hidden components; documented in CONFIG.md) ------------------------

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

        def api_submit(video, input_path, points, box, prompt_frame, mask, options):
            """Queue a job. video: an uploaded file (handle_file) or empty; input_path: a file already in the
            input/output volume; points: "[[x,y,label],...]" in pixels of the prompt frame; box: "x0,y0,x1,y1";
            mask: a mask PNG (white = subject); options: JSON of config keys, e.g. {"engine.name": "mask"}.
            Several subjects: leave points/box/mask empty and give options {"prompt.subjects": [{"name": "a",
            "points": [{"x": 10, "y": 20}]}, {"name": "b", "box": [...]}, ...]} (clicks, boxes or auto_person)."""
            try:
                src = adopt_upload(video, roots) if video else resolve_input(state, input_path)
            except MattePodError as err:
                raise gr.Error(str(err)) from None
            try:
                opts = json.loads(options) if options else {}
            except ValueError:
                raise gr.Error("options is not JSON -> give e.g. {\"engine.name\": \"mask\"}") from None
            if not isinstance(opts, dict):
                raise gr.Error("options must be a JSON object of config keys")
            m = None
            if mask:  # full-frame pixels, like the CLI (VR180: the master eye's half is the prompt)
                info = probe_media(str(src))
                try:
                    m = mask_from_file(mask, (info["width"], info["height"]))
                except MattePodError as err:
                    raise gr.Error(str(err)) from None
            info = start_job(state, str(src), parse_points(points), parse_box(box), int(prompt_frame or 0), m, opts)
            return info.to_dict()

        api_btn.click(api_submit, [api_video, api_input, api_points, api_box, api_frame, api_mask, api_options],
                      api_json, api_name="submit_job", concurrency_limit=None)
        def api_status(job_id):
            """Status of one job: status, position, frame/total/fps/eta, error, outputs, previews."""
            return job_or_error(state, job_id).to_dict()

        api_btn.click(api_status, api_job, api_json, api_name="job_status", concurrency_limit=None)

        def api_wait(job_id):
            """Block until the job ends (or 10 minutes pass); returns its status."""
            job_or_error(state, job_id)
            state.manager.wait(job_id, timeout=600)
            return job_or_error(state, job_id).to_dict()

        api_btn.click(api_wait, api_job, api_json, api_name="wait_job", concurrency_limit=None)
        def api_files(job_id):
            """The job's output files and preview PNGs (downloaded by gradio_client)."""
            return job_or_error(state, job_id).files() or None

        api_btn.click(api_files, api_job, api_files_out, api_name="job_files", concurrency_limit=None)

        def api_cancel(job_id):
            """Stop a queued or running job (its whole process group)."""
            try:
                return state.manager.cancel(job_id).to_dict()
            except MattePodError as err:
                raise gr.Error(str(err)) from None

        api_btn.click(api_cancel, api_job, api_json, api_name="cancel_job", concurrency_limit=None)
        def api_list():
            """Every job in the output folder, newest first."""
            return [j.to_dict() for j in state.manager.list_jobs()]

        api_btn.click(api_list, None, api_json, api_name="list_jobs", concurrency_limit=None)
    return demo


def _prompt_text(pts: list, mask: np.ndarray | None, sam: bool = True) -> str:
    pos = sum(1 for p in pts if p[2] == 1)
    text = f"{pos} subject click(s), {len(pts) - pos} not-subject click(s)"
    if mask is not None:
        text += f"; mask covers {100 * float((mask >= 0.5).mean()):.1f}% of the frame"
    if not sam:
        text += ("; SAM 2 is not loaded here: " + ("the mask is used" if mask is not None
                 else "the clicks go to the job, which turns them into a mask"))
    return text


def follow(state: AppState, job_id: str, progress: gr.Progress | None = None, poll: float = 0.5) -> jobs.JobInfo:
    """Report a job's JSON progress lines to gr.Progress until it ends (the job runs on without us)."""
    while True:
        info = state.manager.status(job_id)
        if info.status in jobs.FINAL or info.status == "unknown":
            return info
        if progress is not None:
            if info.status == "queued":
                progress(0.0, desc=info.summary())  # "queued (position N)"
            elif info.total:
                progress((int(info.frame or 0), int(info.total)), desc=info.summary(), unit="frames")
            else:
                progress(0.0, desc="starting the job")
        time.sleep(poll)


# ---------------------------------------------------------------- launch -------------------------------------

def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = settings()
    roots = jobs.Roots.from_env()
    state = AppState(roots, cfg["base_config"])
    state.prefetch(state.base.prompt.sam2_model)  # the predictor is ready before the first video arrives
    demo = build_app(state)
    auth = auth_checker(cfg["username"], cfg["password"])
    if auth is None:
        banner = "!" * 78
        log.warning("\n%s\n!!  NO PASSWORD SET: anyone who can reach this port can use the app and read the\n"
                    "!!  input/output folders. Set GRADIO_USERNAME + GRADIO_PASSWORD (or APP_PASSWORD).\n%s",
                    banner, banner)
    demo.queue(default_concurrency_limit=4)
    demo.launch(
        server_name=cfg["server_name"], server_port=cfg["server_port"], share=False, auth=auth,
        auth_message="MattePod" if auth else None, root_path=cfg["root_path"], max_file_size=cfg["max_file_size"],
        allowed_paths=[str(roots.input), str(roots.output)], ssr_mode=False, footer_links=["api"],
        show_error=True)


if __name__ == "__main__":
    main()
