"""DPT monocular depth (Ranftl et al., ICCV 2021): ViT-L/16 or hybrid R50+ViT-B/16 + RefineNet decoder.

Written from ``shared/design/dpt.md``. The module tree mirrors the official ``DPTDepthModel`` so
official checkpoints (plain state_dicts, keys ``pretrained.*`` and ``scratch.*``) load strictly;
Hugging Face ``DPTForDepthEstimation`` state_dicts are converted on load (:meth:`DPT.adapt_state_dict`).

``net(x)``: ``x`` ``[B, 3, H, W]`` float, normalised to [−1, 1], H and W multiples of 32 →
``[B, H, W]`` head output after the final ReLU (the official forward with ``invert=False``).
``net.output_units`` says what that output means (:mod:`.depth_units`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .common import check_image_batch
from .depth_units import DEPTH_OUTPUTS, DepthOutput
from .registry import NetworkSpec, Preprocessing, WeightsEntry, register_networks
from .vit import VisionTransformer

#: Channels of every decoder path.
FEATURES = 256


@dataclass(frozen=True)
class DPTConfig:
    """Backbone of one DPT variant.

    ``reassemble`` gives, per tap k = 1..4, the output channels ``D_k`` of ``act_postprocess{k}``
    and its resample factor (4, 2, 1 or 0.5); ``None`` marks a ResNet tap without reassembly.
    """

    dim: int
    depth: int
    heads: int
    hybrid: bool
    taps: tuple[int, ...]  # ViT blocks whose outputs are reassembled
    layer_channels: tuple[int, int, int, int]  # D_1..D_4, inputs of scratch.layer{k}_rn
    resample: tuple[float | None, float | None, float | None, float | None]


CONFIGS: Mapping[str, DPTConfig] = MappingProxyType({
    "large": DPTConfig(dim=1024, depth=24, heads=16, hybrid=False, taps=(5, 11, 17, 23),
                       layer_channels=(256, 512, 1024, 1024), resample=(4, 2, 1, 0.5)),
    "hybrid": DPTConfig(dim=768, depth=12, heads=12, hybrid=True, taps=(8, 11),
                        layer_channels=(256, 512, 768, 768), resample=(None, None, 1, 0.5)),
})


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Bilinear ×2 with ``align_corners=True`` (every decoder and head upsampling)."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class Upsample2x(nn.Module):
    """Parameter-free :func:`upsample2x` as a module (``scratch.output_conv.1``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample2x(x)


class ProjectReadout(nn.Module):
    """Readout "project": ``project`` = Linear(2C → C) + exact GELU on ``[patch ; cls]``; drops cls."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, 1:]
        readout = tokens[:, :1].expand_as(patches)
        return self.project(torch.cat([patches, readout], dim=-1))


def _resample(channels: int, factor: float) -> nn.Module | None:
    if factor == 4:
        return nn.ConvTranspose2d(channels, channels, kernel_size=4, stride=4)
    if factor == 2:
        return nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2)
    if factor == 0.5:
        return nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)
    if factor == 1:
        return None
    raise ValueError(f"unsupported resample factor {factor}")


class Reassemble(nn.Sequential):
    """``act_postprocess{k}`` with the official indices: 0 readout, 1–2 tokens → map (no parameters),
    3 1×1 conv C → D_k, 4 optional resample (transposed conv ×4/×2 or 3×3 stride-2 conv)."""

    def __init__(self, dim: int, out_channels: int, factor: float) -> None:
        resample = _resample(out_channels, factor)
        super().__init__(
            ProjectReadout(dim), nn.Identity(), nn.Identity(),
            nn.Conv2d(dim, out_channels, kernel_size=1), *([resample] if resample is not None else []),
        )

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:  # type: ignore[override]
        x = self[0](tokens).transpose(1, 2).unflatten(2, grid)  # [B, C, h, w], row-major
        for module in list(self)[3:]:
            x = module(x)
        return x


class Backbone(nn.Module):
    """``pretrained``: the ViT (``model``) and the reassemble branches ``act_postprocess{k}``."""

    def __init__(self, config: DPTConfig) -> None:
        super().__init__()
        self.config = config
        self.model = VisionTransformer(config.dim, config.depth, config.heads, hybrid=config.hybrid)
        for k, (channels, factor) in enumerate(zip(config.layer_channels, config.resample), start=1):
            if factor is not None:
                self.add_module(f"act_postprocess{k}", Reassemble(config.dim, channels, factor))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[layer_1, layer_2, layer_3, layer_4]`` at strides 4, 8, 16, 32."""
        taps, cnn_features, grid = self.model(x, self.config.taps)
        layers = list(cnn_features)
        for tokens in taps:
            layers.append(getattr(self, f"act_postprocess{len(layers) + 1}")(tokens, grid))
        return layers


class ResidualConvUnit(nn.Module):
    """``x + conv2(ReLU(conv1(ReLU(x))))``; 3×3 convs with bias; never in-place on ``x``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FeatureFusionBlock(nn.Module):
    """``refinenet{k}``: ``prev (+ resConfUnit1(skip))`` → ``resConfUnit2`` → ×2 → ``out_conv`` 1×1.

    ``refinenet4`` is called without a skip; its ``resConfUnit1`` is unused but has keys.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.resConfUnit1 = ResidualConvUnit(channels)
        self.resConfUnit2 = ResidualConvUnit(channels)
        self.out_conv = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        return self.out_conv(upsample2x(self.resConfUnit2(x)))


class Scratch(nn.Module):
    """``scratch``: ``layer{k}_rn`` 3×3 convs to 256, ``refinenet{1..4}`` and the head ``output_conv``."""

    def __init__(self, layer_channels: tuple[int, int, int, int], features: int = FEATURES) -> None:
        super().__init__()
        for k, channels in enumerate(layer_channels, start=1):
            self.add_module(f"layer{k}_rn", nn.Conv2d(channels, features, kernel_size=3, padding=1, bias=False))
        for k in range(1, 5):
            self.add_module(f"refinenet{k}", FeatureFusionBlock(features))
        # Indices are key names: .0/.2/.4 hold weights; .5 is the non-negative ReLU (not in-place, so a
        # hook on .4 sees the pre-ReLU output); .6 stands for the official trailing identity.
        self.output_conv = nn.Sequential(
            nn.Conv2d(features, features // 2, kernel_size=3, padding=1),
            Upsample2x(),
            nn.Conv2d(features // 2, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 1, kernel_size=1),
            nn.ReLU(),
            nn.Identity(),
        )

    def forward(self, layers: list[torch.Tensor]) -> torch.Tensor:
        """Decode ``[layer_1..layer_4]`` to the ``[B, 1, H, W]`` head output."""
        rn = [getattr(self, f"layer{k}_rn")(layer) for k, layer in enumerate(layers, start=1)]
        path = self.refinenet4(rn[3])
        path = self.refinenet3(path, rn[2])
        path = self.refinenet2(path, rn[1])
        path = self.refinenet1(path, rn[0])
        return self.output_conv(path)


class DPT(nn.Module):
    """DPT depth network with the official module names (``pretrained``, ``scratch``).

    Args:
        backbone: ``"hybrid"`` (R50 + ViT-B/16) or ``"large"`` (ViT-L/16).
        dataset: training set of the checkpoint (``midas``, ``nyu``, ``kitti``); sets ``output_units``.
        name: registry name, used in error messages.
    """

    def __init__(self, backbone: str = "hybrid", dataset: str = "midas", name: str | None = None) -> None:
        super().__init__()
        if backbone not in CONFIGS:
            raise ValueError(f"unknown DPT backbone {backbone!r}; choose from {sorted(CONFIGS)}")
        if dataset not in DEPTH_OUTPUTS:
            raise ValueError(f"unknown DPT dataset {dataset!r}; choose from {sorted(DEPTH_OUTPUTS)}")
        self.name = name or f"dpt_{backbone}_{dataset}"
        self.config = CONFIGS[backbone]
        self.output_units: DepthOutput = DEPTH_OUTPUTS[dataset]
        self.pretrained = Backbone(self.config)
        self.scratch = Scratch(self.config.layer_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, multiple_of=32)
        return self.scratch(self.pretrained(x)).squeeze(1)

    def adapt_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """Convert a Hugging Face ``DPTForDepthEstimation`` state_dict to official keys; else unchanged."""
        from .dpt_hf import convert_hf_state_dict, is_hf_state_dict

        return convert_hf_state_dict(state_dict) if is_hf_state_dict(state_dict) else state_dict


_DPT_RELEASE = "https://github.com/isl-org/DPT/releases/download/1_0/"
_MIDAS_V3 = "https://github.com/isl-org/MiDaS/releases/download/v3/"
#: (backbone, dataset): released file name (its hex part is the published sha256 prefix), fp32 state_dict
#: bytes, and whether MiDaS v3 mirrors it.
_RELEASES = {
    ("hybrid", "midas"): ("dpt_hybrid-midas-501f0c75.pt", 492_587_940, True),
    ("large", "midas"): ("dpt_large-midas-2f21e586.pt", 1_376_221_860, True),
    ("hybrid", "nyu"): ("dpt_hybrid_nyu-2ce69ec7.pt", 492_587_940, False),
    ("hybrid", "kitti"): ("dpt_hybrid_kitti-cb926ef4.pt", 492_587_940, False),
}
#: The official keep-aspect resize targets (height, width) per checkpoint dataset.
_TARGETS = {"midas": (384, 384), "nyu": (480, 640), "kitti": (352, 1216)}


def _release(backbone: str, dataset: str) -> WeightsEntry:
    """The DPT release ``1_0`` catalogue entry."""
    file_name, size, mirror = _RELEASES[(backbone, dataset)]
    prefix = re.fullmatch(r".+-([0-9a-f]{8})\.pt", file_name)
    assert prefix, file_name
    urls = (_DPT_RELEASE + file_name,) + ((_MIDAS_V3 + file_name,) if mirror else ())
    source = "isl-org/DPT release 1_0" + (" (mirror: isl-org/MiDaS release v3)" if mirror else "")
    return WeightsEntry(f"dpt_{backbone}_{dataset}", file_name, urls, prefix[1], size, source)


def _specs() -> tuple[NetworkSpec, ...]:
    titles = {"hybrid": "DPT-Hybrid (R50 + ViT-B/16)", "large": "DPT-Large (ViT-L/16)"}
    return tuple(
        NetworkSpec(
            name=f"dpt_{backbone}_{dataset}", task="depth", family="dpt",
            kwargs={"backbone": backbone, "dataset": dataset}, dataset=dataset,
            description=f"{titles[backbone]} monocular depth, {DEPTH_OUTPUTS[dataset].description}",
            output=DEPTH_OUTPUTS[dataset], input_size=_TARGETS[dataset],
            preprocessing=Preprocessing("dpt", _TARGETS[dataset]), weights=(_release(backbone, dataset),),
        )
        for backbone, dataset in _RELEASES
    )


@register_networks(*_specs())
def build_dpt(backbone: str, dataset: str, name: str | None = None) -> DPT:
    """DPT with a ``backbone`` ("hybrid" or "large") and the output units of ``dataset``."""
    return DPT(backbone=backbone, dataset=dataset, name=name)
