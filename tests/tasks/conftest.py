"""Fixtures for the task tests: an SAE whose codes and reconstructions keep every bit of the input."""

from __future__ import annotations

import pytest
import torch

from visae.sae.testing import identity_sae


@pytest.fixture
def make_split_sae():
    """codes = [relu(x), relu(−x)] and decode(codes) = x exactly: a lossless test SAE (d_sae = 2·d_in)."""
    return identity_sae


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The task heads take many tiny optimizer steps; on a loaded CI machine one intra-op thread is ~10×
    faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
