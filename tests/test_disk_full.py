"""A full disk is reported as such (exit 8, 'free space, then --resume'), not as a generic encode error."""

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from mattepod.errors import DiskFullError
from mattepod.media.writer import FFmpegWriter


def test_writer_on_a_full_device_raises_disk_full():
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    w = FFmpegWriter(Path("/dev/full"), 64, 48, Fraction(24), "rgb24", ["-c:v", "rawvideo", "-f", "rawvideo"])
    with pytest.raises(DiskFullError) as err:
        for _ in range(200):
            w.write(np.zeros((48, 64, 3), np.uint8))
        w.close()
    assert err.value.exit_code == 8 and "--resume" in str(err.value)
