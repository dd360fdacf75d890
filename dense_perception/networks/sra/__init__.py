"""Spatial-reduction-attention networks (``shared/design/sra.md``): SegFormer (MiT + all-MLP head), PVTv2 and
PVT v1 with Semantic FPN. Importing the package registers them."""
from __future__ import annotations

from . import pvt, segformer  # noqa: F401  (registration)
