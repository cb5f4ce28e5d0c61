"""Shared fixtures: a tiny random model per test module, and torch's thread count restored after
each test (the engine sets it process-wide)."""

import pytest
import torch


@pytest.fixture(scope="module")
def model():
    """Tiny random backend; modules that need another model define their own `model`."""
    from soundflow.model import build_model

    return build_model("tiny")


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
