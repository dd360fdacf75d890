"""The network registry: every network this package can build, by name, with its default configuration.

Networks register themselves where they are defined, the way timm's model files do: a family module
decorates its builder with :func:`register_networks`, giving one :class:`NetworkSpec` per registered
name (task, dataset and classes, the official input size and pre-processing, the checkpoint catalogue
entries, the ISR scheme). ``networks/__init__.py`` imports the family modules, so importing anything from
``dense_perception.networks`` fills the registry; this module imports none of them back. Adding a family
means adding its module (or folder) and one import line.

The registry is written once per name while the family modules are imported (a second registration of a
name is an error) and read through read-only views.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, TypeVar

from torch import nn

from .isr import ISRScheme

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class Preprocessing:
    """The official test-time input pipeline of a network, as data (``pipeline.preprocess`` runs it).

    ``kind``:
      * ``"mmseg"`` -- keep-ratio rescale of the uint8 image into ``scale`` = (long side, short side) with
        OpenCV bilinear, each side then rounded up to a multiple of ``align`` and resized again (mmseg's
        ``AlignedResize`` when ``align`` is 32; plain ``Resize`` when 1), ImageNet mean/std on the 0-255
        scale; ``fit_side`` then rounds each side up to one the network runs on (HRViT), resizing once
        more where that changes it.
      * ``"dpt"`` -- DPT's keep-aspect resize towards ``scale`` = (height, width) to multiples of 32
        (OpenCV cubic on [0, 1] floats), then ``(x - 0.5) / 0.5``.
    """

    kind: str
    scale: tuple[int, int]
    align: int = 1
    #: a network with an input-size rule (HRViT): each side rounded up to the nearest one that runs
    fit_side: Callable[[int], int] | None = None
    #: why a forced network input size cannot run (HRViT's rule, ViT-CoMer's multiples of 32), or None
    size_problem: Callable[[int, int], str | None] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("mmseg", "dpt"):
            raise ValueError(f"unknown pre-processing kind {self.kind!r}; choose from mmseg, dpt")


@dataclass(frozen=True)
class Inference:
    """How a segmenter's official evaluation runs a frame, and the windows of sliding-window inference.

    ``mode`` is the official test mode: ``"whole"`` (the whole pre-processed image in one forward) or
    ``"slide"`` (mmseg ``slide_inference``: ``crop`` (h, w) windows every ``stride`` (h, w), the last
    window of a row or column moved back to end at the border, each window's logits resized to the
    window, summed on a canvas and divided by the per-pixel count). ``crop``/``stride`` are the official
    windows where the official mode slides, else the training crop at about two-thirds stride, so that
    every network can also be run sliding.
    """

    mode: str
    crop: tuple[int, int]
    stride: tuple[int, int]

    def __post_init__(self) -> None:
        if self.mode not in INFERENCE_MODES:
            raise ValueError(f"unknown inference mode {self.mode!r}; choose from {', '.join(INFERENCE_MODES)}")
        if min(self.crop + self.stride) < 1 or any(s > c for s, c in zip(self.stride, self.crop)):
            raise ValueError(f"sliding windows need 1 <= stride <= crop, got crop {self.crop}, stride {self.stride}")

    def with_mode(self, mode: str | None) -> "Inference":
        """The same windows with ``mode`` (``whole``/``slide``) as the test mode; None keeps the official one."""
        return self if mode is None or mode == self.mode else dataclasses.replace(self, mode=mode)

    @classmethod
    def whole(cls, crop: int) -> "Inference":
        """Official whole-image inference; sliding on request with ``crop``-square windows at mmseg's usual
        two-thirds stride (512 -> 341)."""
        return cls("whole", (crop, crop), (crop * 2 // 3, crop * 2 // 3))

    @classmethod
    def slide(cls, crop: int, stride: int) -> "Inference":
        """Official sliding-window inference with square ``crop`` windows every ``stride`` pixels."""
        return cls("slide", (crop, crop), (stride, stride))


#: The test modes a segmenter can run: the whole image at once, or sliding windows.
INFERENCE_MODES = ("whole", "slide")


@dataclass(frozen=True)
class WeightsEntry:
    """One official checkpoint file.

    Attributes:
        network: registry name (``build_network`` accepts it).
        file_name: name of the file in the models folder (the published name where there is one).
        urls: direct download URLs, tried in order; empty when the file must be fetched by hand.
        sha256: published start of the file's SHA-256 (or the full digest); None when nothing is published.
        approx_size: approximate size in bytes (parameter count × 4; not measured on a downloaded file).
        source: where the file is published, for people.
        manual_url: the page to fetch the file from by hand when ``urls`` is empty.
    """

    network: str
    file_name: str
    urls: tuple[str, ...] = ()
    sha256: str | None = None
    approx_size: int | None = None
    source: str = ""
    manual_url: str | None = None

    @property
    def downloadable(self) -> bool:
        """True when :func:`~dense_perception.weights.download` can fetch the file without a ``base_url``."""
        return bool(self.urls)

    def manual_instructions(self, models: Path) -> str:
        """One line telling a person how to obtain the file by hand."""
        return (f"{self.network} has no direct download: fetch it by hand from {self.manual_url} and save it as "
                f"{models / self.file_name} (or run `dense-perception weights verify FILE --install` to identify a "
                f"downloaded file and copy it there under that name)")


def manual_weights(network: str, size: int, source: str, manual_url: str) -> WeightsEntry:
    """A catalogue entry for a checkpoint published without a direct link: ``<network>.pth``, by hand."""
    return WeightsEntry(network, f"{network}.pth", (), None, size, source, manual_url)


@dataclass(frozen=True)
class NetworkSpec:
    """How to build one named network, what it produces, and its default configuration."""

    name: str
    task: str  # "segmentation" or "depth"
    family: str  # "edaformer", "dpt", "segformer", "pvt_v2", "pvt", "hrvit", "vit_comer"
    builder: Callable[..., nn.Module] | None = None  # set by register_networks; called with kwargs and name=
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    dataset: str = ""  # the checkpoint's dataset; also the label set's name (pipeline.labels.label_set)
    output: Any = None  # what a depth network's raw output means (depth_units.DepthOutput)
    num_classes: int | None = None  # segmentation: classes of the official checkpoint
    input_size: tuple[int, int] | None = None  # the official network input (H, W) of its evaluation
    preprocessing: Preprocessing | None = None  # the official test-time pipeline
    weights: tuple[WeightsEntry, ...] = ()  # catalogue entries of its checkpoints
    isr: ISRScheme | None = None  # None: no inference spatial reduction
    inference: Inference | None = None  # segmentation: the official test mode and sliding windows


_REGISTRY: dict[str, NetworkSpec] = {}


def register_networks(*specs: NetworkSpec) -> Callable[[Builder], Builder]:
    """Decorator for a family's builder: registers each of ``specs`` as built by it.

    ``build_network(spec.name)`` then calls ``builder(**spec.kwargs, name=spec.name)``. A name registered
    twice raises ``ValueError``.
    """
    def register(builder: Builder) -> Builder:
        for spec in specs:
            if spec.name in _REGISTRY:
                raise ValueError(f"network {spec.name!r} is registered twice")
            _REGISTRY[spec.name] = dataclasses.replace(spec, builder=builder)
        return builder
    return register


def registered_networks() -> Mapping[str, NetworkSpec]:
    """Every registered network's spec, by name (read-only)."""
    return MappingProxyType(_REGISTRY)


def available_networks(task: str | None = None) -> list[str]:
    """Names ``build_network`` accepts, optionally only those of one task (``segmentation``/``depth``)."""
    return sorted(n for n, s in _REGISTRY.items() if task is None or s.task == task)


def network_spec(name: str) -> NetworkSpec:
    """The registry entry for ``name``; ``ValueError`` listing the choices when unknown."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown network {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def build_network(name: str, **overrides: Any) -> nn.Module:
    """Build ``name`` in eval mode with random weights; ``overrides`` replace its constructor arguments."""
    spec = network_spec(name)
    assert spec.builder is not None  # register_networks always sets it
    net = spec.builder(**{**spec.kwargs, "name": name, **overrides})
    return net.eval()
