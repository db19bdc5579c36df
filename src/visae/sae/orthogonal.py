"""Decoder-orthogonality penalty (OrtSAE; Korznikov et al. 2025), a training option of every family.

OrtSAE penalises each decoder atom's largest squared cosine similarity with the other atoms. To stay
linear in the dictionary size the atoms are split at random into chunks of ``chunk_size`` every step and
the maximum is taken within each chunk::

    L_orth = mean_f  max_{g ≠ f, g in chunk(f)} cos²(W_dec[f], W_dec[g])

added to the loss as ``ortho_coeff · L_orth`` (``TrainConfig.ortho_coeff``; 0 turns it off). Atoms whose
cosine with every partner is small pay nothing; a pair of near-duplicates pays nearly 1 each, which is
what pushes absorbing features apart.
"""

from __future__ import annotations

import torch


def orthogonality_penalty(W_fd: torch.Tensor, chunk_size: int = 4096,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """``mean_f max_{g≠f in f's chunk} cos²(W_f, W_g)`` over a random split of the rows into chunks
    (one chunk holding every row when ``chunk_size ≥ F``); differentiable in ``W_fd``."""
    n = W_fd.shape[0]
    if n < 2:
        return W_fd.sum() * 0.0
    perm = torch.randperm(n, generator=generator).to(W_fd.device)
    unit = W_fd / W_fd.norm(dim=1, keepdim=True).clamp_min(1e-12)
    total = W_fd.new_zeros(())
    for start in range(0, n, chunk_size):
        idx = perm[start:start + chunk_size]
        if idx.numel() < 2:
            continue
        w = unit[idx]
        cos2 = (w @ w.T).pow(2)
        off = ~torch.eye(idx.numel(), dtype=torch.bool, device=w.device)
        total = total + (cos2 * off).max(1).values.sum()
    return total / n
