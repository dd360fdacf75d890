"""Class names and colour palettes of the segmentation datasets EDAFormer was trained on.

The official EDAFormer code (github.com/hyunwoo137/EDAFormer) is built on mmsegmentation 0.x, and its
checkpoints' ``meta`` carry mmseg's ``CLASSES``/``PALETTE``.  The lists below are those values, in
mmseg's order (index ``i`` is train id ``i``); palettes are RGB.  Sources read:

* ADE20K (150): ``ADE20KDataset`` in ``mmseg/datasets/ade.py`` of github.com/open-mmlab/mmsegmentation,
  commit b05a26e2f3511fd976ad89585717881b91e0afad (``METAINFO``; same lists as 0.x ``CLASSES``/``PALETTE``).
* Cityscapes (19): ``CityscapesDataset`` in ``mmseg/datasets/cityscapes.py`` of
  github.com/open-mmlab/mmsegmentation, commit 3f8d34ee4b43d5cac00f12e911bbedf7544f77a4.
* COCO-Stuff 164k (171): ``COCOStuffDataset`` in ``mmseg/datasets/coco_stuff.py`` of
  github.com/open-mmlab/mmsegmentation, commit 186161ee3c1fb592072c8f8fb39816dd55f32083; identical to
  ``CocoStuff`` in ``mmseg/datasets/cocostuff.py`` of github.com/hyunwoo137/EDAFormer, commit
  d4de2236460c3720fe40b5894f81f95456ca0538 (the class EDAFormer's COCO-Stuff config uses).

Quirks kept on purpose, because checkpoints and mmseg tooling carry them: ADE20K's ``'bed '`` has a
trailing space and its palette repeats ``[140, 140, 140]`` (road, skyscraper); COCO-Stuff's palette
repeats a few colours (e.g. person and bicycle are both ``[0, 192, 64]``) and has ``[0, 0, 0]`` (handbag).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

RGB = tuple[int, int, int]

ADE20K_CLASSES: tuple[str, ...] = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed ', 'windowpane', 'grass',
    'cabinet', 'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant', 'curtain', 'chair',
    'car', 'water', 'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug', 'field', 'armchair',
    'seat', 'fence', 'desk', 'rock', 'wardrobe', 'lamp', 'bathtub', 'railing', 'cushion', 'base', 'box',
    'column', 'signboard', 'chest of drawers', 'counter', 'sand', 'sink', 'skyscraper', 'fireplace',
    'refrigerator', 'grandstand', 'path', 'stairs', 'runway', 'case', 'pool table', 'pillow',
    'screen door', 'stairway', 'river', 'bridge', 'bookcase', 'blind', 'coffee table', 'toilet',
    'flower', 'book', 'hill', 'bench', 'countertop', 'stove', 'palm', 'kitchen island', 'computer',
    'swivel chair', 'boat', 'bar', 'arcade machine', 'hovel', 'bus', 'towel', 'light', 'truck', 'tower',
    'chandelier', 'awning', 'streetlight', 'booth', 'television receiver', 'airplane', 'dirt track',
    'apparel', 'pole', 'land', 'bannister', 'escalator', 'ottoman', 'bottle', 'buffet', 'poster',
    'stage', 'van', 'ship', 'fountain', 'conveyer belt', 'canopy', 'washer', 'plaything',
    'swimming pool', 'stool', 'barrel', 'basket', 'waterfall', 'tent', 'bag', 'minibike', 'cradle',
    'oven', 'ball', 'food', 'step', 'tank', 'trade name', 'microwave', 'pot', 'animal', 'bicycle',
    'lake', 'dishwasher', 'screen', 'blanket', 'sculpture', 'hood', 'sconce', 'vase', 'traffic light',
    'tray', 'ashcan', 'fan', 'pier', 'crt screen', 'plate', 'monitor', 'bulletin board', 'shower',
    'radiator', 'glass', 'clock', 'flag',
)

ADE20K_PALETTE: tuple[RGB, ...] = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
    (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
    (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
    (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
    (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
    (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
    (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
    (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
    (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
)

CITYSCAPES_CLASSES: tuple[str, ...] = (
    'road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light', 'traffic sign',
    'vegetation', 'terrain', 'sky', 'person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle',
    'bicycle',
)

CITYSCAPES_PALETTE: tuple[RGB, ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)

COCOSTUFF_CLASSES: tuple[str, ...] = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat',
    'traffic light', 'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog',
    'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella', 'handbag',
    'tie', 'suitcase', 'frisbee', 'skis', 'snowboard', 'sports ball', 'kite', 'baseball bat',
    'baseball glove', 'skateboard', 'surfboard', 'tennis racket', 'bottle', 'wine glass', 'cup', 'fork',
    'knife', 'spoon', 'bowl', 'banana', 'apple', 'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog',
    'pizza', 'donut', 'cake', 'chair', 'couch', 'potted plant', 'bed', 'dining table', 'toilet', 'tv',
    'laptop', 'mouse', 'remote', 'keyboard', 'cell phone', 'microwave', 'oven', 'toaster', 'sink',
    'refrigerator', 'book', 'clock', 'vase', 'scissors', 'teddy bear', 'hair drier', 'toothbrush',
    'banner', 'blanket', 'branch', 'bridge', 'building-other', 'bush', 'cabinet', 'cage', 'cardboard',
    'carpet', 'ceiling-other', 'ceiling-tile', 'cloth', 'clothes', 'clouds', 'counter', 'cupboard',
    'curtain', 'desk-stuff', 'dirt', 'door-stuff', 'fence', 'floor-marble', 'floor-other',
    'floor-stone', 'floor-tile', 'floor-wood', 'flower', 'fog', 'food-other', 'fruit',
    'furniture-other', 'grass', 'gravel', 'ground-other', 'hill', 'house', 'leaves', 'light', 'mat',
    'metal', 'mirror-stuff', 'moss', 'mountain', 'mud', 'napkin', 'net', 'paper', 'pavement', 'pillow',
    'plant-other', 'plastic', 'platform', 'playingfield', 'railing', 'railroad', 'river', 'road',
    'rock', 'roof', 'rug', 'salad', 'sand', 'sea', 'shelf', 'sky-other', 'skyscraper', 'snow',
    'solid-other', 'stairs', 'stone', 'straw', 'structural-other', 'table', 'tent', 'textile-other',
    'towel', 'tree', 'vegetable', 'wall-brick', 'wall-concrete', 'wall-other', 'wall-panel',
    'wall-stone', 'wall-tile', 'wall-wood', 'water-other', 'waterdrops', 'window-blind',
    'window-other', 'wood',
)

COCOSTUFF_PALETTE: tuple[RGB, ...] = (
    (0, 192, 64), (0, 192, 64), (0, 64, 96), (128, 192, 192), (0, 64, 64), (0, 192, 224),
    (0, 192, 192), (128, 192, 64), (0, 192, 96), (128, 192, 64), (128, 32, 192), (0, 0, 224),
    (0, 0, 64), (0, 160, 192), (128, 0, 96), (128, 0, 192), (0, 32, 192), (128, 128, 224),
    (0, 0, 192), (128, 160, 192), (128, 128, 0), (128, 0, 32), (128, 32, 0), (128, 0, 128),
    (64, 128, 32), (0, 160, 0), (0, 0, 0), (192, 128, 160), (0, 32, 0), (0, 128, 128),
    (64, 128, 160), (128, 160, 0), (0, 128, 0), (192, 128, 32), (128, 96, 128), (0, 0, 128),
    (64, 0, 32), (0, 224, 128), (128, 0, 0), (192, 0, 160), (0, 96, 128), (128, 128, 128),
    (64, 0, 160), (128, 224, 128), (128, 128, 64), (192, 0, 32), (128, 96, 0), (128, 0, 192),
    (0, 128, 32), (64, 224, 0), (0, 0, 64), (128, 128, 160), (64, 96, 0), (0, 128, 192),
    (0, 128, 160), (192, 224, 0), (0, 128, 64), (128, 128, 32), (192, 32, 128), (0, 64, 192),
    (0, 0, 32), (64, 160, 128), (128, 64, 64), (128, 0, 160), (64, 32, 128), (128, 192, 192),
    (0, 0, 160), (192, 160, 128), (128, 192, 0), (128, 0, 96), (192, 32, 0), (128, 64, 128),
    (64, 128, 96), (64, 160, 0), (0, 64, 0), (192, 128, 224), (64, 32, 0), (0, 192, 128),
    (64, 128, 224), (192, 160, 0), (0, 192, 0), (192, 128, 96), (192, 96, 128), (0, 64, 128),
    (64, 0, 96), (64, 224, 128), (128, 64, 0), (192, 0, 224), (64, 96, 128), (128, 192, 128),
    (64, 0, 224), (192, 224, 128), (128, 192, 64), (192, 0, 96), (192, 96, 0), (128, 64, 192),
    (0, 128, 96), (0, 224, 0), (64, 64, 64), (128, 128, 224), (0, 96, 0), (64, 192, 192),
    (0, 128, 224), (128, 224, 0), (64, 192, 64), (128, 128, 96), (128, 32, 128), (64, 0, 192),
    (0, 64, 96), (0, 160, 128), (192, 0, 64), (128, 64, 224), (0, 32, 128), (192, 128, 192),
    (0, 64, 224), (128, 160, 128), (192, 128, 0), (128, 64, 32), (128, 32, 64), (192, 0, 128),
    (64, 192, 32), (0, 160, 64), (64, 0, 0), (192, 192, 160), (0, 32, 64), (64, 128, 128),
    (64, 192, 160), (128, 160, 64), (64, 128, 0), (192, 192, 32), (128, 96, 192), (64, 0, 128),
    (64, 64, 32), (0, 224, 192), (192, 0, 0), (192, 64, 160), (0, 96, 192), (192, 128, 128),
    (64, 64, 160), (128, 224, 192), (192, 128, 64), (192, 64, 32), (128, 96, 64), (192, 0, 192),
    (0, 192, 32), (64, 224, 64), (64, 0, 64), (128, 192, 160), (64, 96, 64), (64, 128, 192),
    (0, 192, 160), (192, 224, 64), (64, 128, 64), (128, 192, 32), (192, 32, 192), (64, 64, 192),
    (0, 64, 32), (64, 160, 192), (192, 64, 64), (128, 64, 160), (64, 32, 192), (192, 192, 192),
    (0, 64, 160), (192, 160, 192), (192, 192, 0), (128, 64, 96), (192, 32, 64), (192, 64, 128),
    (64, 192, 96), (64, 160, 64), (64, 64, 0),
)

# dataset name -> (class names, RGB palette); read-only.
_DATASETS: Mapping[str, tuple[tuple[str, ...], tuple[RGB, ...]]] = MappingProxyType({
    "ade20k": (ADE20K_CLASSES, ADE20K_PALETTE),
    "cityscapes": (CITYSCAPES_CLASSES, CITYSCAPES_PALETTE),
    "cocostuff": (COCOSTUFF_CLASSES, COCOSTUFF_PALETTE),
})

DATASETS: tuple[str, ...] = tuple(_DATASETS)
"""Names :func:`label_set` accepts."""

_GOLDEN_RATIO_CONJUGATE = 0.6180339887498949


@dataclass(frozen=True, eq=False)
class LabelSet:
    """The class names of a segmentation model's outputs and the RGB colour of each class.

    ``palette`` is a read-only ``[K, 3]`` uint8 RGB array with ``K == len(names)``; label ``i`` is drawn
    in ``palette[i]``.
    """

    dataset: str
    names: tuple[str, ...]
    palette: np.ndarray

    def __post_init__(self) -> None:
        palette = _as_palette(self.palette)
        if palette is None:
            raise ValueError(f"palette must be [K, 3] integers in 0..255, got {_shape_text(self.palette)}")
        names = tuple(str(n) for n in self.names)
        if len(names) != len(palette):
            raise ValueError(f"{len(names)} class names but {len(palette)} palette colours")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "palette", palette)

    @property
    def num_classes(self) -> int:
        """Number of classes ``K``."""
        return len(self.names)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LabelSet):
            return NotImplemented
        return (self.dataset, self.names) == (other.dataset, other.names) and np.array_equal(
            self.palette, other.palette)

    def __hash__(self) -> int:
        return hash((self.dataset, self.names, self.palette.tobytes()))


def _shape_text(value: Any) -> str:
    """``"shape (K, C)"`` of an array-like, for messages; ragged nested lists have no shape."""
    try:
        return f"shape {np.shape(value)}"
    except ValueError:
        return "a ragged nested sequence"


def _as_palette(value: Any) -> np.ndarray | None:
    """``value`` as a fresh read-only ``[K, 3]`` uint8 array, or None when it is not a valid palette."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):  # ragged nested lists
        return None
    if array.ndim != 2 or array.shape[1] != 3 or array.shape[0] == 0:
        return None
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        return None
    if not np.all(np.isfinite(array)) or array.min() < 0 or array.max() > 255:
        return None
    if np.any(array != np.round(array)):
        return None
    palette = array.astype(np.uint8)  # a copy, so the caller's array is never aliased or frozen
    palette.setflags(write=False)
    return palette


def label_set(dataset: str) -> LabelSet:
    """The mmseg class names and palette of ``dataset`` (``ade20k``, ``cityscapes`` or ``cocostuff``)."""
    key = dataset.strip().lower()
    if key not in _DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    names, palette = _DATASETS[key]
    return LabelSet(dataset=key, names=names, palette=np.array(palette, dtype=np.uint8))


def generic_palette(num_classes: int) -> np.ndarray:
    """A deterministic ``[num_classes, 3]`` uint8 RGB palette whose neighbouring entries differ clearly.

    Hues step by the golden-ratio conjugate around the colour wheel (consecutive classes land far apart
    in hue), and saturation/value cycle through three levels so that classes whose hues nearly repeat
    still differ in brightness.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    index = np.arange(num_classes)
    hue = np.round((index * _GOLDEN_RATIO_CONJUGATE % 1.0) * 180.0) % 180  # OpenCV 8-bit hue: 0..179
    saturation = np.array([230, 160, 255])[index % 3]
    value = np.array([255, 200, 150])[(index // 3) % 3]
    hsv = np.stack([hue, saturation, value], axis=-1).astype(np.uint8)[np.newaxis]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]


def label_set_for_classes(num_classes: int) -> LabelSet:
    """A generic set for a model with a custom class count: names ``class_0``.., :func:`generic_palette`."""
    return LabelSet(
        dataset="custom",
        names=tuple(f"class_{i}" for i in range(num_classes)),
        palette=generic_palette(num_classes),
    )


def label_set_from_checkpoint_meta(meta: Mapping[str, Any] | None, fallback: LabelSet) -> LabelSet:
    """Names and palette saved in an mmseg checkpoint's ``meta``, where usable, else ``fallback``'s.

    mmseg 0.x (what EDAFormer uses) stores ``meta["CLASSES"]`` and ``meta["PALETTE"]``; mmseg 1.x stores
    ``meta["dataset_meta"]["classes"/"palette"]``, which is read as well.  Each of the two is taken only
    when it is present and has ``fallback.num_classes`` entries (the palette may be a list or an array of
    ``[K, 3]`` values in 0..255); otherwise ``fallback``'s names or palette are kept.
    """
    if not meta:
        return fallback
    dataset_meta = meta.get("dataset_meta") or {}
    names = meta.get("CLASSES", dataset_meta.get("classes"))
    palette = _as_palette(meta.get("PALETTE", dataset_meta.get("palette")))
    use_names = _is_names(names) and len(names) == fallback.num_classes
    use_palette = palette is not None and len(palette) == fallback.num_classes
    if not (use_names or use_palette):
        return fallback
    return LabelSet(
        dataset=fallback.dataset,
        names=tuple(names) if use_names else fallback.names,
        palette=palette if use_palette else fallback.palette,
    )


def _is_names(value: Any) -> bool:
    """Whether ``value`` is a sequence of strings (not a single string)."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        return False
    return all(isinstance(name, str) for name in value)
