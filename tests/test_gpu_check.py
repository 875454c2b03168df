"""bench/gpu_check.sh in its CPU mode: the prepared GPU check runs end to end and prints one JSON line
with every section (CI runs this; on a GPU the same script measures the CUDA path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_cpu_mode():
    from matanyone_common import need_reference

    need_reference()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHON": sys.executable}
    res = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--cpu"], capture_output=True, text=True,
                         env=env, timeout=900, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["bench"] == "gpu_check" and out["device"] == "cpu"
    for name in ("probes", "fidelity", "model_fps", "end_to_end", "oom_step_down"):
        assert "error" not in out[name], (name, out[name])
    assert out["fidelity"]["ok"] and out["fidelity"]["fp32_tiny"]["max"] <= 1e-4
    assert out["end_to_end"]["mono"]["status"] == "completed"
    assert out["end_to_end"]["vr180_sbs"]["status"] == "completed"
    assert out["oom_step_down"]["ok"] and out["oom_step_down"]["frames_out"] == 4
    assert out["ok"]
