"""Golden cases: outputs of the official DPT, EDAFormer and SegFormer/PVTv2 code under the seeded weight rule.

Two forms of the same data, read into one :class:`GoldenCase` and checked by one rule:

* a **full case** (``<case>.keys.json`` + ``<case>.npz`` under ``<reference root>/<family>``, made by
  running the official code; ``shared/reference/README.md``): the seeded input, the official arrays
  (whole, or the leading entries of dim 1 -- channels of a map, tokens of a token array -- where the name
  ends in ``_ch0_<n>`` / ``_tok0_<n>`` or the case lists it in ``stored_channels``), the official state_dict key
  list and per-array tolerances. The reference root is ``$DENSE_PERCEPTION_REFERENCE`` or
  ``<repo>/../shared/reference``; it exists beside our own checkouts and in CI, not in a user's clone.
* a **compact case** (``test/golden/<family>/<case>.json`` + ``.npz``, shipped in git) cut from a full
  case by ``test/golden/make_compact.py``: the input is regenerated from its seed rule (and checked by
  hash), the key list is kept as a hash, and each array keeps named *pieces* -- slices of the official
  array (leading channels over the whole map, a crop over every channel, a strided grid) -- together
  with the whole array's ``max|ref|``, so that the rule below keeps exactly the full case's bound.

The rule (``shared/reference/README.md``): an array passes when
``max|ours - ref| <= rel * max(1, max|ref over the whole reference array|)``; label maps (``pred``)
must agree exactly.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
#: Where the compact cases ship.
COMPACT_ROOT = REPO / "test" / "golden"
#: Network families with golden cases.
FAMILIES = ("dpt", "edaformer", "sra")
#: Set to 1 (CI does) to make a missing full reference folder a test failure instead of a skip.
REQUIRE_ENV = "DENSE_PERCEPTION_REQUIRE_REFERENCE"
#: The default tolerance of the reference README for arrays without an entry.
DEFAULT_TOLERANCE = 1e-4
#: Bounds for arrays a full case lists without a tolerance of its own, where the tests have long used a
#: tighter one than the README's default: EDAFormer's encoder stage maps (the T cases bound only the logits).
UNLISTED_TOLERANCE = {("edaformer", "backbone_stage"): 1e-5}
#: Seed of the reference input: ``torch.randn([1, 3, H, W], generator=torch.Generator().manual_seed(7))``.
INPUT_SEED = 7
INPUT_RULE = "torch.randn([1,3,H,W], generator=torch.Generator().manual_seed(7)), float32"
#: A full-case array name ending like this holds only the leading ``n`` entries of dim 1 of the tensor
#: (channels of a ``[1, C, h, w]`` map, tokens of a ``[1, N, C]`` token array).
_LEADING_CHANNELS = re.compile(r"_(?:ch|tok)0_(\d+)$")


# ---- where the cases are ------------------------------------------------------------------------


def reference_root() -> Path:
    """``$DENSE_PERCEPTION_REFERENCE``, else ``<repo>/../shared/reference`` (where CI has it)."""
    env = os.environ.get("DENSE_PERCEPTION_REFERENCE")
    return Path(env) if env else REPO.parent / "shared" / "reference"


def full_case_names(family: str, root: Path | None = None) -> list[str]:
    """Names of the full cases under ``<root>/<family>``; empty when that folder is missing."""
    folder = (root or reference_root()) / family
    return sorted(p.name[: -len(".keys.json")] for p in folder.glob("*.keys.json"))


def compact_case_names(family: str) -> list[str]:
    """Names of the compact cases shipped under ``test/golden/<family>``."""
    return sorted(p.stem for p in (COMPACT_ROOT / family).glob("*.json"))


def case_params(family: str, forms: Sequence[str] = ("compact", "full")) -> list[str]:
    """Case ids for pytest: ``"compact/<case>"`` for every shipped case and ``"full/<case>"`` for every
    full case found; without the full folder, one ``"full/-"`` that :func:`load_case` skips (or fails,
    with ``$DENSE_PERCEPTION_REQUIRE_REFERENCE=1``) naming what is missing. Never fails at collection."""
    ids = []
    if "compact" in forms:
        ids += [f"compact/{name}" for name in compact_case_names(family)]
    if "full" in forms:
        ids += [f"full/{name}" for name in full_case_names(family)] or ["full/-"]
    return ids


def load_case(family: str, case_id: str) -> GoldenCase:
    """The case behind a :func:`case_params` id; skips a missing full folder with a reason naming it."""
    form, name = case_id.split("/", 1)
    if form == "compact":
        return read_compact(COMPACT_ROOT / family / name)
    if name == "-":
        folder = reference_root() / family
        state = "holds no *.keys.json" if folder.is_dir() else "is missing"
        message = (f"full golden cases not found: {folder} {state} (the folder exists beside the project's own "
                   f"checkouts and in CI; set DENSE_PERCEPTION_REFERENCE to point elsewhere); "
                   f"the compact cases in test/golden/{family} ran instead")
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {message}")
        pytest.skip(message)
    return read_full(reference_root() / family / name)


# ---- the case model -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ArrayRef:
    """One reference array: where ours comes from, its bound, and the stored pieces of it."""

    name: str
    source: Mapping[str, object]  # see capture_arrays
    tolerance: float
    scale: float  # max(1, max|ref|) over the whole reference array
    shape: tuple[int, ...]  # the reference array's shape (a leading-channel prefix when leading_channels)
    leading_channels: bool  # the reference holds only the first shape[1] channels of the tensor
    pieces: Mapping[str, tuple[slice, ...]]  # piece name -> slices into the tensor
    exact: bool  # integer labels: compared for equality


@dataclass(frozen=True)
class GoldenCase:
    """A full or compact case, with everything a test compares."""

    family: str
    name: str
    form: str  # "full" | "compact"
    settings: Mapping[str, object]
    input_shape: tuple[int, ...]
    input_sha256: str
    state_dict_entries: int
    state_dict_sha256: str
    arrays: Mapping[str, ArrayRef]
    data: Mapping[str, np.ndarray]  # "<array>.<piece>" -> reference values
    meta: Mapping[str, object]  # the case's JSON as read
    full_input: np.ndarray | None = None  # the stored input (full cases only)
    keys: Sequence[tuple[str, list[int]]] | None = None  # the official key list (full cases only)

    @property
    def id(self) -> str:
        return f"{self.form}/{self.name}"

    def reference(self, array: str, piece: str) -> np.ndarray:
        return self.data[f"{array}.{piece}"]


def read_full(stem: Path) -> GoldenCase:
    """A full case from ``<stem>.keys.json`` + ``<stem>.npz``: every array is one piece, ``all``."""
    meta = json.loads(stem.with_name(stem.name + ".keys.json").read_text())
    family = stem.parent.name
    with np.load(stem.with_name(stem.name + ".npz")) as npz:
        stored = {k: npz[k] for k in npz.files}
    full_input = stored.pop("input")
    tolerance = {name: default_tolerance(family, name) for name in stored} | meta.get("tolerance", {})
    sources = default_sources(family, meta)
    arrays, data = {}, {}
    for name, values in stored.items():
        arrays[name] = ArrayRef(
            name=name, source=sources[name], tolerance=float(tolerance[name]),
            scale=max(1.0, float(np.abs(values).max())) if values.dtype.kind == "f" else 1.0,
            shape=values.shape,
            leading_channels=bool(_LEADING_CHANNELS.search(name)) or name in meta.get("stored_channels", {}),
            pieces={"all": tuple(slice(0, n) for n in values.shape)}, exact=values.dtype.kind != "f")
        data[f"{name}.all"] = values
    keys = [(k, list(shape)) for k, shape, *_ in meta["keys"]]
    return GoldenCase(
        family=family, name=stem.name, form="full", settings=meta["settings"],
        input_shape=full_input.shape, input_sha256=array_sha256(full_input),
        state_dict_entries=len(keys), state_dict_sha256=key_list_sha256(keys),
        arrays=arrays, data=data, meta=meta, full_input=full_input, keys=keys)


def read_compact(stem: Path) -> GoldenCase:
    """A compact case from ``<stem>.json`` + ``<stem>.npz`` (format: ``test/golden/README.md``)."""
    meta = json.loads(stem.with_suffix(".json").read_text())
    with np.load(stem.with_suffix(".npz")) as npz:
        data = {k: npz[k] for k in npz.files}
    arrays = {
        name: ArrayRef(
            name=name, source=spec["source"], tolerance=float(spec["tolerance"] or 0.0),
            scale=max(1.0, float(spec["max_abs"] or 0.0)), shape=tuple(spec["shape"]),
            leading_channels=bool(spec["leading_channels"]),
            pieces={p: tuple(slice(*s) for s in sl) for p, sl in spec["pieces"].items()},
            exact=bool(spec.get("exact", False)))
        for name, spec in meta["arrays"].items()
    }
    return GoldenCase(
        family=meta["family"], name=meta["case"], form="compact", settings=meta["settings"],
        input_shape=tuple(meta["input"]["shape"]), input_sha256=meta["input"]["sha256"],
        state_dict_entries=meta["state_dict"]["entries"], state_dict_sha256=meta["state_dict"]["sha256"],
        arrays=arrays, data=data, meta=meta)


def default_tolerance(family: str, array: str) -> float:
    """The bound of an array that its full case gives no tolerance for."""
    for (fam, prefix), rel in UNLISTED_TOLERANCE.items():
        if fam == family and array.startswith(prefix):
            return rel
    return DEFAULT_TOLERANCE


def default_sources(family: str, meta: Mapping) -> dict[str, dict]:
    """Where each array of a full case comes from in a network with the official module names.

    A source is ``{"module": path, "take": "output" | "input", "index": i (optional), "convert": c
    (optional)}``; module ``""`` is the network itself. ``convert``: ``"labels"`` = the official
    ``encode_decode`` labels (bilinear resize to the input size, align_corners False, argmax),
    ``"metres"`` = the official ``invert`` step of the metric DPT heads.
    """
    output: dict[str, object] = {"module": "", "take": "output"}
    if family == "dpt" and meta["settings"].get("invert"):
        output["convert"] = "metres"
    sources: dict[str, dict] = {"output": output}
    if family in ("edaformer", "sra"):
        sources["pred"] = {"module": "", "take": "output", "convert": "labels"}
        sources.update({f"backbone_stage{i}": {"module": "backbone", "take": "output", "index": i - 1}
                        for i in range(1, 5)})
    sources.update({a: {"module": m, "take": "output"} for a, m in meta.get("compare_hooks", {}).items()})
    sources.update({a: {"module": m, "take": "input"} for a, m in meta.get("compare_inputs", {}).items()})
    return sources


# ---- fingerprints ---------------------------------------------------------------------------------


def array_sha256(values: np.ndarray) -> str:
    """SHA-256 of an array's C-order bytes."""
    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()


def key_list_sha256(keys: Sequence[tuple[str, Sequence[int]]]) -> str:
    """SHA-256 of the sorted ``[key, shape]`` list written as compact JSON."""
    listing = [[k, [int(n) for n in shape]] for k, shape in sorted(keys)]
    return hashlib.sha256(json.dumps(listing, separators=(",", ":")).encode()).hexdigest()


def state_dict_keys(net: nn.Module) -> list[tuple[str, list[int]]]:
    """``net``'s state_dict as a sorted ``(key, shape)`` list."""
    return [(k, list(v.shape)) for k, v in sorted(net.state_dict().items())]


def seeded_input(shape: Sequence[int]) -> torch.Tensor:
    """The references' input for ``shape`` ``[1, 3, H, W]``."""
    return torch.randn(list(shape), generator=torch.Generator().manual_seed(INPUT_SEED))


# ---- running ours ---------------------------------------------------------------------------------


def _labels(net: nn.Module, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    resized = torch.nn.functional.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)
    return resized.argmax(1).to(torch.uint8)


def _metres(net: nn.Module, x: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    return net.output_units.to_metres(raw)


CONVERSIONS: Mapping[str, Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "labels": _labels, "metres": _metres,
}


def capture_arrays(net: nn.Module, x: torch.Tensor, sources: Mapping[str, Mapping]) -> dict[str, np.ndarray]:
    """One forward of ``net`` on ``x``; every named array taken from its source (see
    :func:`default_sources`) as a NumPy array."""
    taken: dict[tuple[str, str], object] = {}

    def keep(path: str, take: str) -> Callable:
        def hook(_module, args, out=None):
            value = args[0] if take == "input" else out
            taken[(path, take)] = value.detach().clone() if isinstance(value, torch.Tensor) else \
                [v.detach().clone() for v in value]
        return hook

    handles = []
    for path, take in {(str(s["module"]), str(s["take"])) for s in sources.values()}:
        if path == "" and take == "output":
            continue
        module = net.get_submodule(path)
        handles.append(module.register_forward_pre_hook(keep(path, take)) if take == "input"
                       else module.register_forward_hook(keep(path, take)))
    try:
        with torch.no_grad():
            taken[("", "output")] = net(x)
    finally:
        for handle in handles:
            handle.remove()
    arrays = {}
    for name, source in sources.items():
        value = taken[(str(source["module"]), str(source["take"]))]
        if "index" in source:
            value = value[int(source["index"])]
        if "convert" in source:
            with torch.no_grad():
                value = CONVERSIONS[str(source["convert"])](net, x, value)
        arrays[name] = value.numpy()
    return arrays


class Forwards:
    """``forwards(case)``: our sorted state_dict key list and the case's arrays, computed once per network
    setting and input (a case's compact and full forms share one forward). ``build(case)`` makes the
    network with the reference weights."""

    def __init__(self, build: Callable[[GoldenCase], nn.Module]) -> None:
        self._build = build
        self._done: dict[tuple, tuple[list, dict[str, np.ndarray]]] = {}

    def __call__(self, case: GoldenCase) -> tuple[list, dict[str, np.ndarray]]:
        key = (json.dumps(case.settings, sort_keys=True), case.input_shape,
               json.dumps({n: a.source for n, a in sorted(case.arrays.items())}, sort_keys=True))
        if key not in self._done:
            net = self._build(case)
            self._done[key] = state_dict_keys(net), capture_arrays(net, seeded_input(case.input_shape), sources(case))
        return self._done[key]


def sources(case: GoldenCase) -> dict[str, Mapping]:
    """Array name -> source, for :func:`capture_arrays`."""
    return {name: array.source for name, array in case.arrays.items()}


# ---- comparing ------------------------------------------------------------------------------------


def mismatches(case: GoldenCase, ours: Mapping[str, np.ndarray],
               tolerance: Callable[[str, float], float] = lambda array, rel: rel,
               only: Sequence[str] | None = None) -> list[str]:
    """Every way ``ours`` (whole tensors by array name) misses the case, as readable lines.

    ``tolerance(array, rel)`` may widen a case's bound (a documented exception); ``only`` restricts the
    check to some arrays (each must be in the case).
    """
    failures = []
    for name in only or list(case.arrays):
        ref = case.arrays[name]
        tensor = ours[name]
        leading_ok = ref.leading_channels and tensor.shape[1] >= ref.shape[1] and \
            tensor.shape[:1] + tensor.shape[2:] == ref.shape[:1] + ref.shape[2:]
        if tensor.shape != ref.shape and not leading_ok:
            failures.append(f"{case.id} {name}: shape {tensor.shape} vs reference {ref.shape}")
            continue
        bound = tolerance(name, ref.tolerance) * ref.scale
        for piece, slices in ref.pieces.items():
            expected = case.reference(name, piece)
            got = tensor[slices]
            if got.shape != expected.shape:
                failures.append(f"{case.id} {name}.{piece}: shape {got.shape} vs stored {expected.shape}")
            elif ref.exact:
                agree = float((got == expected).mean())
                if agree < 1.0:
                    failures.append(f"{case.id} {name}.{piece}: agrees on {agree:.6f} of the entries")
            else:
                err = float(np.abs(got.astype(np.float64) - expected.astype(np.float64)).max())
                if not err <= bound:
                    failures.append(f"{case.id} {name}.{piece}: max |diff| {err:.3g} > {bound:.3g} "
                                    f"(rel {bound / ref.scale:.3g} of max(1, max|ref|) {ref.scale:.4g})")
    return failures


def assert_matches(case: GoldenCase, ours: Mapping[str, np.ndarray], **kwargs) -> None:
    """Fail with every mismatch of :func:`mismatches` listed."""
    failures = mismatches(case, ours, **kwargs)
    assert not failures, "\n".join(failures)


def assert_close_rel(ours: np.ndarray, ref: np.ndarray, rel: float, what: str) -> None:
    """The references' rule on two whole arrays: max|ours - ref| <= rel * max(1, max|ref|)."""
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} vs reference {ref.shape}"
    err = float(np.abs(ours.astype(np.float64) - ref.astype(np.float64)).max())
    bound = rel * max(1.0, float(np.abs(ref).max()))
    assert err <= bound, f"{what}: max |diff| {err:.3g} > {bound:.3g} (rel {rel})"


def check_state_dict(case: GoldenCase, ours: Sequence[tuple[str, list[int]]]) -> None:
    """Our sorted ``(key, shape)`` list (:func:`state_dict_keys`) equals the official state_dict of the
    case (listed, or hashed with its entry count)."""
    ours = list(ours)
    if case.keys is not None:
        assert ours == list(case.keys), "state_dict keys/shapes differ from official"
    assert (len(ours), key_list_sha256(ours)) == (case.state_dict_entries, case.state_dict_sha256), \
        "state_dict keys/shapes differ from official (entry count or key-list hash)"


def check_input(case: GoldenCase) -> torch.Tensor:
    """The regenerated seeded input, checked against the case (bit for bit / by hash)."""
    x = seeded_input(case.input_shape)
    if case.full_input is not None:
        assert np.array_equal(x.numpy(), case.full_input), "regenerated input differs from the stored one"
    assert array_sha256(x.numpy()) == case.input_sha256, "regenerated input differs from the case's hash"
    return x
