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
    COMPACT_ROOT, REQUIRE_ENV, ArrayRef, GoldenCase, case_params, compact_case_names, load_case, mismatches,
    read_compact, reference_root,
)

#: Size budget of the shipped cases (issue 16): 1 MB per case, 10 MB in all.
CASE_BYTES, TOTAL_BYTES = 1_000_000, 10_000_000
COMPACT = [(family, name) for family in ("dpt", "edaformer", "sra") for name in compact_case_names(family)]


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
    """EDAFormer-T and -B each with the training ratios and the paper's ISR; DPT hybrid and large, MiDaS
    and metric; SegFormer with and without ISR, PVTv2."""
    covered = set()
    for family, name in COMPACT:
        settings = read_compact(COMPACT_ROOT / family / name).settings
        isr = settings.get("isr") or {}
        covered.add((settings["network"], tuple(isr.get("encoder", ())), tuple(isr.get("decoder", ()))))
    expected = {(net, enc, dec) for net in ("edaformer_t_ade20k", "edaformer_b_ade20k")
                for enc, dec in (((8, 4, 2, 1), (1, 2, 4)), ((16, 8, 2, 1), (2, 4, 8)))}
    expected |= {(net, (), ()) for net in ("dpt_hybrid_midas", "dpt_large_midas", "dpt_hybrid_nyu")}
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
