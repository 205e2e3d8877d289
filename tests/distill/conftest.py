"""Shared fixtures of the distillation tests."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convolutions: one intra-op thread is ~100x faster than two on a loaded machine (then restored)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
