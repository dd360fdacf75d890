"""Pre-processing: camera image → normalised network input, as each network's official test pipeline does it.

Shared by every backend (torch, onnxruntime, tensorrt). A network's pipeline is data in its registry entry
(:class:`~..networks.registry.Preprocessing`: ``spec.preprocessing``) and runs here: :func:`preprocess_with`
and :func:`network_size_with`. Each kind follows the official inference (``shared/design/dpt.md`` section
8, ``edaformer.md`` section 6, ``sra.md`` section 5, ``hrvit.md`` §7, ``vit_comer.md`` §6) and uses OpenCV
the way the official code does, so the network input is the official one bit for bit.

Input images are RGB ``uint8`` ``[H, W, 3]`` (see :func:`as_rgb_uint8` for what else is accepted).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping

import cv2
import numpy as np
import torch

from ..networks.registry import Preprocessing, registered_networks

#: mmseg's ImageNet statistics on the 0-255 scale, RGB order.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
#: mmseg's ``AlignedResize``: each side rounded up to a multiple of this.
ALIGN = 32


def _family_pipelines(family: str) -> dict[str, Preprocessing]:
    """The registered networks' pipelines of one family, by checkpoint dataset."""
    return {spec.dataset: spec.preprocessing for spec in registered_networks().values()
            if spec.family == family and spec.preprocessing is not None}


#: DPT network targets (height, width) of the official keep-aspect resize, per checkpoint dataset.
DPT_TARGETS: Mapping[str, tuple[int, int]] = MappingProxyType(
    {dataset: p.scale for dataset, p in _family_pipelines("dpt").items()})
#: EDAFormer official test scales (long side, short side) and whether sides are aligned to 32.
EDAFORMER_SCALES: Mapping[str, tuple[tuple[int, int], bool]] = MappingProxyType(
    {dataset: (p.scale, p.align == ALIGN) for dataset, p in _family_pipelines("edaformer").items()})
#: HRViT official test scales (long side, short side), per dataset (no alignment in the configs).
HRVIT_SCALES: Mapping[str, tuple[int, int]] = MappingProxyType(
    {dataset: p.scale for dataset, p in _family_pipelines("hrvit").items()})


class ImageError(ValueError):
    """An input image that cannot be processed (size, dtype, channels, NaNs)."""


@dataclass(frozen=True)
class NetworkInput:
    """A pre-processed image: the float32 batch the engines take, and how it maps to the image."""

    tensor: torch.Tensor  # [1, 3, h, w] float32, normalised
    image_size: tuple[int, int]  # (H, W) of the image the result must come back to
    network_size: tuple[int, int]  # (h, w) fed to the network


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Validate an image and return it as a contiguous RGB ``uint8`` ``[H, W, 3]`` array.

    Accepted: ``uint8`` ``[H, W, 3]`` (RGB), ``[H, W]`` or ``[H, W, 1]`` grey (replicated), ``[H, W, 4]``
    RGBA (alpha dropped), and float images in [0, 1] (rounded to 8 bits). Anything else, empty images
    and NaN/inf values raise :class:`ImageError` naming the problem.
    """
    if not isinstance(image, np.ndarray):
        raise ImageError(f"expected a NumPy image array, got {type(image).__name__}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ImageError(f"expected an image of shape HxW, HxWx1, HxWx3 or HxWx4, got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"empty image: shape {image.shape}")
    if image.dtype == np.uint8:
        rgb = image
    elif np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all():
            raise ImageError(f"image contains {int((~np.isfinite(image)).sum())} NaN or infinite values")
        if image.min() < 0 or image.max() > 1:
            raise ImageError(f"float images must lie in [0, 1], found [{image.min():.3g}, {image.max():.3g}]")
        rgb = np.rint(image * 255).astype(np.uint8)
    else:
        raise ImageError(f"unsupported image dtype {image.dtype}: use uint8 RGB (or float in [0, 1])")
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    elif rgb.shape[2] == 4:
        rgb = rgb[:, :, :3]
    return np.ascontiguousarray(rgb)


# ---- DPT ---------------------------------------------------------------------------------------
def dpt_network_size(height: int, width: int, target: tuple[int, int]) -> tuple[int, int]:
    """Official DPT ``Resize(keep_aspect_ratio=True, ensure_multiple_of=32, resize_method="minimal")``.

    The scale closer to 1 is used for both sides (ties go to the height's), each side is rounded to a
    multiple of 32 with NumPy's half-to-even rounding. A side that would round to 0 (tiny images) is
    clamped to 32 — the official code would produce an empty image there.
    """
    scale_h, scale_w = target[0] / height, target[1] / width
    scale = scale_w if abs(1 - scale_w) < abs(1 - scale_h) else scale_h
    return tuple(max(32, int(np.round(scale * side / 32) * 32)) for side in (height, width))  # type: ignore


def kitti_crop(image: np.ndarray) -> np.ndarray:
    """The official ``--kitti_crop``: the bottom 352 rows and the central 1216 columns."""
    height, width = image.shape[:2]
    if height < 352 or width < 1216:
        raise ImageError(f"the KITTI crop needs at least 352x1216 pixels, got {height}x{width}")
    top, left = height - 352, (width - 1216) // 2
    return image[top:top + 352, left:left + 1216]


def preprocess_dpt(image_rgb: np.ndarray, target: tuple[int, int] = DPT_TARGETS["midas"],
                   input_size: tuple[int, int] | None = None) -> NetworkInput:
    """DPT/MiDaS input: float64 [0, 1] image, OpenCV cubic resize, ``(x - 0.5) / 0.5``, float32 NCHW.

    Bit for bit the official transform, computed one channel at a time, so no float64 copy of the whole
    image exists (a 12-megapixel photograph: 96 MB per channel instead of 288 MB, twice).

    ``target`` is the official (height, width) of the keep-aspect resize; ``input_size`` instead forces
    an exact network size (multiples of 32; aspect not kept), e.g. for fixed-shape engines.
    """
    rgb = as_rgb_uint8(image_rgb)
    height, width = rgb.shape[:2]
    if input_size is not None:
        net_h, net_w = check_input_size(input_size, 32)
    else:
        net_h, net_w = dpt_network_size(height, width, target)
    normalised = np.empty((3, net_h, net_w), dtype=np.float32)  # written as the batch: no transposed copy
    for channel in range(3):  # one float64 channel at a time: a third of the memory, the same bits
        plane = rgb[..., channel].astype(np.float64)
        plane /= 255.0
        resized = cv2.resize(plane, (net_w, net_h), interpolation=cv2.INTER_CUBIC)
        del plane
        normalised[channel] = (resized - 0.5) / 0.5
    return NetworkInput(torch.from_numpy(normalised)[None], (height, width), (net_h, net_w))


def check_input_size(size: tuple[int, int], multiple: int = 1) -> tuple[int, int]:
    """A forced network input size as ints; ``ValueError`` unless positive multiples of ``multiple``."""
    height, width = (int(v) for v in size)
    if height < multiple or width < multiple or height % multiple or width % multiple:
        kind = f"positive multiples of {multiple}" if multiple > 1 else "positive"
        raise ValueError(f"network input size must be {kind}, got {height}x{width}")
    return height, width


# ---- mmseg (EDAFormer, SegFormer, PVT) ------------------------------------------------------------
def rescale_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv ``rescale_size`` with ``keep_ratio``: the largest size within (long, short), ``int(x + 0.5)``."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def mmseg_network_size(height: int, width: int, scale: tuple[int, int], align: int = 1,
                       fit_side: Callable[[int], int] | None = None) -> tuple[int, int]:
    """The official test-time size: keep-ratio rescale into ``scale``, sides rounded up to ``align``, then
    (a network with a size rule, HRViT) each side rounded up by ``fit_side`` to one the network runs on."""
    new_h, new_w = rescale_size(height, width, scale)
    aligned = math.ceil(new_h / align) * align, math.ceil(new_w / align) * align
    return aligned if fit_side is None else (fit_side(aligned[0]), fit_side(aligned[1]))


def edaformer_network_size(height: int, width: int, dataset: str) -> tuple[int, int]:
    """EDAFormer's official test-time size for an image (aligned resize for ADE20K/COCO-Stuff)."""
    scale, align = EDAFORMER_SCALES[dataset]
    return mmseg_network_size(height, width, scale, ALIGN if align else 1)


def normalise_imagenet(image_rgb: np.ndarray) -> np.ndarray:
    """mmcv ``imnormalize`` on an RGB image: float32, ``cv2.subtract`` mean, ``cv2.multiply`` by 1/std.

    mmseg's ``Normalize`` stores the statistics as float32 arrays and mmcv widens those to float64, so
    the constants are the float32-rounded ones (123.675 -> 123.67500305...): with the exact decimals
    one value in nine differs from the official input by one ulp."""
    image = image_rgb.astype(np.float32)
    mean = np.float64(np.array(IMAGENET_MEAN, dtype=np.float32).reshape(1, -1))
    std_inv = 1 / np.float64(np.array(IMAGENET_STD, dtype=np.float32).reshape(1, -1))
    cv2.subtract(image, mean, image)
    cv2.multiply(image, std_inv, image)
    return image


@functools.lru_cache(maxsize=1)
def _imagenet_table() -> np.ndarray:
    """:func:`normalise_imagenet` of every uint8 value, per channel ``[3, 256]`` (a pure function of the
    constants)."""
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    return np.ascontiguousarray(normalise_imagenet(ramp)[0].T)


def normalised_batch(image_rgb: np.ndarray) -> torch.Tensor:
    """:func:`normalise_imagenet` of a uint8 RGB image as a float32 NCHW batch of one, the same values
    looked up per channel (OpenCV ``LUT``): a uint8 has 256 values, so one table per channel gives the
    mmcv arithmetic bit for bit, in one pass instead of four."""
    planes = cv2.split(np.ascontiguousarray(image_rgb))  # faster than a transposed copy
    normalised = np.empty((len(planes), *image_rgb.shape[:2]), np.float32)
    for plane, table, out in zip(planes, _imagenet_table(), normalised):
        cv2.LUT(plane, table, dst=out)
    return torch.from_numpy(normalised)[None]


def preprocess_mmseg(image_rgb: np.ndarray, scale: tuple[int, int], align: int = 1,
                     input_size: tuple[int, int] | None = None,
                     fit_side: Callable[[int], int] | None = None) -> NetworkInput:
    """The mmseg test pipeline: keep-ratio rescale into ``scale`` = (long, short) with OpenCV bilinear on the
    uint8 image, then (``align`` > 1) each side rounded up to a multiple of ``align`` and resized again
    (``AlignedResize``); ImageNet mean/std, float32 NCHW. ``fit_side`` (HRViT's size rule) rounds each side
    up to one the network runs on, with a second bilinear resize where that changes the size.
    ``input_size`` forces an exact size instead.
    """
    rgb = as_rgb_uint8(image_rgb)
    height, width = rgb.shape[:2]
    if input_size is not None:
        net_h, net_w = check_input_size(input_size)
        image = cv2.resize(rgb, (net_w, net_h), interpolation=cv2.INTER_LINEAR)
    else:
        new_h, new_w = rescale_size(height, width, scale)
        image = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        net_h, net_w = mmseg_network_size(height, width, scale, align, fit_side)
        if align > 1 or (net_h, net_w) != (new_h, new_w):
            image = cv2.resize(image, (net_w, net_h), interpolation=cv2.INTER_LINEAR)
    return NetworkInput(normalised_batch(image), (height, width), image.shape[:2])


def _family_pipeline(family: str, dataset: str, title: str) -> Preprocessing:
    pipelines = _family_pipelines(family)
    if dataset not in pipelines:
        raise ValueError(f"unknown dataset {dataset!r}{title}; choose from {sorted(pipelines)}")
    return pipelines[dataset]


def preprocess_edaformer(image_rgb: np.ndarray, dataset: str = "ade20k",
                         input_size: tuple[int, int] | None = None) -> NetworkInput:
    """EDAFormer input as the official test pipeline builds it (:func:`preprocess_mmseg`).

    ADE20K / COCO-Stuff: keep-ratio rescale into (2048, 512), aligned to 32 (``AlignedResize``).
    Cityscapes: keep-ratio rescale into (2048, 1024), no alignment. ``input_size`` forces an exact size.
    """
    return preprocess_with(_family_pipeline("edaformer", dataset, ""), image_rgb, input_size)


# ---- HRViT --------------------------------------------------------------------------------------
def hrvit_network_size(height: int, width: int, dataset: str) -> tuple[int, int]:
    """HRViT's test-time size: the official keep-ratio rescale (``HRVIT_SCALES``), then each side
    rounded up to the nearest size the network runs on (``H mod 32 ∈ {0, 29, 30, 31}``); a side that
    already satisfies the rule -- every size the official pipeline can run -- is left as it is."""
    return network_size_with(_family_pipeline("hrvit", dataset, " for HRViT"), height, width)


def preprocess_hrvit(image_rgb: np.ndarray, dataset: str = "ade20k",
                     input_size: tuple[int, int] | None = None) -> NetworkInput:
    """HRViT input: the official pipeline (keep-ratio rescale into (2048, 512) for ADE20K or
    (2048, 1024) for Cityscapes, OpenCV bilinear, ImageNet mean/std), plus a second bilinear resize to
    :func:`hrvit_network_size` when the rescaled image breaks the size rule (the official code would
    fail on it: design note §7). ``input_size`` forces an exact size, which must satisfy the rule
    (``ValueError`` naming it otherwise)."""
    return preprocess_with(_family_pipeline("hrvit", dataset, " for HRViT"), image_rgb, input_size)


# ---- ViT-CoMer ----------------------------------------------------------------------------------
def vit_comer_network_size(height: int, width: int) -> tuple[int, int]:
    """ViT-CoMer's official test-time size (ADE20K): keep-ratio rescale into (2048, 512), then each
    side rounded up to a multiple of 32 (mmseg ``ResizeToMultiple``)."""
    return network_size_with(_family_pipelines("vit_comer")["ade20k"], height, width)


def preprocess_vit_comer(image_rgb: np.ndarray, dataset: str = "ade20k",
                         input_size: tuple[int, int] | None = None) -> NetworkInput:
    """ViT-CoMer input as its official ADE20K test pipeline builds it: keep-ratio rescale into
    (2048, 512), ``ResizeToMultiple(32)`` (both OpenCV bilinear on the uint8 image), ImageNet mean/std
    -- step for step EDAFormer's ADE20K pipeline (``AlignedResize`` rounds up to 32 the same way).
    ``input_size`` forces an exact size: multiples of 32, else ``ValueError``.
    """
    if dataset != "ade20k":
        raise ValueError(f"ViT-CoMer is configured for ade20k only, got dataset {dataset!r}")
    return preprocess_with(_family_pipelines("vit_comer")["ade20k"], image_rgb, input_size)


# ---- by configuration ---------------------------------------------------------------------------
def _forced_size(pipeline: Preprocessing, input_size: tuple[int, int]) -> tuple[int, int]:
    """A forced ``input_size`` checked against the network's size rule (``ValueError`` naming it)."""
    size = check_input_size(input_size, 32 if pipeline.kind == "dpt" else 1)
    if pipeline.size_problem is not None and (problem := pipeline.size_problem(*size)):
        raise ValueError(f"input_size {size[0]}x{size[1]}: {problem}")
    return size


def preprocess_with(pipeline: Preprocessing, image_rgb: np.ndarray,
                    input_size: tuple[int, int] | None = None) -> NetworkInput:
    """Run a network's official pipeline (``network_spec(name).preprocessing``) on an RGB image;
    ``input_size`` forces an exact network size (checked against the network's size rule: DPT and
    ViT-CoMer multiples of 32, HRViT its own)."""
    forced = None if input_size is None else _forced_size(pipeline, input_size)
    if pipeline.kind == "dpt":
        return preprocess_dpt(image_rgb, pipeline.scale, forced)
    return preprocess_mmseg(image_rgb, pipeline.scale, pipeline.align, forced, pipeline.fit_side)


def network_size_with(pipeline: Preprocessing, height: int, width: int) -> tuple[int, int]:
    """The network input size ``pipeline`` gives an image of ``height``×``width``."""
    if pipeline.kind == "dpt":
        return dpt_network_size(height, width, pipeline.scale)
    return mmseg_network_size(height, width, pipeline.scale, pipeline.align, pipeline.fit_side)


def preprocess_for(family: str, dataset: str, image_rgb: np.ndarray,
                   input_size: tuple[int, int] | None = None) -> NetworkInput:
    """The pipeline of a network family (``dpt``, ``edaformer``, ``segformer``, ``hrvit``, ...) for a
    checkpoint dataset, as the registered networks declare it (prefer :func:`preprocess_with` with the
    network's own spec)."""
    families = sorted({s.family for s in registered_networks().values() if s.preprocessing is not None})
    if family not in families:
        raise ValueError(f"unknown network family {family!r}; choose from {', '.join(families)}")
    return preprocess_with(_family_pipeline(family, dataset, f" for {family}"), image_rgb, input_size)
