"""Post-processing: raw network output → results at the image's size, one implementation for all backends.

Runs on torch tensors on the engine's device (GPU when there is one); only the final arrays are copied
to the host.

Segmentation (``shared/design/edaformer.md`` section 6): the official path resizes the stride-8 logits
bilinearly (align_corners=False) to the network input size, then to the image size, then takes the
argmax (``LabelMode.OFFICIAL``); :mod:`.official_labels` gives those labels without the full-resolution
K-channel tensor (:func:`resize_logits` is that tensor, kept as the literal reference).
``LabelMode.FAST`` takes the argmax at network resolution and upsamples the labels by nearest
neighbour: less time still, differing along class boundaries.

Depth (``shared/design/dpt.md`` section 9): metric networks are converted to metres at network
resolution first (:mod:`dense_perception.networks.depth_units`), then resized bicubically
(align_corners=False) to the image size, as the official script does.
"""
from __future__ import annotations

import enum

import numpy as np
import torch
import torch.nn.functional as F

from ..networks.depth_units import DepthOutput
from .official_labels import official_labels


class LabelMode(str, enum.Enum):
    OFFICIAL = "official"  # bilinear logits to input size, then to image size, then argmax
    FAST = "fast"  # argmax at network resolution, nearest-neighbour labels


def label_dtype(num_classes: int) -> np.dtype:
    """uint8 up to 256 classes (labels 0..255), uint16 above."""
    return np.dtype(np.uint8) if num_classes <= 256 else np.dtype(np.uint16)


def resize_logits(logits: torch.Tensor, network_size: tuple[int, int],
                  image_size: tuple[int, int]) -> torch.Tensor:
    """The official two bilinear resizes: to the network input size, then (rescale) to the image size."""
    logits = F.interpolate(logits, size=network_size, mode="bilinear", align_corners=False)
    if tuple(network_size) != tuple(image_size):
        logits = F.interpolate(logits, size=image_size, mode="bilinear", align_corners=False)
    return logits


def labels_from_logits(
    logits: torch.Tensor,
    network_size: tuple[int, int],
    image_size: tuple[int, int],
    mode: LabelMode | str = LabelMode.OFFICIAL,
    with_confidence: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels ``[H, W]`` (uint8, or uint16 above 256 classes) and optionally the per-pixel confidence
    (the top class's softmax probability, float32) from logits ``[1, K, h, w]``."""
    mode = LabelMode(mode)
    dtype = label_dtype(logits.shape[1])
    if mode is LabelMode.OFFICIAL:
        labels, confidence = official_labels(logits, network_size, image_size, with_confidence)
        confidence_np = None if confidence is None else confidence.cpu().numpy()
        return labels.cpu().numpy().astype(dtype, copy=False), confidence_np
    logits = logits.float()
    if with_confidence:
        confidence, labels = logits.softmax(dim=1).max(dim=1)
    else:
        labels, confidence = logits.argmax(dim=1), None
    stacked = labels[:, None].float() if confidence is None else torch.stack([labels.float(), confidence], 1)
    stacked = F.interpolate(stacked, size=image_size, mode="nearest")
    labels = stacked[:, 0].long()
    confidence = None if confidence is None else stacked[:, 1]
    labels_np = labels[0].to(torch.int32).cpu().numpy().astype(dtype)
    confidence_np = None if confidence is None else confidence[0].cpu().numpy().astype(np.float32)
    return labels_np, confidence_np


def depth_to_image(raw: torch.Tensor, image_size: tuple[int, int], output: DepthOutput) -> np.ndarray:
    """Depth ``[H, W]`` float32 from the raw DPT output ``[1, h, w]``: metres for metric outputs (the
    metric checkpoints, or a MiDaS output with a per-scene fit, :meth:`DepthOutput.fitted`), converted at
    network resolution before the resize as the official script does; relative inverse depth otherwise."""
    raw = raw.float()
    if output.is_metric:
        raw = output.to_metres(raw)
    if tuple(raw.shape[-2:]) != tuple(image_size):
        raw = F.interpolate(raw[:, None], size=image_size, mode="bicubic", align_corners=False)[:, 0]
    return raw[0].cpu().numpy().astype(np.float32, copy=False)
