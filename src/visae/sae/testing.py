"""Planted structure for SAE tests and demos: tokens built from a known sparse dictionary."""

from __future__ import annotations

import torch

from visae.sae.base import SAE


def planted_dictionary(n_tokens: int, d: int, n_atoms: int, k: int, seed: int = 0,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_nd, atoms_ad)``: each token is a positive combination (weights in [1, 3]) of ``k`` of
    ``n_atoms`` random unit-norm atoms."""
    g = torch.Generator().manual_seed(seed)
    atoms_ad = torch.randn(n_atoms, d, generator=g)
    atoms_ad /= atoms_ad.norm(dim=1, keepdim=True)
    idx = torch.stack([torch.randperm(n_atoms, generator=g)[:k] for _ in range(n_tokens)])
    coef = torch.rand(n_tokens, k, generator=g) * 2 + 1
    return torch.einsum("nk,nkd->nd", coef, atoms_ad[idx]), atoms_ad


def best_cosine(atoms_ad: torch.Tensor, W_dec: torch.Tensor) -> float:
    """Mean over true atoms of the best cosine similarity with any decoder row."""
    w = W_dec / W_dec.norm(dim=1, keepdim=True)
    a = atoms_ad / atoms_ad.norm(dim=1, keepdim=True)
    return float((a @ w.T).max(1).values.mean())


class ReluSAE(SAE):
    """codes = relu(pre-activations): the plainest SAE, for tests that set its weights by hand."""

    family = "test-relu"

    def encode(self, x_nd: torch.Tensor) -> torch.Tensor:
        """Inference codes: relu of the pre-activations."""
        return torch.relu(self.pre_acts(x_nd))


def make_identity(sae: SAE) -> SAE:
    """Set ``sae`` (d_sae = 2·d_in) to codes = relu([x, −x]) and decoder [I; −I]: it reconstructs x
    exactly."""
    eye = torch.eye(sae.d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def identity_sae(d_in: int) -> SAE:
    """A lossless :class:`ReluSAE` (see :func:`make_identity`) with identity normalization."""
    return make_identity(ReluSAE(d_in, 2 * d_in))
