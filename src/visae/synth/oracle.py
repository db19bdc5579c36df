"""SAEs that know the planted model: the reference points of the recovery metric and of the acceptance
tests (``oracle_sae``: the true dictionary; ``absorbing_sae``: the same, with each class feature absorbed
into its variants)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from visae.errors import ConfigError
from visae.sae.jumprelu import JumpReLUSAE
from visae.synth.truth import GroundTruth

THRESHOLD_SHARE = 0.25
"""A latent fires above this share of its feature's base magnitude (values on a footprint stay ≥ ~0.6 of it
at the default jitter; noise projections stay far below)."""


def oracle_sae(cache: Path | str, absorb: bool = False) -> JumpReLUSAE:
    """A JumpReLU SAE in the cache's normalized space whose decoder is the planted dictionary and whose
    encoder is its pseudo-inverse: its codes are the true codes (÷ the cache's std) up to noise, exactly
    when ``F* ≤ D``. ``absorb``: each class feature's latent is silenced and its direction absorbed into its
    variants' decoder rows (``(d_variant + d_class)/‖·‖``), the pattern of feature absorption."""
    from visae.cache.reader import open_cache

    acts = open_cache(cache)
    truth = GroundTruth.load(acts.path)
    atoms_fd = truth.dictionary_fd
    f, d = atoms_fd.shape
    std = acts.std
    sae = JumpReLUSAE(d, f)
    encoder_df = np.linalg.pinv(atoms_fd)
    decoder_fd = atoms_fd.copy()
    threshold_f = THRESHOLD_SHARE * truth.column("magnitude").astype(np.float64) / std
    if absorb:
        role, parent = truth.column("role"), truth.column("parent")
        variants = np.flatnonzero(role == "variant")
        if not len(variants):
            raise ConfigError(f"{acts.path}: no variant features planted; absorption needs a hierarchical "
                              "preset (variants > 0)")
        for v in variants:
            mixed = atoms_fd[v] + atoms_fd[parent[v]]
            decoder_fd[v] = mixed / np.linalg.norm(mixed)
            threshold_f[parent[v]] = np.inf
    with torch.no_grad():
        sae.W_dec.copy_(torch.as_tensor(decoder_fd, dtype=torch.float32))
        sae.W_enc.copy_(torch.as_tensor(encoder_df, dtype=torch.float32))
        sae.b_enc.zero_()
        sae.b_dec.copy_(torch.as_tensor((truth.bias_d - acts.mean_d) / std, dtype=torch.float32))
        sae.threshold.copy_(torch.as_tensor(np.minimum(threshold_f, 3.0e38), dtype=torch.float32))
    sae.set_normalization(torch.as_tensor(acts.mean_d), std)
    return sae.eval()
