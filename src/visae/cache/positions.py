"""Training caches that keep only some patch positions per image (``tokens_per_image``).

A full cache stores every patch of every image (``[N, P, D]``). A training cache keeps ``T`` patch
positions per image, chosen by a seeded draw that depends only on the seed and the image's source index
(so a resumed or re-batched build stores the same tokens), and stores them, sorted, next to the shard in
``positions_<k>.npy`` (int16 ``[n, T]``). Such a cache feeds the token sampler (SAE training); consumers
that need whole grids (M1–M7, tasks, reports) refuse it with a clear error.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from visae.errors import ConfigError

SUBSAMPLED_SCHEMA_VERSION = 2
"""Schema version of caches written with ``tokens_per_image`` (older readers must refuse them)."""


def positions_file(k: int) -> str:
    """File name of the patch positions of shard ``k``."""
    return f"positions_{k:05d}.npy"


def check_tokens_per_image(tokens_per_image: int | None, n_patches: int,
                           what: str = "tokens_per_image") -> None:
    """ConfigError unless ``tokens_per_image`` is None or lies in 1 … ``n_patches``."""
    if tokens_per_image is not None and not 1 <= tokens_per_image <= n_patches:
        raise ConfigError(f"{what}={tokens_per_image}: the backbone has {n_patches} patch positions per "
                          f"image; choose 1 … {n_patches}, or leave it unset to store every patch")


def sample_positions(source_indices: Sequence[int], n_patches: int, tokens_per_image: int,
                     seed: int) -> np.ndarray:
    """Sorted patch positions ``int16 [len(source_indices), T]``: image ``i`` draws from
    ``rng([seed, i])``."""
    check_tokens_per_image(tokens_per_image, n_patches)
    out = np.empty((len(source_indices), tokens_per_image), dtype=np.int16)
    for row, i in enumerate(source_indices):
        rng = np.random.default_rng([seed, int(i)])
        out[row] = np.sort(rng.choice(n_patches, size=tokens_per_image, replace=False))
    return out
