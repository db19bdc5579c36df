"""The single encoding pass shared by every metric: patch codes, reconstructions and pooled image features.

An evaluation cache is streamed in groups of images (bounded memory whatever its size); every group is
normalized with the SAE's stored statistics, encoded and decoded once, and handed to each metric.
Image-level features (max over patches) of raw activations, reconstructions and codes are collected in
the same pass; pooled codes are kept sparse.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from visae.cache.reader import ActivationCache
from visae.sae.base import SAE

DEFAULT_GROUP_BYTES = 256 * 2**20


@dataclass
class EncodedBatch:
    """One group of images after encoding."""

    image_index_n: np.ndarray
    """Positions of these images in the evaluation cache."""
    labels_n: np.ndarray
    """Their integer labels."""
    acts_npd: torch.Tensor
    """Activations in the SAE's normalized input space, float32."""
    codes_npf: torch.Tensor
    """Inference codes (non-negative), float32."""
    recon_npd: torch.Tensor
    """Reconstructions in the same space as ``acts_npd``."""
    grid_hw: tuple[int, int]
    """Patch grid; P = H × W, row-major."""


@dataclass
class PooledFeatures:
    """Image-level features of the whole evaluation set (max over patches)."""

    labels_n: np.ndarray
    acts_nd: np.ndarray
    """Max-pooled normalized activations, float32."""
    recon_nd: np.ndarray
    """Max-pooled reconstructions, float32."""
    codes_nf: sp.csr_matrix
    """Max-pooled codes, sparse float32."""


def auto_group_size(n_patches: int, d_sae: int, requested: int, budget_bytes: int = DEFAULT_GROUP_BYTES) -> int:
    """Images per group: the requested size, reduced so that dense codes fit in ``budget_bytes``."""
    fit = max(1, budget_bytes // max(1, n_patches * d_sae * 4))
    return max(1, min(requested, fit))


@torch.no_grad()
def encode_stream(sae: SAE, cache: ActivationCache, group_size: int = 64,
                  device: torch.device | None = None, budget_bytes: int = DEFAULT_GROUP_BYTES,
                  ) -> Iterator[EncodedBatch]:
    """Yield every image group of ``cache`` encoded by ``sae`` (in eval mode, inference thresholds)."""
    if sae.d_in != cache.d_model:
        from visae.errors import CheckpointError

        raise CheckpointError(f"SAE d_in {sae.d_in} does not match the cache's width {cache.d_model} ({cache.path})")
    device = device or next(sae.parameters()).device
    sae = sae.to(device).eval()
    layout = cache.layout
    n_group = auto_group_size(layout.n_patches, sae.d_sae, group_size, budget_bytes)
    labels = cache.labels
    for index_n, acts_npd in cache.iter_images(group_size=n_group, normalize=False):
        acts_npd = acts_npd.to(device=device, dtype=torch.float32)
        n, p, d = acts_npd.shape
        x_nd = sae.normalize(acts_npd.reshape(n * p, d))
        codes = sae.encode(x_nd)
        recon = sae.decode(codes)
        yield EncodedBatch(
            image_index_n=index_n,
            labels_n=labels[index_n],
            acts_npd=x_nd.reshape(n, p, d),
            codes_npf=codes.reshape(n, p, -1),
            recon_npd=recon.reshape(n, p, d),
            grid_hw=(layout.grid_h, layout.grid_w),
        )


class PooledCollector:
    """Accumulates max-pooled features batch by batch."""

    def __init__(self) -> None:
        self._labels: list[np.ndarray] = []
        self._acts: list[np.ndarray] = []
        self._recon: list[np.ndarray] = []
        self._codes: list[sp.csr_matrix] = []

    def update(self, batch: EncodedBatch) -> None:
        """Pool one batch over patches and keep it."""
        self._labels.append(batch.labels_n)
        self._acts.append(batch.acts_npd.amax(dim=1).float().cpu().numpy())
        self._recon.append(batch.recon_npd.amax(dim=1).float().cpu().numpy())
        self._codes.append(sp.csr_matrix(batch.codes_npf.amax(dim=1).float().cpu().numpy()))

    def result(self) -> PooledFeatures:
        """All pooled features in cache order."""
        if not self._labels:
            raise ValueError("no images were encoded")
        return PooledFeatures(
            labels_n=np.concatenate(self._labels),
            acts_nd=np.concatenate(self._acts),
            recon_nd=np.concatenate(self._recon),
            codes_nf=sp.vstack(self._codes).tocsr().astype(np.float32),
        )
