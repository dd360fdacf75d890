"""The networks used when none is named: by the Python API, the ROS nodes and the command line.

Depth defaults to a **metric** network so that point clouds come out without any setting:
``dpt_hybrid_nyu`` (NYU Depth v2: indoor scenes, about 0.5–10 m). Outdoors and on the road use
``dpt_hybrid_kitti`` (KITTI: driving scenes, about 1–80 m). The MiDaS networks (``dpt_*_midas``)
generalise to any scene but give relative inverse depth, which has no unit and makes no cloud.
Pure constants, so that importing them costs nothing (the command line reads them before torch).
"""
from __future__ import annotations

#: Depth network used when none is named: metres, indoor scenes.
DEFAULT_DEPTH_NETWORK = "dpt_hybrid_nyu"
#: Segmentation network used when none is named.
DEFAULT_SEG_NETWORK = "edaformer_t_ade20k"
