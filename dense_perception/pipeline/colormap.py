"""Turning depth maps and label maps into RGB images for display (pure NumPy/OpenCV).

Every image this module returns is ``HxWx3`` uint8 in **RGB** order.  OpenCV's ``applyColorMap`` returns
BGR; :func:`colorize_depth` converts, so its output can go straight into an ``rgb8`` message or be
blended with an RGB camera image by :func:`overlay`.

Depth colour convention: the *near* end of the scene is the *low* end of the colour map (dark blue for
``turbo``, black for ``inferno``/``magma``, purple for ``viridis``), whether the input is metric depth
(small = near) or relative inverse depth such as MiDaS's output (large = near, pass ``inverse=True``).
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

import cv2
import numpy as np

COLORMAPS: Mapping[str, int] = MappingProxyType({
    "turbo": cv2.COLORMAP_TURBO,
    "inferno": cv2.COLORMAP_INFERNO,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "magma": cv2.COLORMAP_MAGMA,
})
"""Colour-map names :func:`colorize_depth` accepts, and their OpenCV codes."""

ROBUST_PERCENTILES: tuple[float, float] = (2.0, 98.0)
"""Percentiles of the valid values that set the automatic colour range."""


def valid_depth_mask(depth: np.ndarray, inverse: bool = False) -> np.ndarray:
    """Pixels that carry a depth: finite, and for metric depth (``inverse=False``) also ``> 0``.

    Relative inverse depth may legitimately be zero or slightly negative (far background under MiDaS's
    unknown scale and shift), so with ``inverse=True`` only NaN and infinities are invalid.
    """
    finite = np.isfinite(depth)
    return finite if inverse else finite & (depth > 0)


def robust_range(depth: np.ndarray, inverse: bool = False) -> tuple[float, float] | None:
    """The 2nd and 98th percentiles of the valid values of ``depth``, or None when none is valid."""
    values = np.asarray(depth)[valid_depth_mask(depth, inverse)]
    if values.size == 0:
        return None
    low, high = np.percentile(values, ROBUST_PERCENTILES)
    return float(low), float(high)


def colorize_depth(
    depth: np.ndarray,
    vmin: float | None = None,
    vmax: float | None = None,
    colormap: str = "turbo",
    inverse: bool = False,
) -> np.ndarray:
    """Colour a depth map ``HxW`` (or ``HxWx1``) as an ``HxWx3`` uint8 RGB image.

    Values are mapped linearly from ``[vmin, vmax]`` (in the input's own units, clipped outside) onto the
    colour map; a bound left as None is the 2nd/98th percentile of the valid values, so a few outliers do
    not wash the picture out.  Invalid pixels (see :func:`valid_depth_mask`) are black.  With
    ``inverse=True`` the input is inverse depth (larger = nearer) and the map is flipped, so near is the
    same colour as for metric depth.  For video, pass a :class:`StableRange`'s bounds to avoid flicker.
    """
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; choose from {', '.join(COLORMAPS)}")
    depth = np.asarray(depth)
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2:
        raise ValueError(f"depth must be HxW, got shape {depth.shape}")
    depth = depth.astype(np.float64, copy=False)

    valid = valid_depth_mask(depth, inverse)
    rgb = np.zeros(depth.shape + (3,), dtype=np.uint8)
    if not valid.any():
        return rgb
    if vmin is None or vmax is None:
        auto_min, auto_max = robust_range(depth, inverse)  # not None: some pixel is valid
        vmin = auto_min if vmin is None else vmin
        vmax = auto_max if vmax is None else vmax

    span = vmax - vmin
    scaled = (depth - vmin) / span if span > 0 else np.zeros_like(depth)
    scaled = np.clip(np.nan_to_num(scaled, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    if inverse:
        scaled = 1.0 - scaled
    index = np.round(scaled * 255.0).astype(np.uint8)
    bgr = cv2.applyColorMap(index, COLORMAPS[colormap])
    rgb[valid] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)[valid]
    return rgb


class StableRange:
    """A colour range for depth video that follows the scene without flickering.

    Each :meth:`update` takes the frame's robust range (:func:`robust_range`) and blends it into an
    exponential moving average, ``range <- (1 - alpha) * range + alpha * frame_range``; the first frame
    with valid pixels sets it outright.  ``vmin``/``vmax`` given to the constructor are fixed and
    override the average for that bound (e.g. ``vmin=0.0`` for metric depth).
    """

    def __init__(
        self,
        alpha: float = 0.1,
        vmin: float | None = None,
        vmax: float | None = None,
        inverse: bool = False,
    ) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.fixed_vmin = vmin
        self.fixed_vmax = vmax
        self.inverse = inverse
        self._average: tuple[float, float] | None = None

    def reset(self) -> None:
        """Forget the average (e.g. after the camera or model changes)."""
        self._average = None

    def update(self, depth: np.ndarray) -> tuple[float, float]:
        """Fold one frame into the average; returns the ``(vmin, vmax)`` to colour that frame with.

        A frame without valid pixels leaves the average unchanged; before any valid frame the range is
        the fixed bounds, else ``(0.0, 1.0)``.
        """
        frame = robust_range(depth, self.inverse)
        if frame is not None:
            if self._average is None:
                self._average = frame
            else:
                (old_low, old_high), (new_low, new_high), a = self._average, frame, self.alpha
                self._average = ((1.0 - a) * old_low + a * new_low, (1.0 - a) * old_high + a * new_high)
        low, high = self._average if self._average is not None else (0.0, 1.0)
        return (
            low if self.fixed_vmin is None else float(self.fixed_vmin),
            high if self.fixed_vmax is None else float(self.fixed_vmax),
        )


def colorize_labels(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Colour a label map ``HxW`` (integer train ids) with ``palette[K, 3]``; returns ``HxWx3`` uint8.

    Ids outside ``0..K-1`` (such as 255, mmseg's "ignore") are black.  The palette's channel order is
    kept (pass an RGB palette, e.g. :class:`~dense_perception.pipeline.labels.LabelSet`'s, for RGB).
    """
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be an integer array (uint8/uint16), got {labels.dtype}")
    if labels.ndim != 2:
        raise ValueError(f"labels must be HxW, got shape {labels.shape}")
    palette = np.asarray(palette)
    if palette.ndim != 2 or palette.shape[1] != 3:
        raise ValueError(f"palette must be [K, 3], got shape {palette.shape}")
    num_classes = palette.shape[0]
    table = np.zeros((num_classes + 1, 3), dtype=np.uint8)  # last row: black, for out-of-range ids
    table[:num_classes] = palette
    ids = labels.astype(np.int64, copy=False)
    return table[np.where((ids >= 0) & (ids < num_classes), ids, num_classes)]


def overlay(image_rgb: np.ndarray, colored: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend ``colored`` over ``image_rgb``: ``(1 - alpha) * image + alpha * colored``, as uint8.

    Both must be ``HxWx3`` uint8 of the same shape (resize the colouring to the image first).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    for name, array in (("image_rgb", image_rgb), ("colored", colored)):
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise ValueError(f"{name} must be HxWx3 uint8, got shape {array.shape} dtype {array.dtype}")
    if image_rgb.shape != colored.shape:
        raise ValueError(f"shape mismatch: image {image_rgb.shape} vs colored {colored.shape}")
    return cv2.addWeighted(image_rgb, 1.0 - alpha, colored, alpha, 0.0)
