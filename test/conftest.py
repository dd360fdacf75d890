"""Shared test settings: hypothesis profiles, a private engine cache, two threads per test. The golden
references are read by ``golden_cases`` (one reader and one rule for every reference test)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, settings

# Property-based tests (hypothesis): "ci" is the default, a few dozen cases per property so the
# README's test command stays quick; "fuzz" runs 1,000 cases per property and a one-minute overload
# (python -m pytest test/test_fuzz_nodes.py --hypothesis-profile=fuzz).
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")


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
