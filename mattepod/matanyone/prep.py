"""Input preparation of the official CLI, reproduced exactly in torch: mask morphology and max_size.

* Morphology: the prompt mask is dilated, then eroded, each with OpenCV's ``MORPH_ELLIPSE`` kernel of
  size r x r and its default anchor (r // 2, r // 2). For an even r the kernel is not centred, and the
  same kernel/anchor is used for both operations, so dilate-then-erode shifts the mask by +1 px down
  and right (README section 4). Dilation ignores pixels outside the image; erosion treats them as
  foreground (a mask touching the border is not eaten from the border).
* ``max_size``: if the shorter side exceeds it, frames are resized with area averaging (adaptive
  average pooling) and the morphed mask with legacy nearest, to ``int(H / min * max_size)`` x
  ``int(W / min * max_size)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ellipse_rows(size: int) -> list[tuple[int, int]]:
    """Per kernel row, the [start, stop) columns set by ``cv2.getStructuringElement(MORPH_ELLIPSE)``."""
    r = c = size // 2
    inv_r2 = 1.0 / (r * r) if r else 0.0
    rows = []
    for i in range(size):
        dy = i - r
        j1 = j2 = 0
        if abs(dy) <= r:
            dx = int(round(c * ((r * r - dy * dy) * inv_r2) ** 0.5))
            j1, j2 = max(c - dx, 0), min(c + dx + 1, size)
        rows.append((j1, j2))
    return rows


def ellipse_kernel(size: int) -> torch.Tensor:
    k = torch.zeros((size, size), dtype=torch.bool)
    for i, (j1, j2) in enumerate(ellipse_rows(size)):
        k[i, j1:j2] = True
    return k


def _morph(binary: torch.Tensor, size: int, dilate: bool) -> torch.Tensor:
    """Max (dilate) or min (erode) over the kernel taps: out(y, x) = op over taps (i, j) of
    in(y + i - a, x + j - a), a = size // 2. Done row by row with a 1-D running max of the row's span."""
    h, w = binary.shape
    a = size // 2
    x = binary.to(torch.float32)
    if not dilate:
        x = 1.0 - x  # erosion of the foreground = dilation of the background; outside = foreground
    padded = F.pad(x[None, None], (a, size - 1 - a, a, size - 1 - a), value=0.0)[0, 0]
    out = torch.zeros((h, w), dtype=torch.float32, device=binary.device)
    for i, (j1, j2) in enumerate(ellipse_rows(size)):
        if j2 <= j1:
            continue
        band = padded[i:i + h]  # rows y + i - a
        run = F.max_pool1d(band[None], kernel_size=j2 - j1, stride=1)[0]  # run[:, s] = max band[:, s : s+len]
        out = torch.maximum(out, run[:, j1:j1 + w])
    return out > 0.5 if dilate else out < 0.5


def dilate_erode(mask: torch.Tensor, dilate: int, erode: int, threshold: float = 0.5) -> torch.Tensor:
    """The CLI's mask preparation -> float mask on the 0..255 scale the core expects.

    ``mask`` is (H, W) float in [0, 1]. With no morphology the (possibly soft) mask is passed through;
    otherwise it is binarised at ``threshold`` first (a 0/255 PNG gives the same as the CLI's != 0).
    """
    if dilate <= 0 and erode <= 0:
        return mask.float() * 255.0
    m = mask >= threshold
    if dilate > 0:
        m = _morph(m, dilate, dilate=True)
    if erode > 0:
        m = _morph(m, erode, dilate=False)
    return m.to(torch.float32) * 255.0


def max_size_hw(h: int, w: int, max_size: int) -> tuple[int, int]:
    """Internal size for ``max_size`` (shorter side limit, -1 or 0 = none)."""
    short = min(h, w)
    if max_size <= 0 or short <= max_size:
        return h, w
    return int(h / short * max_size), int(w / short * max_size)


def resize_frame(image255: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(3, H, W) on the 0..255 scale -> area-averaged (3, h, w), still 0..255."""
    if tuple(image255.shape[-2:]) == tuple(hw):
        return image255
    return F.interpolate(image255[None], size=hw, mode="area")[0]


def resize_mask(mask255: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    if tuple(mask255.shape[-2:]) == tuple(hw):
        return mask255
    return F.interpolate(mask255[None, None], size=hw, mode="nearest")[0, 0]
