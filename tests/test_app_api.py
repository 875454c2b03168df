"""The app's API through gradio_client, against the real app process and real `engine.name: mask` jobs."""

import json
import subprocess
import time

import cv2
import numpy as np
import pytest
from gradio_client import Client, handle_file

from tests.app_harness import BOX, RunningApp, make_clip, make_long_clip, write_mask
from tests.weightgen import make_sam2_weights

MASK_JOB = json.dumps({"engine.name": "mask", "outputs.formats": ["alpha"], "outputs.previews": 1,
                       "engine.erode": 0, "engine.dilate": 0})


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    with RunningApp(root) as running:  # stopped (its whole process group) even when setup fails below
        make_clip(root / "clips" / "clip.mp4")
        write_mask(root / "clips" / "mask.png")
        make_long_clip(running.input / "long.mp4")
        make_clip(running.input / "clicks.mp4", frames=8)
        yield running


@pytest.fixture(scope="module")
def client(app):
    return Client(app.url, verbose=False)


def frames_of(path: str) -> list[np.ndarray]:
    cap = cv2.VideoCapture(path)
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            return out
        out.append(f[..., 0].astype(np.float32) / 255.0)


def process_groups() -> set[int]:
    out = subprocess.run(["ps", "-eo", "pgid=,stat="], capture_output=True, text=True, check=True).stdout
    return {int(line.split()[0]) for line in out.splitlines() if line.split() and "Z" not in line.split()[1]}


def test_endpoints_are_named(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/submit_job", "/job_status", "/wait_job", "/job_files", "/cancel_job", "/list_jobs"} <= names
    assert not any("lambda" in n for n in names), names  # UI-only events stay private


def test_no_password_warns_loudly(app):
    assert "NO PASSWORD SET" in app.log_text()


def test_submit_upload_poll_and_download_the_alpha(app, client):
    info = client.predict(video=handle_file(str(app.root / "clips" / "clip.mp4")), input_path="", points="",
                          box="", prompt_frame=0, mask=handle_file(str(app.root / "clips" / "mask.png")),
                          options=MASK_JOB, api_name="/submit_job")
    assert info["status"] in ("queued", "running")
    assert (app.input / "uploads" / "clip.mp4").is_file()  # the upload now lives in the input volume
    seen = set()
    for _ in range(300):
        st = client.predict(job_id=info["id"], api_name="/job_status")
        seen.add(st["status"])
        if st["status"] not in ("queued", "running"):
            break
        time.sleep(0.2)
    assert st["status"] == "completed", st
    assert (st["frame"], st["total"]) == (20, 20)
    files = client.predict(job_id=info["id"], api_name="/job_files")
    alpha = next(f for f in files if f.endswith("_alpha.mp4"))
    frames = frames_of(alpha)
    assert len(frames) == 20
    for n in (0, 10, 19):  # the matte follows the white square (mask engine: anchor mask, no weights)
        x = BOX["x0"] + BOX["size"] // 2
        y = BOX["y0"] + BOX["size"] // 2
        assert frames[n][y, x] > 0.6 and frames[n][5, 150] < 0.1


@pytest.mark.slow
def test_clicks_without_a_mask_are_resolved_by_the_job(app, client):
    """Points go to the job as prompt.points; the CLI runs SAM 2 on them with the app's weights folder."""
    make_sam2_weights(app.weights, "tiny")  # seeded random SAM 2.1 tiny, loaded through the real loader
    opts = json.dumps({"engine.name": "mask", "outputs.formats": ["alpha"], "prompt.sam2_model": "tiny",
                       "engine.device": "cpu", "engine.erode": 0, "engine.dilate": 0})
    info = client.predict(video=None, input_path=str(app.input / "clicks.mp4"),
                          points="[[40, 50, 1], [150, 5, 0]]", box="", prompt_frame=3, mask=None,
                          options=opts, api_name="/submit_job")
    st = client.predict(job_id=info["id"], api_name="/wait_job")
    assert st["status"] == "completed", st
    cfg = (app.output / info["id"] / "config.yaml").read_text()
    assert "label: 0" in cfg and "frame: 3" in cfg and str(app.weights) in cfg


def test_a_failed_job_reports_its_error(app, client):
    (app.input / "broken.mp4").write_bytes(b"this is not a video")
    info = client.predict(video=None, input_path=str(app.input / "broken.mp4"), points="[[60, 50, 1]]", box="",
                          prompt_frame=0, mask=None, options=MASK_JOB, api_name="/submit_job")
    st = client.predict(job_id=info["id"], api_name="/wait_job")
    assert st["status"] == "failed"
    assert st["error"]["exit_code"] == 4 and "broken.mp4" in st["error"]["message"]


def test_queue_positions_and_cancel_stops_the_process(app, client):
    long = str(app.input / "long.mp4")
    mask = handle_file(str(app.root / "clips" / "mask.png"))
    opts = json.dumps({"engine.name": "mask", "outputs.formats": ["alpha"], "runtime.queue_size": 1})
    first = client.predict(video=None, input_path=long, points="", box="", prompt_frame=0, mask=mask,
                           options=opts, api_name="/submit_job")
    second = client.predict(video=None, input_path=long, points="", box="", prompt_frame=0, mask=mask,
                            options=opts, api_name="/submit_job")
    st2 = client.predict(job_id=second["id"], api_name="/job_status")
    assert st2["status"] == "queued" and st2["position"] == 1
    cancelled = client.predict(job_id=second["id"], api_name="/cancel_job")
    assert cancelled["status"] == "cancelled"
    for _ in range(200):
        st1 = client.predict(job_id=first["id"], api_name="/job_status")
        if st1["status"] != "queued" and st1["frame"]:
            break
        time.sleep(0.1)
    assert st1["status"] == "running", st1
    pid = json.loads((app.output / first["id"] / "job.json").read_text())["pid"]
    assert pid in process_groups()  # the job leads its own process group (with its ffmpeg children)
    cancelled = client.predict(job_id=first["id"], api_name="/cancel_job")
    assert cancelled["status"] == "cancelled" and cancelled["frame"] < 3000, cancelled
    assert pid not in process_groups(), "a process of the cancelled job is still alive"
    listed = {j["id"]: j["status"] for j in client.predict(api_name="/list_jobs")}
    assert listed[second["id"]] == "cancelled"


@pytest.mark.parametrize("job_id", ["../input", "..", "a/b", "/etc/passwd", "x/../../y"])
def test_job_ids_cannot_traverse(client, job_id):
    for api in ("/job_status", "/job_files", "/cancel_job"):
        with pytest.raises(Exception, match="not a job id|outside the allowed"):
            client.predict(job_id=job_id, api_name=api)


def test_input_paths_must_stay_in_the_volumes(app, client):
    (app.input / "escape.mp4").symlink_to("/etc/hostname")
    for path in ["/etc/passwd", str(app.input / ".." / ".." / "x.mp4"), str(app.input / "escape.mp4"), ""]:
        with pytest.raises(Exception, match="outside the allowed folders|no file path|choose a video"):
            client.predict(video=None, input_path=path, points="[[1, 1, 1]]", box="", prompt_frame=0, mask=None,
                           options=MASK_JOB, api_name="/submit_job")


@pytest.mark.parametrize("options", [{"output_dir": "/tmp"}, {"weights_dir": "/tmp"}, {"input": "/etc/passwd"},
                                     {"prompt.mask": "/etc/passwd"}, {"outputs.background": "/etc/passwd"},
                                     {"prompt": {"mask_add": ["/etc/passwd"]}},
                                     {"prompt": {"keyframes": [{"frame": 2, "mask": "/etc/passwd"}]}}])
def test_path_options_are_refused(app, client, options):
    with pytest.raises(Exception, match="chosen by the server|outside the allowed folders"):
        client.predict(video=None, input_path=str(app.input / "long.mp4"), points="[[1, 1, 1]]", box="",
                       prompt_frame=0, mask=None, options=json.dumps(options), api_name="/submit_job")


def test_bad_options_name_the_key(app, client):
    with pytest.raises(Exception, match="engine.erode"):
        client.predict(video=None, input_path=str(app.input / "long.mp4"), points="[[1, 1, 1]]", box="",
                       prompt_frame=0, mask=None, options=json.dumps({"engine.erode": "lots"}),
                       api_name="/submit_job")


def test_only_the_volumes_are_served(app, client):
    import urllib.error
    import urllib.request

    def code(path):
        try:
            return urllib.request.urlopen(f"{app.url}gradio_api/file={path}", timeout=10).status
        except urllib.error.HTTPError as err:
            return err.code

    (app.output / "served.txt").write_text("ok")
    assert code(app.output / "served.txt") == 200
    assert code("/etc/passwd") in (403, 404)
    assert code(app.log) in (403, 404)  # the app's own folder is not a volume
    assert code(str(app.output) + "/../" + app.log.name) in (403, 404)


def test_vr180_job_through_the_api(app, client):
    """A side-by-side clip in vr180 mode: the full-frame mask's master half is the prompt."""
    clip = make_clip(app.input / "scene_LR_180.mp4", frames=6, w=192, h=96)  # the square is in the left eye
    mask = app.root / "clips" / "vr_mask.png"
    full = np.zeros((96, 192), np.uint8)
    full[BOX["y0"] : BOX["y0"] + BOX["size"], BOX["x0"] : BOX["x0"] + BOX["size"]] = 255
    cv2.imwrite(str(mask), full)
    opts = json.dumps({"engine.name": "mask", "outputs.formats": ["alpha"], "stereo.mode": "vr180",
                       "engine.erode": 0, "engine.dilate": 0})
    info = client.predict(video=None, input_path=str(clip), points="", box="", prompt_frame=0,
                          mask=handle_file(str(mask)), options=opts, api_name="/submit_job")
    st = client.predict(job_id=info["id"], api_name="/wait_job")
    assert st["status"] == "completed", st
    assert st["total"] == 6 and st["outputs"]
