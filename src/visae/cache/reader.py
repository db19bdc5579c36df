"""Reading an activation cache: manifest, statistics, a per-image iterator and a shuffled token sampler.

The on-disk format is described in docs/cache-protocol.md. (Interface fixed by the lead; implemented in
the foundation issue.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from visae.backbones.layout import TokenLayout
from visae.cache.manifest import CacheManifest


class ActivationCache:
    """An opened, complete cache folder."""

    path: Path
    manifest: CacheManifest

    def __init__(self, path: Path | str, verify: bool = False) -> None:
        raise NotImplementedError

    @property
    def layout(self) -> TokenLayout:
        """Token layout (grid, patch size, prefix tokens) of the backbone that produced the cache."""
        raise NotImplementedError

    @property
    def n_images(self) -> int:
        raise NotImplementedError

    @property
    def d_model(self) -> int:
        raise NotImplementedError

    @property
    def n_tokens(self) -> int:
        """n_images × n_patches."""
        raise NotImplementedError

    @property
    def labels(self) -> np.ndarray:
        """int64 [N]."""
        raise NotImplementedError

    @property
    def image_ids(self) -> list[str]:
        raise NotImplementedError

    @property
    def class_names(self) -> list[str]:
        raise NotImplementedError

    @property
    def mean_d(self) -> np.ndarray:
        """Per-dimension mean (float32 [D]) from stats.json."""
        raise NotImplementedError

    @property
    def std(self) -> float:
        """Scalar std from stats.json."""
        raise NotImplementedError

    def normalize(self, acts: torch.Tensor) -> torch.Tensor:
        """(acts − mean_d) / std with this cache's statistics."""
        raise NotImplementedError

    def iter_images(self, group_size: int = 64, normalize: bool = False, start: int = 0,
                    stop: int | None = None) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Ordered groups ``(index_n, acts_npd float32)`` of images start … stop-1."""
        raise NotImplementedError

    def token_sampler(self, batch_size: int, seed: int = 42, normalize: bool = True, epochs: int = 1,
                      start_step: int = 0, drop_last: bool = True) -> Iterator[torch.Tensor]:
        """Shuffled patch-token batches ``[batch_size, D]`` float32 over all shards, bounded memory.

        Deterministic for a seed; ``start_step`` skips that many batches (resume after a kill).
        """
        raise NotImplementedError

    def verify(self) -> None:
        """Check every shard's sha256 against the manifest; CacheError names the first bad shard."""
        raise NotImplementedError


def open_cache(path: Path | str, verify: bool = False) -> ActivationCache:
    """Open a complete cache folder (``manifest.json`` present); CacheError otherwise."""
    return ActivationCache(path, verify=verify)
