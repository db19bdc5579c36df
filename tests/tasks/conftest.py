"""Fixtures for the task tests: an SAE whose codes and reconstructions keep every bit of the input."""

from __future__ import annotations

import pytest
import torch

from visae.sae.base import SAE


class SplitSAE(SAE):
    """codes = [relu(x), relu(−x)] and decode(codes) = x exactly: a lossless test SAE (d_sae = 2·d_in)."""

    family = "split-test"

    def encode(self, x_nd: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.pre_acts(x_nd))


def split_sae(d_in: int) -> SAE:
    """A SplitSAE with identity normalization."""
    sae = SplitSAE(d_in, 2 * d_in)
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


@pytest.fixture
def make_split_sae():
    return split_sae


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The task heads take many tiny optimizer steps; on a loaded CI machine one intra-op thread is ~10× faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
