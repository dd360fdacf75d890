"""Shared test fixtures: where the golden references live, and how a case is read."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

REPO = Path(__file__).resolve().parents[1]

# Property-based tests (hypothesis): "ci" is the default, a few dozen cases per property so the
# README's test command stays quick; "fuzz" runs 1,000 cases per property and a one-minute overload
# (python -m pytest test/test_fuzz_nodes.py --hypothesis-profile=fuzz).
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")


def reference_root() -> Path:
    """``$DENSE_PERCEPTION_REFERENCE``, else ``<repo>/../shared/reference`` (where CI has it)."""
    env = os.environ.get("DENSE_PERCEPTION_REFERENCE")
    return Path(env) if env else REPO.parent / "shared" / "reference"


def reference_cases(family: str) -> list[str]:
    """Case names under ``<root>/<family>``; fails (never skips) when the folder is missing."""
    folder = reference_root() / family
    cases = sorted(p.name[: -len(".keys.json")] for p in folder.glob("*.keys.json"))
    assert cases, f"no golden reference cases in {folder} (set DENSE_PERCEPTION_REFERENCE)"
    return cases


def load_case(family: str, case: str) -> tuple[dict, dict[str, np.ndarray]]:
    folder = reference_root() / family
    meta = json.loads((folder / f"{case}.keys.json").read_text())
    with np.load(folder / f"{case}.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    return meta, arrays


def assert_close_rel(ours: np.ndarray, ref: np.ndarray, rel: float, what: str) -> None:
    """The references' rule: max|ours - ref| <= rel * max(1, max|ref|)."""
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} vs reference {ref.shape}"
    err = float(np.abs(ours.astype(np.float64) - ref.astype(np.float64)).max())
    bound = rel * max(1.0, float(np.abs(ref).max()))
    assert err <= bound, f"{what}: max |diff| {err:.3g} > {bound:.3g} (rel {rel})"


@pytest.fixture(autouse=True, scope="session")
def _private_engine_cache(tmp_path_factory: pytest.TempPathFactory):
    """Graphs and engines built by tests go to a scratch folder, never the user's cache (child
    processes inherit it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DENSE_PERCEPTION_CACHE", str(tmp_path_factory.mktemp("engine_cache")))
        yield


@pytest.fixture(autouse=True)
def _two_threads():
    """Deterministic, CI-sized threading for every test."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def capture_arrays(net: torch.nn.Module, hooks: dict[str, str], inputs: dict[str, str],
                   x: torch.Tensor) -> dict[str, np.ndarray]:
    """Run ``net(x)``; return ``output`` plus the outputs of the ``hooks`` modules and the first inputs
    of the ``inputs`` modules ({array name: module path}, a case's ``compare_hooks``/``compare_inputs``)."""
    got: dict[str, torch.Tensor] = {}
    handles = [
        net.get_submodule(path).register_forward_hook(
            lambda _m, _i, out, a=array: got.__setitem__(a, out.detach().clone()))
        for array, path in hooks.items()
    ] + [
        net.get_submodule(path).register_forward_pre_hook(
            lambda _m, args, a=array: got.__setitem__(a, args[0].detach().clone()))
        for array, path in inputs.items()
    ]
    try:
        with torch.no_grad():
            got["output"] = net(x)
    finally:
        for handle in handles:
            handle.remove()
    return {k: v.numpy() for k, v in got.items()}


def leading_entries(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``ours`` cut to the reference's leading entries of dim 1 (cases store only the first channels
    of a map or the first tokens of a token tensor: their ``stored_channels``)."""
    return ours[:, : ref.shape[1]] if ours.ndim == ref.ndim and ours.shape[1] > ref.shape[1] else ours
