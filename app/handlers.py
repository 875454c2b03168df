"""What each control does: plain functions over the app (``AppState``) and the page's ``PromptState``.

Every prompt control goes through :func:`update` (decode / SAM 2 work, then ``app.state.apply``), and the page
is redrawn from the state alone by :func:`render`, so the frame shown, the clicks, the mask and what Run sends
cannot disagree. Nothing here imports Gradio: the functions are unit-tested without a browser
(tests/test_app_handlers.py) and ``app/layout.py`` only wires them to components.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from app import media as mediamod
from app import preview as previewmod
from app import state as st
from app.server import AppState
from mattepod import config as configmod
from mattepod import jobs
from mattepod import request as rq
from mattepod.errors import MattePodError
from mattepod.quality import page_markdown

log = logging.getLogger("mattepod.app")

SAM_STATES = {"embedding": "SAM 2 is embedding this frame…", "waiting": "SAM 2 is embedding this frame…",
              "loading": "SAM 2 is loading…", "ready": "SAM 2 ready: clicks answer at once",
              "missing": "SAM 2 weights are not here: clicks go to the job", "idle": ""}


class PageError(Exception):
    """A refusal for the page: one line, no server path (shown once as a toast)."""


def _public(err: BaseException | str) -> PageError:
    return PageError(mediamod.public_message(err))


# ---------------------------------------------------------------- the one update path --------------------------

def update(app: AppState, ps: st.PromptState, action: st.Action, model: str) -> st.PromptState:
    """Apply ``action`` (with SAM 2 on the image shown when the action edits a mask), then embed a newly
    shown frame in the background. Showing a frame never waits for SAM 2."""
    available = app.sam_available(model)
    seg = None
    if available and ps.image is not None and isinstance(action, _SEGMENTING):
        seg = app.segmenter(model, ps.image)
        available = seg is not None
    before = (ps.media.path if ps.media else None, ps.frame, ps.mode, ps.master, ps.layout)
    ps = replace(ps, sam=available)
    out = st.apply(ps, action, seg)
    after = (out.media.path if out.media else None, out.frame, out.mode, out.master, out.layout)
    if out.image is not None and before != after and available:
        app.prefetch(model, out.image)  # stale requests for frames already left are dropped by the prompter
    return out


_SEGMENTING = (st.ClickAt, st.AddUpload, st.RemoveUpload, st.AddStroke, st.Undo, st.ClearFrame, st.SetSam)


def load_video(app: AppState, ps: st.PromptState, path: str | None, model: str) -> st.PromptState:
    """An upload or a file from the volume. Anything that is not a readable video leaves *no* video active."""
    if not path:
        return update(app, ps, st.LoadFailed("No video loaded.", refused=False), model)
    try:
        src = mediamod.adopt_upload(path, app.roots)
        info = mediamod.probe_media(str(src))
        mode = "vr180" if info.vr_hint else ps.mode
        image, view = mediamod.load_view(app.base.stereo, str(src), 0, mode, ps.layout, ps.master)
    except MattePodError as err:
        return update(app, ps, st.LoadFailed(f"{Path(str(path)).name} cannot be used: "
                                             f"{mediamod.public_message(err)}"), model)
    except OSError as err:
        return update(app, ps, st.LoadFailed(f"{Path(str(path)).name} cannot be read ({err.strerror})"), model)
    return update(app, ps, st.LoadVideo(info, image, view, mode), model)


def show_frame(app: AppState, ps: st.PromptState, index: Any, model: str) -> st.PromptState:
    """The slider, its number box, Home/End: the frame is clamped, decoded and shown; prompts stay on theirs."""
    if ps.media is None:
        return ps
    k = st.clamp_frame(ps, index)
    if k == ps.frame and ps.image_frame == k:
        return ps
    try:
        image, view = mediamod.load_view(app.base.stereo, ps.media.path, k, ps.mode, ps.layout, ps.master)
    except MattePodError as err:
        raise _public(err) from None
    return update(app, ps, st.ShowFrame(k, image, view), model)


def set_view(app: AppState, ps: st.PromptState, mode: str, master: str, layout: str, model: str) -> st.PromptState:
    if ps.media is None:
        return replace(ps, mode=mode, master=master, layout=layout, message="", refused=False)
    if (mode, master, layout) == (ps.mode, ps.master, ps.layout):
        return replace(ps, message="", refused=False)  # an earlier refusal is not shown (or toasted) again
    try:
        image, view = mediamod.load_view(app.base.stereo, ps.media.path, ps.frame, mode, layout, master)
    except MattePodError as err:
        raise _public(err) from None
    return update(app, ps, st.SetView(mode, master, layout, image, view), model)


def click(app: AppState, ps: st.PromptState, x: float, y: float, model: str) -> st.PromptState:
    return update(app, ps, st.ClickAt(x, y), model)


def upload_mask(app: AppState, ps: st.PromptState, path: str | None, model: str) -> st.PromptState:
    """A mask PNG for the frame shown; a refused file is removed from the prompt (and the file box)."""
    if ps.media is None:
        return replace(ps, message="load a video first", refused=True)
    if not path:
        return update(app, ps, st.RemoveUpload(), model)
    name = Path(path).name
    h, w = ps.image.shape[:2]
    try:
        mask = mediamod.mask_from_file(path, (w, h))
    except MattePodError as err:
        return update(app, ps, st.AddUpload(None, name, reason=f"mask {name} refused: "
                                                                 f"{mediamod.public_message(err)}"), model)
    if not (mask >= 0.5).any():
        return update(app, ps, st.AddUpload(None, name, reason=f"mask {name} refused: it is empty "
                                                                 "-> white marks the subject"), model)
    return update(app, ps, st.AddUpload(mask, name, str(path)), model)


def remove_mask(app: AppState, ps: st.PromptState, model: str) -> st.PromptState:
    return update(app, ps, st.RemoveUpload(), model)


def brush(app: AppState, ps: st.PromptState, editor: dict | None, model: str) -> st.PromptState:
    if ps.media is None:
        return replace(ps, message="load a video first", refused=True)
    add, sub = mediamod.brush_stroke(editor, ps.image.shape[:2])
    return update(app, ps, st.AddStroke(add, sub), model)


def brush_background(ps: st.PromptState) -> dict | None:
    """What the brush editor starts from: the frame with this frame's mask drawn on it."""
    if ps.image is None:
        return None
    return {"background": mediamod.overlay(ps.image, ps.here), "layers": [], "composite": None}


def pending_click(ps: st.PromptState, x: float, y: float) -> np.ndarray | None:
    """The frame with the click just made drawn on it, shown while SAM 2 computes the mask."""
    if ps.image is None:
        return None
    if ps.tool == "box":
        return mediamod.overlay(ps.image, ps.here, (x, y))
    fp = replace(ps.here, edits=(*ps.here.edits, st.Click(x, y, 1 if ps.tool == "add" else 0)))
    return mediamod.overlay(ps.image, fp)


def sam_status(app: AppState, ps: st.PromptState, model: str) -> str:
    if ps.image is None:
        return ""
    state = app.sam_state(model, ps.image)
    if state == "failed":
        return ("SAM 2 cannot run here: " + mediamod.public_message(app.sam_errors.get(model, ""))
                + " (clicks go to the job)")
    return SAM_STATES.get(state, "")


# ---------------------------------------------------------------- kept across reloads (app/persist.py) ------

def restore(app: AppState, key: str | None, ps: st.PromptState, model: str) -> st.PromptState:
    """The prompt this browser saved under ``key`` (a reload, a closed tab, a pod restart), on its frame decoded
    again; with no usable key, ``ps`` under a fresh one. A video that is gone (or changed) is said in one line
    and the page starts empty: a prompt is never restored onto another picture."""
    from app import persist

    key = persist.valid_key(key)
    fresh = replace(ps, key=key or persist.new_key())
    record = app.prompts.load(key) if key else None
    if record is None:
        return fresh
    meta, arrays = record
    media = meta.get("media") if isinstance(meta.get("media"), dict) else None
    name = Path(str((media or {}).get("path") or "the video")).name
    try:
        if media is None:
            return replace(st.from_record(meta, arrays, None), key=fresh.key, sam=app.sam_available(model))
        src = jobs.inside(str(media["path"]), [app.roots.input, app.roots.output])
        if not src.is_file():
            raise FileNotFoundError(name)
        info = mediamod.probe_media(str(src))
        if (info.width, info.height, info.frames) != (media.get("width"), media.get("height"), media.get("frames")):
            raise ValueError(f"{name} has changed since the prompt was made")
        image, view = mediamod.load_view(app.base.stereo, str(src), int(meta["frame"]), str(meta["mode"]),
                                         str(meta["layout"]), str(meta["master"]))
        out = st.from_record(meta, arrays, image, view)
    except FileNotFoundError:
        return update(app, fresh, st.LoadFailed(f"{name} is no longer in the volume: the saved prompt was "
                                                "dropped -> upload it again", refused=False), model)
    except (MattePodError, ValueError, KeyError, TypeError, OSError) as err:
        log.info("saved prompt %s dropped: %s", key, err)
        return update(app, fresh, st.LoadFailed(f"the saved prompt on {name} was dropped: "
                                                f"{mediamod.public_message(err)}", refused=False), model)
    cache = mediamod.upload_cache()
    prompts = {k: replace(fp, edits=tuple(replace(e, path=_live_upload(e.path, cache))
                                          if isinstance(e, st.Upload) else e for e in fp.edits))
               for k, fp in out.prompts.items()}
    available = app.sam_available(model)
    out = replace(out, key=fresh.key, prompts=prompts, sam=available,
                  message=f"restored: {out.media.name}, frame {out.frame}"
                          + (f", prompts on {len(prompts)} frame(s)" if prompts else ""))
    if available:
        app.prefetch(model, out.image)
    return out


def _live_upload(path: str, cache: Path) -> str:
    """An uploaded mask's file is shown again only while Gradio still has it (never a path from elsewhere)."""
    if not path:
        return ""
    try:
        return path if jobs.inside(path, [cache]).is_file() else ""
    except (MattePodError, OSError):
        return ""


def save(app: AppState, ps: st.PromptState) -> None:
    """After every change: the prompt as it is now, under its key (a failure is logged, never shown)."""
    try:
        app.prompts.save(ps)
    except Exception as exc:  # noqa: BLE001 - keeping the prompt is a courtesy; the page must go on
        log.warning("prompt not saved: %s", exc)


# ---------------------------------------------------------------- rendering ------------------------------------

@dataclass
class Page:
    """Everything the Matte tab's prompt area shows, from one PromptState."""

    image: np.ndarray | None
    frame: int
    frame_max: int
    media_md: str
    prompt_md: str
    message: str
    run_enabled: bool
    run_hint: str
    mask_file: str | None
    vr: bool
    mode: str
    layout_md: str
    prompted: list[int] = field(default_factory=list)


def render(ps: st.PromptState) -> Page:
    m = ps.media
    media_md = "No video loaded." if m is None else (
        f"**{m.name}** — {m.width}×{m.height}, {m.frames} frames, {m.fps:.3f} fps")
    issues = st.problems(ps)
    up = ps.here.upload
    layout_md = ""
    if ps.mode == "vr180" and ps.view is not None and ps.view.layout:
        layout_md = f"Detected: {ps.view.layout}"
    return Page(
        image=None if ps.image is None else mediamod.overlay(ps.image, ps.here, ps.corner),
        frame=ps.frame, frame_max=max(1, (m.frames - 1) if m else 1), media_md=media_md,
        prompt_md="\n\n".join(filter(None, [st.describe(ps), st.describe_subjects(ps)])), message=ps.message, run_enabled=not issues,
        run_hint=issues[0] if issues else "", mask_file=up.path if up and up.path else None,
        vr=ps.mode == "vr180", mode=ps.mode, layout_md=layout_md, prompted=sorted(ps.prompts))


# ---------------------------------------------------------------- run requests ------------------------------

def resolve_input(app: AppState, input_path: str) -> Path:
    """A file the caller names: relative = in the input folder; it must lie in the input or output folder."""
    try:
        return jobs.inside(input_path, [app.roots.input, app.roots.output], "input_path", base=app.roots.input)
    except MattePodError as err:
        raise _public(err) from None


def build_config(app: AppState, input_path: Path, overrides: dict[str, Any],
                 prompt: dict[str, Any] | None = None) -> configmod.Config:
    """The base config + the caller's choices through the one front door (``mattepod.request``): the server
    fixes the input, the folders and auto-resume; every path key is confined to the app's folders. The app
    keeps only its transport: this is the one place it turns a request into a Config."""
    fixed = {"input": str(input_path), "output_dir": str(app.roots.output),
             "weights_dir": str(app.roots.weights), "recovery.auto_resume": False}
    try:
        req = rq.parse({"overrides": overrides, "prompt": prompt}, "job options")
        return rq.to_config(req, base=app.base, roots=app.roots.confinement(), fixed=fixed, source="job options")
    except MattePodError as err:
        raise _public(err) from None


def submit(app: AppState, input_path: str, frames: list[st.FrameRequest],
           overrides: dict[str, Any], manager: jobs.JobManager | None = None, kind: str = "run") -> jobs.JobInfo:
    """Validate everything, create the run folder (config + prompt masks), queue it.

    ``frames``: the anchor first, then keyframes; a frame with a mask sends the mask (saved in the run folder),
    one without sends its clicks/box for the job's SAM 2. ``prompt.subjects`` in the options (several subjects,
    API only) replaces the single prompt. ``manager``/``kind``: a preview goes to its own queue and folder
    (app/preview.py)."""
    manager = manager or app.manager
    if not input_path:
        raise PageError("choose a video first (upload one or pick a file from the volume)")
    src = resolve_input(app, input_path)
    if not src.is_file():
        raise PageError(f"{src.name} does not exist any more -> upload it again")
    subjects = rq.flatten(overrides).get("prompt.subjects")
    has_prompt = any(f.mask is not None or f.points or f.box is not None for f in frames)
    if not has_prompt and not subjects:
        raise PageError("no prompt: click on the subject, draw a box, paint it with the brush, or upload a mask")
    if subjects and has_prompt:
        raise PageError("give either prompt.subjects (in options) or one prompt (points/box/mask), not both")
    prompt: dict[str, Any] | None = None
    anchor_mask, key_masks = None, {}
    if has_prompt:
        anchor, keys = frames[0], frames[1:]
        anchor_mask = anchor.mask
        prompt = {"frame": int(anchor.frame)}
        if anchor.mask is None:
            prompt["points"] = [{"x": x, "y": y, "label": int(lab)} for x, y, lab in anchor.points]
            prompt["box"] = anchor.box
        key_points = [{"frame": k.frame, "box": k.box,
                       "points": [{"x": x, "y": y, "label": int(lab)} for x, y, lab in k.points]}
                      for k in keys if k.mask is None]
        if key_points:
            prompt["keyframes"] = key_points
        key_masks = {k.frame: k.mask for k in keys if k.mask is not None}
    cfg = build_config(app, src, overrides, prompt)
    try:
        run = jobs.create_run(cfg, manager.output_dir, mask=anchor_mask, keyframe_masks=key_masks, kind=kind)
        job_id = manager.submit(run)
    except MattePodError as err:
        raise _public(err) from None
    log.info("%s %s queued (%s)", kind, job_id, src.name)
    return manager.status(job_id)


def run(app: AppState, ps: st.PromptState, overrides: dict[str, Any]) -> jobs.JobInfo:
    """Run: exactly the prompt the page shows (``app.state.run_prompt``), with the page's options."""
    try:
        if ps.subjects:
            subs = st.run_subjects(replace(ps, max_frames=int(overrides.get("max_frames") or 0)))
            return submit_subjects(app, ps.media.path, subs, overrides)
        frames = st.run_prompt(replace(ps, max_frames=int(overrides.get("max_frames") or 0)))
    except ValueError as err:
        raise PageError(str(err)) from None
    return submit(app, ps.media.path, frames, overrides)


def submit_subjects(app: AppState, input_path: str, subjects: list[st.Subject],
                    overrides: dict[str, Any], manager: jobs.JobManager | None = None,
                    kind: str = "run") -> jobs.JobInfo:
    """Several subjects from the page (#16): each subject's anchor and keyframes become a ``prompt.subjects``
    entry; masks (brush, upload, SAM 2 in the page) are saved in the run folder, clicks/boxes go to the
    job's SAM 2, as for the single prompt."""
    manager = manager or app.manager
    src = resolve_input(app, input_path)
    if not src.is_file():
        raise PageError(f"{src.name} does not exist any more -> upload it again")
    if rq.flatten(overrides).get("prompt.subjects"):
        raise PageError("give the subjects either on the page or as prompt.subjects in the options, not both")
    entries, masks = [], {}
    for sub in subjects:
        anchor, keys = sub.frames[0], sub.frames[1:]
        entry: dict[str, Any] = {"name": sub.name, "color": sub.color, "frame": int(anchor.frame)}
        if anchor.mask is None:
            entry["points"] = [{"x": x, "y": y, "label": int(lab)} for x, y, lab in anchor.points]
            entry["box"] = anchor.box
        else:
            masks[(sub.name, int(anchor.frame))] = anchor.mask
        kps = [{"frame": int(k.frame), "box": k.box, "points": [{"x": x, "y": y, "label": int(lab)}
                                                               for x, y, lab in k.points]}
               for k in keys if k.mask is None]
        if kps:
            entry["keyframes"] = kps
        masks.update({(sub.name, int(k.frame)): k.mask for k in keys if k.mask is not None})
        entries.append(entry)
    # the subjects join the config in the run folder (their masks are saved there): until then the options
    # are checked without the formats only subjects allow (the ID map), which are put back unchecked here
    # and checked with the subjects by create_run
    formats = rq.flatten(overrides).get("outputs.formats")
    only_subjects = [f for f in formats or [] if f == "idmap"]
    cfg = build_config(app, src, {**overrides, "outputs.formats": [f for f in formats if f != "idmap"]}
                       if only_subjects else overrides)
    if only_subjects:
        cfg = cfg.model_copy(update={"outputs": cfg.outputs.model_copy(
            update={"formats": [*cfg.outputs.formats, *only_subjects]})})
    try:
        run = jobs.create_run(cfg, manager.output_dir, subjects=entries, subject_masks=masks, kind=kind)
        job_id = manager.submit(run)
    except MattePodError as err:
        raise _public(err) from None
    log.info("%s %s queued (%s, %d subjects)", kind, job_id, src.name, len(entries))
    return manager.status(job_id)


def ui_overrides(formats, engine, scale, max_size, erode, dilate, warmup, colour, mode, master, layout,
                 max_frames, sam2_model) -> dict[str, Any]:
    o: dict[str, Any] = {
        "outputs.formats": list(formats or []), "engine.name": engine, "scale": float(scale),
        "engine.max_size": int(max_size), "engine.erode": int(erode), "engine.dilate": int(dilate),
        "engine.warmup": int(warmup), "outputs.color": hex_colour(colour), "stereo.mode": mode,
        "stereo.master": master, "stereo.layout": layout, "prompt.sam2_model": sam2_model,
    }
    if max_frames:
        o["max_frames"] = int(max_frames)
    return o


def hex_colour(colour: str | None) -> str:
    """gr.ColorPicker may answer rgba(...) or #rgb; the config wants #RRGGBB."""
    c = (colour or "#00B140").strip()
    if c.startswith("rgb"):
        nums = [float(v) for v in c[c.index("(") + 1 : c.index(")")].split(",")[:3]]
        return "#" + "".join(f"{int(round(v)):02X}" for v in nums)
    if len(c) == 4 and c.startswith("#"):
        return "#" + "".join(ch * 2 for ch in c[1:]).upper()
    return c[:7].upper()


# ---------------------------------------------------------------- jobs ----------------------------------------

@dataclass
class JobView:
    """One job as the page shows it, in one place: the status line and what its buttons can do."""

    id: str
    status: str
    line: str
    can_cancel: bool
    can_resume: bool
    can_delete: bool
    final: bool
    outputs: dict[str, str] = field(default_factory=dict)
    playable: dict[str, str] = field(default_factory=dict)  # format -> browser-playable file (never transcoded)
    files: list[str] = field(default_factory=list)
    previews: list[str] = field(default_factory=list)
    compare: tuple[str, str] | None = None  # (source frame PNG, composite PNG) for the before/after slider


def job_view(app: AppState, job_id: str | None) -> JobView | None:
    if not job_id:
        return None
    try:
        info = app.manager.status(job_id)
    except MattePodError:
        return None
    line = f"**{info.id}** — {info.summary()}"
    if info.error and info.status != jobs.COMPLETED:
        line = f"**{info.id}** — {info.status}: {mediamod.public_message(info.error.get('message', ''))}"
    if info.status == jobs.COMPLETED and (scores := page_markdown(info.run_dir)):  # issue 17: quality.json
        line += "\n\n" + scores
    final = info.status in jobs.FINAL
    if final and (seqs := info.folders()):  # image sequences are folders: they come in the zip
        line += f"\n\nImage sequences ({', '.join(sorted(seqs))}): download them with **Zip outputs**."
    return JobView(info.id, info.status, line, can_cancel=info.status in (jobs.QUEUED, jobs.RUNNING)
                   and not info.cancelling, can_resume=info.resumable, can_delete=final, final=final,
                   outputs=info.outputs, playable=playable(info), files=info.files(), previews=info.previews,
                   compare=compare_pair(app, info) if info.status == jobs.COMPLETED else None)


def playable(info: jobs.JobInfo) -> dict[str, str]:
    """Videos the browser can play as they are: the pipeline's proxies first; an output only when it is
    already 8-bit H.264 in MP4 (checked with our probe), so Gradio's Video never converts anything."""
    out = dict(info.proxies)
    for fmt, path in info.outputs.items():
        if fmt in out or Path(path).suffix.lower() != ".mp4":
            continue
        try:
            from mattepod.proxies import is_browser_playable

            if is_browser_playable(path):
                out[fmt] = path
        except Exception:  # noqa: BLE001 - a file we cannot probe is simply not shown inline
            continue
    return out


def compare_pair(app: AppState, info: jobs.JobInfo) -> tuple[str, str] | None:
    """The source frame next to the composite preview of the same frame (written once, in the run)."""
    comps = sorted(p for p in info.previews if Path(p).name.startswith("composite_"))
    if not comps or not info.input:
        return None
    comp = Path(comps[len(comps) // 2])
    src_png = comp.with_name(comp.name.replace("composite_", "source_"))
    if not src_png.is_file():
        try:
            import cv2

            from mattepod.media.probe import probe
            from mattepod.media.reader import read_frame

            src = jobs.inside(info.input, [app.roots.input, app.roots.output])
            k = int(comp.stem.split("_")[-1])
            frame = read_frame(probe(str(src)), k)
            cv2.imwrite(str(src_png), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        except (MattePodError, OSError, ValueError) as err:
            log.info("no before/after for %s: %s", info.id, err)
            return None
    return str(src_png), str(comp)


def latest_active_job(app: AppState) -> str:
    """The job a freshly opened page reattaches to: the newest running or queued one."""
    for j in app.manager.list_jobs():
        if j.status in (jobs.RUNNING, jobs.QUEUED):
            return j.id
    return ""


def cancel(app: AppState, job_id: str) -> JobView | None:
    """SIGTERM now, answer at once: the page shows 'cancelling' until the job has stopped at a frame."""
    try:
        app.manager.cancel(job_id, wait=False)
    except MattePodError as err:
        raise _public(err) from None
    return job_view(app, job_id)


def resume(app: AppState, job_id: str) -> JobView | None:
    try:
        app.manager.resume(job_id)
    except MattePodError as err:
        raise _public(err) from None
    return job_view(app, job_id)


def delete(app: AppState, job_id: str) -> None:
    try:
        app.manager.delete(job_id)
    except MattePodError as err:
        raise _public(err) from None


def zip_job(app: AppState, job_id: str) -> str:
    try:
        return str(app.manager.zip_outputs(job_id))
    except MattePodError as err:
        raise _public(err) from None


def jobs_table(app: AppState) -> list[list[Any]]:
    rows = []
    for j in app.manager.list_jobs():
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(j.created)) if j.created else ""
        err = (j.error or {}).get("message", "") if j.status in ("failed", "interrupted") else ""
        status = "cancelling" if j.cancelling else j.status
        rows.append([j.id, status, f"{j.frame or 0}/{j.total or '?'}",
                     jobs.fmt_duration(j.elapsed) if j.elapsed is not None else "", created,
                     ", ".join(j.outputs), mediamod.public_message(err)])
    return rows


def parse_options(options: str | None) -> dict[str, Any]:
    try:
        opts = json.loads(options) if options else {}
    except ValueError:
        raise PageError("options is not JSON -> give e.g. {\"engine.name\": \"mask\"}") from None
    if not isinstance(opts, dict):
        raise PageError("options must be a JSON object of config keys")
    return opts


# ---------------------------------------------------------------- preview (issue 13) ---------------------------
# A short low-resolution run of exactly what Run would send, on the next seconds after the anchor frame,
# in its own queue and folder (app/preview.py). The page keeps one record per browser (a plain dict).


@dataclass
class PreviewView:
    """The preview area: one status line, the gallery once the preview has finished, what Stop can do."""

    line: str
    items: list | None = None  # [(image path, "frame N")] of a finished preview
    running: bool = False  # queued or running: Stop can act
    stale: bool = False  # the prompt or a matte option changed since: never shown as current
    final: bool = False


def preview_key(ps: st.PromptState) -> str:
    return previewmod.prompt_key(ps)


def preview_service(app: AppState) -> previewmod.Previews:
    """The app's preview queue over ``<output>/.previews/`` (made once; leftovers removed then)."""
    return previewmod.service(app.roots.output)


def start_preview(app: AppState, ps: st.PromptState, overrides: dict[str, Any],
                  previous: dict | None = None) -> dict:
    """Preview: the same prompt as Run (``preview.plan`` refuses exactly what Run refuses), shorter and
    smaller. The browser's previous preview is stopped and deleted; returns the browser's new record."""
    from mattepod.device import resolve

    try:
        engine = overrides.get("engine.name") or app.base.engine.name  # the mask engine costs nothing anywhere
        cpu = engine != "mask" and resolve(str(overrides.get("engine.device") or app.base.engine.device)) == "cpu"
    except MattePodError as err:
        raise _public(err) from None
    try:
        plan = previewmod.plan(ps, overrides, cpu=cpu)
    except ValueError as err:
        raise PageError(mediamod.public_message(err)) from None
    if engine == "matanyone":
        from mattepod.matting import find_matanyone_weights

        try:
            find_matanyone_weights(app.base.engine.model, app.roots.weights)
        except MattePodError as err:
            raise _public(err) from None
    svc = preview_service(app)
    svc.retire((previous or {}).get("id"))
    if plan.subjects:
        info = submit_subjects(app, ps.media.path, list(plan.subjects), plan.overrides, manager=svc.manager,
                               kind="preview")
    else:
        info = submit(app, ps.media.path, list(plan.frames), plan.overrides, manager=svc.manager, kind="preview")
    svc.prune(keep=info.id)
    return {"id": info.id, "prompt": previewmod.prompt_key(ps), "options": previewmod.options_key(overrides),
            "start": plan.start, "count": plan.count, "shown": list(plan.shown), "subjects": bool(plan.subjects),
            "engine": plan.overrides.get("engine.name") or app.base.engine.name,
            "size": plan.overrides["engine.max_size"], "left_out": list(plan.left_out), "input": ps.media.path}


def preview_view(app: AppState, record: dict | None, key: str, overrides: dict[str, Any]) -> PreviewView:
    """The browser's preview as it stands, and whether it is still the preview of the page's prompt."""
    if not record:
        return PreviewView("")
    stale = record["prompt"] != key or record["options"] != previewmod.options_key(overrides)
    svc = preview_service(app)
    first, last = record["start"], record["start"] + record["count"] - 1
    span = f"frames {first}–{last}"
    try:
        info = svc.manager.status(record["id"])
    except MattePodError:
        return PreviewView("This preview is gone (replaced or cleaned up): press Preview again.", stale=True,
                           final=True)
    view = PreviewView("", stale=stale, running=info.status in (jobs.QUEUED, jobs.RUNNING),
                       final=info.status in jobs.FINAL)
    if info.status == jobs.QUEUED:
        view.line = f"Preview of {span} waits for the preview before it to stop…"
    elif info.status == jobs.RUNNING:
        view.line = f"Previewing {span} ({record['engine']}, ≤{record['size']} px) — {info.summary()}"
    elif info.status == jobs.COMPLETED:
        try:
            view.items = previewmod.gallery(Path(info.run_dir), record["input"], first, record["subjects"])
            shown = ", ".join(c.split()[-1] for _, c in view.items)
            view.line = (f"Preview of {span} ({record['engine']}, ≤{record['size']} px): the matte on frames "
                         f"{shown}. Run mattes the whole video at full size.")
        except (MattePodError, OSError, ValueError) as err:
            view.line = f"Preview images could not be made: {mediamod.public_message(err)}"
    elif info.status == jobs.CANCELLED:
        view.line = "Preview stopped."
    else:
        view.line = "Preview failed: " + mediamod.public_message((info.error or {}).get("message", info.status))
    if record.get("left_out"):
        view.line += " Not in this preview: " + "; ".join(record["left_out"]) + "."
    if stale:
        view.line = ("**Stale:** the prompt or the options changed since this preview -> press Preview again. "
                     f"(It shows the earlier prompt: {view.line})")
    return view


def stop_preview(app: AppState, record: dict | None) -> None:
    """Stop: SIGTERM now; the run stops at a frame boundary (its folder goes with the next preview)."""
    if not record:
        return
    svc = preview_service(app)
    try:
        svc.manager.cancel(record["id"], wait=False)
    except MattePodError as err:
        raise _public(err) from None
