"""VR180 through the CLI with the pipeline's own wiring: layout from the name, matte names without the
`_alpha` token, the packed passthrough file (geometry, name, 10-bit, audio), consistency in metadata."""

from __future__ import annotations

import json
import subprocess

import cv2
import numpy as np

from stereo_synth import sbs_frame
from tests.conftest import run_cli, stream_info

EYE, FRAMES = 64, 8


def test_vr180_cli_run(tmp_path):
    path = tmp_path / "dance_LR_180.mp4"
    raw = b"".join(sbs_frame(EYE, EYE, t, disparity=-6)[0].tobytes() for t in range(FRAMES))
    subprocess.run(["ffmpeg", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{2 * EYE}x{EYE}",
                    "-r", "10", "-i", "-", "-f", "lavfi", "-i", "sine=frequency=300:duration=0.8",
                    "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-crf", "10", "-pix_fmt", "yuv444p",
                    "-c:a", "aac", "-y", str(path)], input=raw, check=True, timeout=120)
    _, mask = sbs_frame(EYE, EYE, 0, disparity=-6)
    mask[:, EYE:] = 0  # prompt on the master (left) eye only
    cv2.imwrite(str(tmp_path / "m.png"), (mask * 255).astype(np.uint8))
    res = run_cli("run", "--input", str(path), "--mask", str(tmp_path / "m.png"), "--engine", "mask",
                  "--mode", "vr180", "--outputs", "alpha,green,packed", "-o", str(tmp_path / "o"), "-q", check=True)
    run_dir = next((tmp_path / "o").iterdir())
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["status"] == "completed", res.stderr
    names = meta["outputs"]
    assert names["alpha"] == "dance_LR_180_matte.mp4"  # no "_alpha" token: players would take it for packed
    assert names["packed"] == "dance_LR_180_FISHEYE180_alpha.mp4"
    assert meta["stereo"]["layout"]["arrangement"] == "sbs" and meta["stereo"]["layout"]["origin"]["arrangement"] == "name"
    assert meta["stereo"]["consistency"]["frames"] == FRAMES
    assert meta["stereo"]["consistency"]["iou_mean"] > 0.8  # the transferred prompt landed on the object
    lines = (run_dir / "stereo_consistency.jsonl").read_text().splitlines()
    assert [json.loads(x)["frame"] for x in lines] == list(range(FRAMES))
    streams = stream_info(run_dir / names["packed"])
    video = [s for s in streams if s["codec_type"] == "video"][0]
    assert (video["width"], video["height"]) == (2 * EYE, EYE) and video["pix_fmt"] == "yuv420p10le"
    assert int(video["nb_read_frames"]) == FRAMES
    assert any(s["codec_type"] == "audio" for s in streams)
    # The left eye's matte sits on the seam at the top/bottom edge (the eye circles stay picture).
    raw16 = subprocess.run(["ffmpeg", "-v", "error", "-i", str(run_dir / names["packed"]), "-frames:v", "1",
                            "-f", "rawvideo", "-pix_fmt", "rgb48le", "-"], capture_output=True, check=True).stdout
    packed = np.frombuffer(raw16, np.uint16).reshape(EYE, 2 * EYE, 3)
    centre = packed[EYE // 2, EYE // 2].astype(float)
    assert centre.max() > 0  # picture inside the left circle
