"""The golden-case machinery itself: the shipped compact cases are the cuts of the full ones, fit their
size budget and cover every network family; a missing reference folder skips (or fails in CI) by name;
the comparison rule keeps the full case's bound on every piece."""
from __future__ import annotations

import hashlib
import importlib.util
import json

import numpy as np
import pytest

from golden_cases import (
    COMPACT_ROOT, FAMILIES, REQUIRE_ENV, ArrayRef, GoldenCase, case_params, compact_case_names, label_agreement,
    load_case, mismatches, read_compact, read_full, reference_root,
)

#: Size budget of the shipped cases (issue 16): 1 MB per case, 10 MB in all.
CASE_BYTES, TOTAL_BYTES = 1_000_000, 10_000_000
COMPACT = [(family, name) for family in FAMILIES for name in compact_case_names(family)]


def _make_compact_module():
    spec = importlib.util.spec_from_file_location("make_compact", COMPACT_ROOT / "make_compact.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compact_cases_fit_the_size_budget() -> None:
    sizes = {name: sum(p.stat().st_size for p in COMPACT_ROOT.glob(f"{family}/{name}.*")) for family, name in COMPACT}
    assert all(size <= CASE_BYTES for size in sizes.values()), sizes
    assert sum(sizes.values()) <= TOTAL_BYTES, sum(sizes.values())


def test_compact_cases_cover_every_network_family() -> None:
    """At least one case per family; EDAFormer-T and -B each with the training ratios and the paper's ISR;
    DPT hybrid and large, MiDaS and metric; HRViT-b1 with both heads; ViT-CoMer-T square and not;
    SegFormer with and without ISR, PVTv2."""
    assert {family for family, _ in COMPACT} == set(FAMILIES)
    assert set(FAMILIES) >= {"dpt", "edaformer", "hrvit", "sra", "vit_comer"}
    covered = set()
    for family, name in COMPACT:
        case = read_compact(COMPACT_ROOT / family / name)
        assert case.family == family, (family, name)
        isr = case.settings.get("isr") or {}
        height, width = case.input_shape[2:]
        covered.add((case.settings["network"], tuple(isr.get("encoder", ())), tuple(isr.get("decoder", ()))))
        covered.add((case.settings["network"], "square" if height == width else "non-square"))
    expected = {(net, enc, dec) for net in ("edaformer_t_ade20k", "edaformer_b_ade20k")
                for enc, dec in (((8, 4, 2, 1), (1, 2, 4)), ((16, 8, 2, 1), (2, 4, 8)))}
    expected |= {(net, (), ()) for net in ("dpt_hybrid_midas", "dpt_large_midas", "dpt_hybrid_nyu",
                                           "hrvit_b1_segformer_ade20k", "hrvit_b1_upernet_ade20k")}
    expected |= {("vit_comer_t_upernet_ade20k", shape) for shape in ("square", "non-square")}
    # SegFormer with the training ratios and the paper's Table 7 ISR, PVTv2 + Semantic FPN
    expected |= {("segformer_b0_ade20k", (), ()), ("segformer_b1_ade20k", (16, 8, 2, 1), ()),
                 ("pvt_v2_b1_fpn_ade20k", (), ())}
    assert expected <= covered, expected - covered


@pytest.mark.parametrize("family, name", COMPACT, ids=[f"{f}/{n}" for f, n in COMPACT])
def test_compact_case_is_the_cut_of_its_full_case(family: str, name: str) -> None:
    """Re-cutting the full case (where the reference folder has it) gives the shipped files exactly."""
    shipped = json.loads((COMPACT_ROOT / family / f"{name}.json").read_text())
    stem = reference_root() / shipped["cut_from"]["case"]
    npz = stem.with_name(stem.name + ".npz")
    if not npz.exists():
        pytest.skip(f"full case {npz} not found (cases made for this repository live outside ../shared)")
    assert hashlib.sha256(npz.read_bytes()).hexdigest() == shipped["cut_from"]["npz_sha256"]
    meta, data = _make_compact_module().compact(family, stem)
    assert json.loads(json.dumps(meta)) == shipped
    with np.load(COMPACT_ROOT / family / f"{name}.npz") as stored:
        assert sorted(stored.files) == sorted(data)
        for key, values in data.items():
            assert stored[key].dtype == values.dtype and np.array_equal(stored[key], values), key


def test_missing_reference_folder_skips_naming_it_and_fails_when_required(tmp_path, monkeypatch) -> None:
    missing = tmp_path / "no-reference"
    monkeypatch.setenv("DENSE_PERCEPTION_REFERENCE", str(missing))
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    ids = case_params("dpt")
    assert ids[-1] == "full/-" and all(i.startswith("compact/") for i in ids[:-1])
    with pytest.raises(pytest.skip.Exception, match=f"{missing / 'dpt'} is missing"):
        load_case("dpt", "full/-")
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=f"{REQUIRE_ENV}=1 but full golden cases not found"):
        load_case("dpt", "full/-")


def _toy_case(values: np.ndarray, tolerance: float) -> GoldenCase:
    """A one-array case keeping two pieces of ``values``: its first channel and a crop of every channel."""
    pieces = {"lead": (slice(0, 1), slice(0, 1), slice(0, 8), slice(0, 8)),
              "crop": (slice(0, 1), slice(0, 4), slice(3, 5), slice(3, 5))}
    array = ArrayRef(name="a", source={"module": "", "take": "output"}, tolerance=tolerance,
                     scale=max(1.0, float(np.abs(values).max())), shape=values.shape, leading_channels=False,
                     pieces=pieces, exact=False)
    return GoldenCase(family="toy", name="toy", form="compact", settings={}, input_shape=(1, 3, 8, 8),
                      input_sha256="", state_dict_entries=0, state_dict_sha256="", arrays={"a": array},
                      data={f"a.{p}": values[s] for p, s in pieces.items()}, meta={})


def test_pieces_keep_the_full_arrays_bound() -> None:
    ref = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    ref[0, 3, 0, 0] = 40.0  # the whole array's max lies outside both pieces and sets the bound
    case = _toy_case(ref, 1e-3)
    assert mismatches(case, {"a": ref.copy()}) == []
    inside = ref.copy()
    inside[0, 0, 7, 7] += 0.039  # < 1e-3 * 40: within the full case's bound
    assert mismatches(case, {"a": inside}) == []
    inside[0, 2, 4, 4] += 0.041  # in the crop, > 1e-3 * 40
    failures = mismatches(case, {"a": inside})
    assert len(failures) == 1 and "a.crop" in failures[0], failures
    outside = ref.copy()
    outside[0, 2, 0, 0] += 1.0  # not stored: the compact case cannot see it
    assert mismatches(case, {"a": outside}) == []
    assert "shape" in mismatches(case, {"a": ref[:, :, :4]})[0]


def _toy_labels_case(labels: np.ndarray, near_ties: int) -> GoldenCase:
    """A one-array label case keeping two pieces: the top rows and the bottom rows."""
    pieces = {"top": (slice(0, 1), slice(0, 4), slice(0, 8)), "bottom": (slice(0, 1), slice(4, 8), slice(0, 8))}
    array = ArrayRef(name="pred", source={"module": "", "take": "output", "convert": "labels"}, tolerance=0.0,
                     scale=1.0, shape=labels.shape, leading_channels=False, pieces=pieces, exact=True,
                     near_ties=near_ties)
    return GoldenCase(family="toy", name="toy", form="compact", settings={}, input_shape=(1, 3, 8, 8),
                      input_sha256="", state_dict_entries=0, state_dict_sha256="", arrays={"pred": array},
                      data={f"pred.{p}": labels[s] for p, s in pieces.items()}, meta={})


def test_labels_may_differ_on_at_most_the_near_ties_per_piece() -> None:
    ref = np.random.default_rng(1).integers(0, 150, (1, 8, 8)).astype(np.uint8)
    case = _toy_labels_case(ref, near_ties=1)
    one = ref.copy()
    one[0, 1, 1] += 1
    assert mismatches(case, {"pred": one}) == []
    assert label_agreement(case, "pred", one) == 1 - 1 / 32
    two = one.copy()
    two[0, 2, 5] += 1  # a second flip in the same piece
    failures = mismatches(case, {"pred": two})
    assert len(failures) == 1 and "pred.top: differs on 2 of 32 entries" in failures[0], failures
    assert mismatches(_toy_labels_case(ref, near_ties=0), {"pred": one})  # no near ties: exact


def _write_full_case(stem, arrays: dict[str, np.ndarray], **meta) -> None:
    """A full case in the references' format: ``<stem>.keys.json`` + ``<stem>.npz`` (with the input)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    keys = [["w", [2, 2], "float32"]]
    stem.with_name(stem.name + ".keys.json").write_text(json.dumps({"settings": {"network": "toy"}, "keys": keys,
                                                                    **meta}))
    np.savez(stem.with_name(stem.name + ".npz"), input=np.zeros((1, 3, 4, 4), np.float32), **arrays)


def test_full_case_leading_entries_are_read_from_names_lists_and_concatenating_modules(tmp_path) -> None:
    """Three ways a full case holds only the leading entries of dim 1 (``layer1_ch0_2``, ``stored_channels``,
    the input of UperNet's bottleneck); the other arrays must match in full."""
    values = np.ones((1, 2, 4, 4), np.float32)
    stem = tmp_path / "toy" / "case"
    _write_full_case(stem, {"layer1_ch0_2": values, "tokens": values[:, :, :, 0], "out3": values, "whole": values,
                            "pred": np.zeros((1, 4, 4), np.uint8)},
                     stored_channels={"tokens": {"stored_leading_entries_dim1": 2}},
                     compare_hooks={"layer1_ch0_2": "layer1", "tokens": "blocks.0"},
                     compare_inputs={"out3": "decode_head.bottleneck", "whole": "decode_head.lateral_convs.0"},
                     pred_notes={"pixels_with_top2_gap_below_1e-5": 3})
    case = read_full(stem)
    assert {name: a.leading_channels for name, a in case.arrays.items()} == {
        "layer1_ch0_2": True, "tokens": True, "out3": True, "whole": False, "pred": False}
    assert case.arrays["pred"].exact and case.arrays["pred"].near_ties == 3
    wider = np.ones((1, 5, 4, 4), np.float32)
    ours = {"layer1_ch0_2": wider, "tokens": wider[:, :, :, 0], "out3": wider, "whole": wider,
            "pred": np.zeros((1, 4, 4), np.uint8)}
    failures = mismatches(case, ours)
    assert len(failures) == 1 and failures[0].startswith("full/case whole: shape (1, 5, 4, 4)"), failures
