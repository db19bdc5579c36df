"""The shared encoding pass: one ordered pass over the cache, groups bounded in memory, pooled features."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from visae.backbones.layout import TokenLayout
from visae.cache.reader import open_cache
from visae.cache.testing import write_synthetic_cache
from visae.errors import CheckpointError
from visae.metrics.encode import PooledCollector, auto_group_size, encode_stream
from visae.sae.base import SAE

LAYOUT = TokenLayout(("cls",), 2, 3, 14)  # P = 6


class CountingSAE(SAE):
    """ReLU SAE that counts its encode calls and the tokens it saw."""

    family = "test-counting"

    def __init__(self, d_in: int, d_sae: int) -> None:
        super().__init__(d_in, d_sae)
        self.calls = 0
        self.tokens = 0

    def encode(self, x_nd: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.tokens += x_nd.shape[0]
        return torch.relu(self.pre_acts(x_nd))


@pytest.fixture
def cache(tmp_path):
    rng = np.random.default_rng(3)
    acts = (rng.normal(size=(29, 6, 5)) * 2 + 1).astype(np.float32)
    return open_cache(write_synthetic_cache(tmp_path / "c", acts, np.arange(29) % 4, list("abcd"), LAYOUT,
                                            shard_images=7))


def test_stream_is_one_ordered_pass_of_the_sae(cache, monkeypatch) -> None:
    torch.manual_seed(0)
    sae = CountingSAE(5, 12)
    sae.set_normalization(torch.from_numpy(cache.mean_d), cache.std)
    reads = []
    original = cache.iter_images
    monkeypatch.setattr(cache, "iter_images", lambda **kw: reads.append(kw) or original(**kw))
    batches = list(encode_stream(sae, cache, group_size=8, device=torch.device("cpu")))
    assert len(reads) == 1
    assert [b.codes_npf.shape[0] for b in batches] == [8, 8, 8, 5]
    assert sae.calls == 4 and sae.tokens == 29 * 6  # every token encoded exactly once
    assert np.array_equal(np.concatenate([b.image_index_n for b in batches]), np.arange(29))
    assert np.array_equal(np.concatenate([b.labels_n for b in batches]), np.arange(29) % 4)
    raw = torch.cat([a for _, a in original(group_size=100)])
    acts = torch.cat([b.acts_npd for b in batches])
    torch.testing.assert_close(acts, (raw - torch.from_numpy(cache.mean_d)) / cache.std)
    with torch.no_grad():
        codes = torch.relu(sae.pre_acts(acts.reshape(-1, 5))).reshape(29, 6, 12)
        torch.testing.assert_close(torch.cat([b.codes_npf for b in batches]), codes)
        torch.testing.assert_close(torch.cat([b.recon_npd for b in batches]), sae.decode(codes))
    assert all(b.grid_hw == (2, 3) for b in batches)


def test_group_size_shrinks_to_the_memory_budget_and_groups_are_released(cache) -> None:
    sae = CountingSAE(5, 1000)
    # Dense codes of one image are 6 × 1000 × 4 bytes; a 60 kB budget fits two images per group.
    assert auto_group_size(6, 1000, 64, budget_bytes=60_000) == 2
    assert auto_group_size(6, 1000, 64, budget_bytes=1) == 1
    stream = encode_stream(sae, cache, group_size=64, budget_bytes=60_000)
    first = next(stream)
    assert first.codes_npf.shape[0] == 2
    ref = weakref.ref(first.codes_npf)
    del first
    second = next(stream)
    gc.collect()
    assert ref() is None, "the stream must not keep earlier groups alive"
    assert second.codes_npf.shape[0] == 2
    assert sum(b.codes_npf.shape[0] for b in stream) == 29 - 4


def test_width_mismatch_names_the_cache(cache) -> None:
    with pytest.raises(CheckpointError, match="d_in 7"):
        next(encode_stream(CountingSAE(7, 4), cache))


def test_pooled_collector_is_max_over_patches(cache) -> None:
    torch.manual_seed(1)
    sae = CountingSAE(5, 9)
    collector = PooledCollector()
    batches = []
    for b in encode_stream(sae, cache, group_size=5):
        collector.update(b)
        batches.append(b)
    pooled = collector.result()
    assert isinstance(pooled.codes_nf, sp.csr_matrix) and pooled.codes_nf.shape == (29, 9)
    codes = torch.cat([b.codes_npf for b in batches])
    np.testing.assert_allclose(pooled.codes_nf.toarray(), codes.amax(dim=1).numpy())
    np.testing.assert_allclose(pooled.acts_nd, torch.cat([b.acts_npd for b in batches]).amax(dim=1).numpy())
    np.testing.assert_allclose(pooled.recon_nd, torch.cat([b.recon_npd for b in batches]).amax(dim=1).numpy())
    assert np.array_equal(pooled.labels_n, np.arange(29) % 4)
    with pytest.raises(ValueError, match="no images"):
        PooledCollector().result()


def test_spilled_collector_equals_the_in_memory_one_and_is_file_backed(cache, tmp_path) -> None:
    torch.manual_seed(2)
    sae = CountingSAE(5, 9)
    in_memory, spilled = PooledCollector(), PooledCollector(tmp_path / "spill")
    for b in encode_stream(sae, cache, group_size=4):
        in_memory.update(b)
        spilled.update(b)
    a, b = in_memory.result(), spilled.result()
    assert np.array_equal(a.labels_n, b.labels_n)
    for name in ("acts_nd", "recon_nd"):
        assert isinstance(getattr(b, name), np.memmap)
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert (a.codes_nf != b.codes_nf).nnz == 0 and b.codes_nf.shape == (29, 9)
    # scipy kept the mapped arrays: no in-memory copy of the stored values or their indices
    assert _mapped(b.codes_nf.data) and _mapped(b.codes_nf.indices)
    assert not _mapped(a.codes_nf.data)
    assert b.codes_nf.indptr.dtype == b.codes_nf.indices.dtype == np.int32


def _mapped(arr: np.ndarray) -> bool:
    """Whether ``arr`` is a view of a memory map (some link of its ``base`` chain is one)."""
    while arr is not None:
        if isinstance(arr, np.memmap):
            return True
        arr = getattr(arr, "base", None)
    return False
