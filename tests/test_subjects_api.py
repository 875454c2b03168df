"""The app's API takes a subjects list (``options: {"prompt.subjects": [...]}``): real app process,
gradio_client, real ``engine.name: mask`` jobs. Subject mask files must lie in the volumes."""

import json

import cv2
import numpy as np
import pytest
from gradio_client import Client

from tests.app_harness import RunningApp, make_clip, write_mask


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("app16")
    with RunningApp(root) as running:
        make_clip(running.input / "clip.mp4", frames=8)
        write_mask(running.input / "square.png")
        corner = np.zeros((96, 160), np.uint8)
        corner[60:90, 110:150] = 255
        cv2.imwrite(str(running.input / "corner.png"), corner)
        write_mask(root / "outside.png")
        yield running


def submit(app, subjects):
    client = Client(app.url, verbose=False)
    opts = {"engine.name": "mask", "outputs.formats": ["alpha"], "outputs.previews": 1, "prompt.subjects": subjects}
    return client, client.predict(video=None, input_path=str(app.input / "clip.mp4"), points="", box="",
                                  prompt_frame=0, mask=None, options=json.dumps(opts), api_name="/submit_job")


def test_a_subjects_list_makes_a_matte_per_subject(app):
    client, info = submit(app, [{"name": "square", "mask": str(app.input / "square.png")},
                                {"name": "corner", "mask": str(app.input / "corner.png"), "color": "#ff0000"}])
    st = client.predict(job_id=info["id"], api_name="/wait_job")
    assert st["status"] == "completed", st
    files = {f.rsplit("/", 1)[-1] for f in client.predict(job_id=info["id"], api_name="/job_files")}
    assert {"clip_alpha.mp4", "clip_square_alpha.mp4", "clip_corner_alpha.mp4"} <= files


def test_a_subject_mask_outside_the_volumes_is_refused(app):
    with pytest.raises(Exception, match="outside the allowed folders"):
        submit(app, [{"name": "x", "mask": str(app.root / "outside.png")}])
    with pytest.raises(Exception, match="outside the allowed folders"):
        submit(app, [{"name": "x", "points": [{"x": 1, "y": 2}],
                      "keyframes": [{"frame": 3, "mask": "/etc/passwd"}]}])
