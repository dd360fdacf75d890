"""Shared test fixtures. Golden reference cases are read by ``golden_cases.py``."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _two_threads():
    """Deterministic, CI-sized threading for every test."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)
