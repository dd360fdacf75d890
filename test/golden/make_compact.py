"""Cut compact golden cases (``test/golden/<family>/<case>.json`` + ``.npz``) from full ones.

    python test/golden/make_compact.py                         # every full case under the reference root
    python test/golden/make_compact.py --source DIR dpt/NAME   # one case from another folder

A full case is ``<source>/<family>/<case>.keys.json`` + ``.npz`` as the official code's runs write them
(``shared/reference/README.md``); the reference root is ``$DENSE_PERCEPTION_REFERENCE`` or
``../shared/reference``. The format of what is written is described in ``test/golden/README.md``.

What is kept of each array is set by :data:`CUTS`, in bytes, so the cases stay small whatever the input
size: the leading channels over the whole map (shapes, borders, every pixel of a few channels), a
centred crop over every channel (channel mixing, every channel), a strided grid of a map (every channel,
borders, all of the map sparsely), the first and the last tokens of a ``[1, N, C]`` token tensor with
every channel (heads, and the end of the map where stripes and windows are padded).
Each array also keeps ``max|ref|`` over the whole reference array, so the tolerance rule keeps exactly
the full case's bound.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path
from collections.abc import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # test/, for golden_cases
from golden_cases import (
    COMPACT_ROOT, FAMILIES, INPUT_RULE, array_sha256, default_sources, full_case_names, key_list_sha256,
    read_full, reference_root, seeded_input,
)

KIB = 1024
#: A cut: (piece name, function(shape, itemsize) -> slices as [start, stop, step] per dimension).
Cut = tuple[str, Callable[[tuple[int, ...], int], list[list[int]]]]


def _entries_of_dim1(shape: tuple[int, ...], itemsize: int, budget: int) -> int:
    """How many entries of dim 1 (with everything after it) fit in ``budget`` bytes (≥ 1)."""
    return max(1, min(shape[1], budget // (itemsize * math.prod(shape[2:]))))


def lead(budget: int) -> Cut:
    """The first k entries of dim 1 (channels, or tokens) over everything else, k as large as ``budget``
    bytes allow (≥ 1)."""
    def slices(shape: tuple[int, ...], itemsize: int) -> list[list[int]]:
        k = _entries_of_dim1(shape, itemsize, budget)
        return [[0, shape[0], 1], [0, k, 1]] + [[0, n, 1] for n in shape[2:]]
    return "lead", slices


def tail(budget: int) -> Cut:
    """The last k entries of dim 1 (of those the full case holds) over everything else (≥ 1)."""
    def slices(shape: tuple[int, ...], itemsize: int) -> list[list[int]]:
        k = _entries_of_dim1(shape, itemsize, budget)
        return [[0, shape[0], 1], [shape[1] - k, shape[1], 1]] + [[0, n, 1] for n in shape[2:]]
    return "tail", slices


def crop(budget: int) -> Cut:
    """Every channel over a centred square window of the last two dims, as large as ``budget`` allows."""
    def slices(shape: tuple[int, ...], itemsize: int) -> list[list[int]]:
        channels = math.prod(shape[:-2])
        side = max(1, min(shape[-2], shape[-1], math.isqrt(budget // (itemsize * channels))))
        window = [[(n - side) // 2, (n - side) // 2 + side, 1] for n in shape[-2:]]
        return [[0, n, 1] for n in shape[:-2]] + window
    return "crop", slices


def grid(budget: int) -> Cut:
    """Every s-th row and column of the last two dims (all of the others), s as small as ``budget`` allows."""
    def slices(shape: tuple[int, ...], itemsize: int) -> list[list[int]]:
        step = max(1, math.ceil(math.sqrt(itemsize * math.prod(shape) / budget)))
        return [[0, n, 1] for n in shape[:-2]] + [[0, n, step] for n in shape[-2:]]
    return "grid", slices


def map_pieces(budget: int) -> list[Cut]:
    """A ``[1, C, h, w]`` map: a strided grid and a centred crop, every channel in both."""
    return [grid(budget // 2), crop(budget // 2)]


def token_pieces(budget: int) -> list[Cut]:
    """A ``[1, N, C]`` token tensor: its first and its last tokens, every channel."""
    return [lead(budget // 2), tail(budget // 2)]


#: HRViT's intermediate arrays (both heads), as the shared cases name them.
HRVIT_TOKENS = ("s1_b0_attn_pre_out", "s1_b0_ffn_gelu", "block_s1_b0", "s3_b2_attn_pre_out", "block_s3_b2_last",
                "s5_b3_attn_pre_out")
HRVIT_MAPS = ("stem", "fusion_s5_new_b3", "backbone_out0", "backbone_out1", "backbone_out2", "backbone_out3",
              "head_fusion_conv", "head_psp_bottleneck", "head_fpn_bottleneck")
#: ViT-CoMer's: the CNN/ViT token tensors through the interactions, and the maps of the SPM and the head.
VIT_COMER_TOKENS = ("mrfp0", "cti_tov0_deform_sampled", "cti_tov0", "vit_block2", "cti_toc0", "vit_block5",
                    "vit_block8", "mrfp3", "cti_tov3", "vit_block11", "cti_toc3", "extra_cti3")
VIT_COMER_MAPS = ("spm_c1", "spm_c4", "patch_embed", "backbone_out0", "backbone_out1", "backbone_out2",
                  "backbone_out3", "head_psp_bottleneck", "head_fpn_bottleneck")

#: Per family, per array: the pieces kept. About 0.9 MiB per case for EDAFormer and DPT; about 0.4 MiB
#: for HRViT and ViT-CoMer, whose many intermediate arrays each catch some porting mistake best (the
#: cases' tolerance studies), so every one is kept, smaller.
CUTS: dict[str, dict[str, list[Cut]]] = {
    "edaformer": {
        "output": [lead(192 * KIB), crop(128 * KIB)],
        **{f"backbone_stage{i}": [lead(96 * KIB), crop(48 * KIB)] for i in range(1, 5)},
        "pred": [crop(16 * KIB)],
    },
    "dpt": {
        "output": [grid(32 * KIB)],  # all zeros (MiDaS) or one constant (metric) under the weight rule
        "pre_relu": [grid(160 * KIB)],
        **{name: [lead(144 * KIB), crop(48 * KIB)]
           for name in ("layer1_ch0_64", "layer2_ch0_64", "layer3", "layer4")},
    },
    "hrvit": {
        "output": map_pieces(64 * KIB),
        **{name: map_pieces(24 * KIB) for name in HRVIT_MAPS},
        **{name: token_pieces(24 * KIB) for name in HRVIT_TOKENS},
        "pred": [crop(16 * KIB)],
    },
    "vit_comer": {
        "output": map_pieces(64 * KIB),
        **{name: map_pieces(16 * KIB) for name in VIT_COMER_MAPS},
        **{name: token_pieces(16 * KIB) for name in VIT_COMER_TOKENS},
        "pred": [crop(16 * KIB)],
    },
}
#: SegFormer / PVTv2 (shared/reference/sra): the arrays of each case by name. Token arrays ([1, N, C],
#: leading tokens) keep their first tokens; maps keep leading channels and a crop. At most about 0.45 MiB
#: (the PVT case), so that every family's cases fit the 10 MB budget together.
_SRA_MAPS = ("backbone_stage1_ch0_8", "backbone_stage2_ch0_32", "backbone_stage3_ch0_128", "backbone_stage4",
             "backbone_stage1_ch0_4", "backbone_stage2_ch0_16", "backbone_stage3_ch0_64", "backbone_stage4_ch0_256",
             "head_fuse_ch0_8", "fpn_out1_ch0_4", "fpn_out2_ch0_16", "fpn_out3_ch0_64", "fpn_out4_ch0_256",
             "head_sum_ch0_4")
_SRA_TOKENS = ("block1_0_norm1_tok0_4096", "block1_0_norm1_tok0_2048", "block1_0_gelu_out_tok0_1024",
               "block1_0_gelu_out_tok0_512", "block1_0_gelu_out_tok0_256", "kv_input_stage1", "kv_input_stage2")
CUTS["sra"] = {
    "output": [lead(96 * KIB), crop(48 * KIB)],
    "pred": [crop(16 * KIB)],
    **{name: [lead(16 * KIB), crop(8 * KIB)] for name in _SRA_MAPS},
    **{name: [lead(16 * KIB)] for name in _SRA_TOKENS},
}
#: Fields of a full case's JSON not copied into the compact one (the key list is kept as a hash).
BULKY = ("keys", "state_dict", "intermediate_stats", "arrays")


def compact(family: str, stem: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The compact JSON and arrays of the full case at ``stem``."""
    case = read_full(stem)
    if not np.array_equal(seeded_input(case.input_shape).numpy(), case.full_input):
        raise SystemExit(f"{stem}: the stored input is not {INPUT_RULE}; cannot regenerate it")
    cuts = CUTS[family]
    unknown = set(case.arrays) - set(cuts)
    if unknown:
        raise SystemExit(f"{stem}: no cut chosen for {sorted(unknown)}; add them to CUTS")
    sources = default_sources(family, case.meta)
    arrays, data = {}, {}
    for name, ref in case.arrays.items():
        full = case.reference(name, "all")
        pieces = {}
        for piece, slices_for in cuts[name]:
            spec = slices_for(full.shape, full.dtype.itemsize)
            pieces[piece] = spec
            data[f"{name}.{piece}"] = np.ascontiguousarray(full[tuple(slice(*s) for s in spec)])
        arrays[name] = {
            "source": sources[name],
            "tolerance": None if ref.exact else ref.tolerance,  # labels agree exactly
            "max_abs": None if ref.exact else float(np.abs(full).max()),
            "shape": list(full.shape), "leading_channels": ref.leading_channels, "exact": ref.exact,
            "pieces": pieces,
        }
        if ref.exact and "pred_notes" in case.meta:  # cases that count their near ties
            arrays[name]["near_ties"] = ref.near_ties
    npz = stem.with_name(stem.name + ".npz")
    meta = {
        "format": "dense_perception compact golden case, version 1 (test/golden/README.md)",
        "case": case.name, "family": family, "settings": case.settings,
        "input": {"rule": INPUT_RULE, "shape": list(case.input_shape), "sha256": case.input_sha256},
        "state_dict": {"entries": case.state_dict_entries, "sha256": case.state_dict_sha256,
                       "how": "sha256 of the sorted [key, shape] list as compact JSON"},
        "arrays": arrays,
        "cut_from": {"case": f"{family}/{case.name}", "npz_sha256": hashlib.sha256(npz.read_bytes()).hexdigest(),
                     "tool": "test/golden/make_compact.py"},
        "full_case": {k: v for k, v in case.meta.items() if k not in BULKY},
    }
    assert key_list_sha256(case.keys) == case.state_dict_sha256
    assert array_sha256(case.full_input) == meta["input"]["sha256"]
    return meta, data


def readable_json(value: object, indent: str = "") -> str:
    """Indented JSON with every list of numbers (or of such lists) on one line."""
    def numeric(v: object) -> bool:
        return isinstance(v, (int, float)) or (isinstance(v, list) and all(map(numeric, v)))

    inner = indent + " "
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(k)}: {readable_json(v, inner).strip()}" for k, v in value.items()]
        text = "{\n" + ",\n".join(items) + f"\n{indent}}}"
    elif isinstance(value, list) and value and not numeric(value):
        text = "[\n" + ",\n".join(inner + readable_json(v, inner).strip() for v in value) + f"\n{indent}]"
    else:
        text = json.dumps(value)
    return text + ("\n" if not indent else "")


def write(family: str, stem: Path, out_root: Path) -> Path:
    meta, data = compact(family, stem)
    out = out_root / family / meta["case"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(readable_json(meta))
    np.savez_compressed(out.with_suffix(".npz"), **data)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", help="family/case names (default: every full case found)")
    parser.add_argument("--source", type=Path, default=None, help="folder of full cases (default: reference root)")
    parser.add_argument("--out", type=Path, default=COMPACT_ROOT, help="where to write (default: test/golden)")
    args = parser.parse_args(argv)
    source = args.source or reference_root()
    wanted = args.cases or [f"{family}/{name}" for family in FAMILIES for name in full_case_names(family, source)]
    if not wanted:
        raise SystemExit(f"no full cases under {source} (families {', '.join(FAMILIES)})")
    for item in wanted:
        family, name = item.split("/", 1)
        out = write(family, source / family / name, args.out)
        size = sum(p.stat().st_size for p in (out.with_suffix(".json"), out.with_suffix(".npz")))
        print(f"{out.relative_to(args.out)}: {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
