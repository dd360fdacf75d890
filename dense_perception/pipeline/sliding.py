"""Sliding-window inference, as mmseg's ``slide_inference`` runs it at test time.

Windows of ``crop`` (h, w) pixels are placed every ``stride`` (h, w) pixels; the last window of a row or
column is moved back to end at the border (an image smaller than a window is one window of its own
size). Each window's logits are resized bilinearly (align_corners False) to the window, summed into a
canvas the size of the network input, and divided by the number of windows covering each pixel.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

#: (top, bottom, left, right) of a window, bottom/right exclusive.
Window = tuple[int, int, int, int]


def window_count(side: int, crop: int, stride: int) -> int:
    """Windows along one side: ``ceil((side - crop) / stride) + 1`` (1 when the side fits one window)."""
    return max(side - crop + stride - 1, 0) // stride + 1


def sliding_windows(height: int, width: int, crop: tuple[int, int], stride: tuple[int, int]) -> list[Window]:
    """The windows covering a ``height``x``width`` input, row by row."""
    if min(crop + stride) < 1:
        raise ValueError(f"crop and stride must be positive, got crop {crop}, stride {stride}")
    windows = []
    for row in range(window_count(height, crop[0], stride[0])):
        for col in range(window_count(width, crop[1], stride[1])):
            bottom, right = min(row * stride[0] + crop[0], height), min(col * stride[1] + crop[1], width)
            windows.append((max(bottom - crop[0], 0), bottom, max(right - crop[1], 0), right))
    return windows


def slide_logits(batch: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int],
                 run: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Logits ``[B, K, H, W]`` (float32, on the CPU) at the input's size: ``run`` (a network forward giving
    logits at any stride) applied to every window of ``batch`` ``[B, 3, H, W]``, averaged where windows
    overlap."""
    height, width = int(batch.shape[2]), int(batch.shape[3])
    canvas: torch.Tensor | None = None
    count = torch.zeros(1, 1, height, width)
    for top, bottom, left, right in sliding_windows(height, width, crop, stride):
        out = run(batch[:, :, top:bottom, left:right]).float().cpu()
        out = F.interpolate(out, size=(bottom - top, right - left), mode="bilinear", align_corners=False)
        if canvas is None:
            canvas = torch.zeros(out.shape[0], out.shape[1], height, width)
        canvas[:, :, top:bottom, left:right] += out
        count[:, :, top:bottom, left:right] += 1
    assert canvas is not None  # there is always at least one window
    return canvas / count
