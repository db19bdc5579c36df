"""The token stream: fast path == reference path, every token once per epoch, several caches, training
caches."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from visae.backbones.layout import TokenLayout
from visae.cache.positions import sample_positions
from visae.cache.reader import open_cache
from visae.cache.sampler import TokenStream
from visae.cache.testing import write_synthetic_cache
from visae.errors import CacheError, ConfigError

LAYOUT = TokenLayout(("cls",), 2, 3, 4)  # P = 6


def _acts(n: int, p: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, p, 5)) * 2 + np.arange(5) + shift).astype(np.float32)


@pytest.fixture
def two(tmp_path):
    """A full cache (37 images × 6) and a training cache keeping 2 positions of 29 images."""
    a = write_synthetic_cache(tmp_path / "a", _acts(37, 6, 0), np.arange(37) % 3, ["x", "y", "z"], LAYOUT,
                              shard_images=8)
    pos = sample_positions(range(29), 6, 2, seed=3)
    b = write_synthetic_cache(tmp_path / "b", _acts(29, 2, 1, shift=4.0), np.zeros(29, int), ["x"], LAYOUT,
                              shard_images=5, positions_nt=pos, position_seed=3)
    return open_cache(a, verify=True), open_cache(b, verify=True)


def _stored(*caches):
    return np.concatenate([np.concatenate([np.asarray(c.shard(k), np.float32).reshape(-1, 5)
                                           for k in range(len(c.manifest.shards))]) for c in caches])


def _sorted_rows(x: np.ndarray) -> np.ndarray:
    return x[np.lexsort(x.T)]


@pytest.mark.parametrize("kw", [
    dict(batch_size=16, seed=1, epochs=2, drop_last=False, buffer_tokens=40),
    dict(batch_size=7, seed=5, epochs=3, drop_last=True, buffer_tokens=10, start_step=9),
    dict(batch_size=50, seed=0, epochs=1, drop_last=False, buffer_tokens=None, normalize=False),
])
def test_fast_path_yields_the_reference_batches(two, kw):
    for stream in (TokenStream([two[0]]), TokenStream(list(two))):
        fast = list(stream.token_sampler(prefetch=True, **kw))
        ref = list(stream.token_sampler(prefetch=False, **kw))
        assert len(fast) == len(ref) == stream.n_batches(kw["batch_size"], kw["epochs"], kw["drop_last"]) \
            - kw.get("start_step", 0)
        assert all(torch.equal(f, r) for f, r in zip(fast, ref, strict=True))


def test_several_caches_one_stream_every_token_once(two):
    stream = TokenStream(list(two))
    stored = _stored(*two)
    assert stream.n_tokens == 37 * 6 + 29 * 2 == len(stored)
    batches = list(stream.token_sampler(16, seed=2, normalize=False, epochs=2, drop_last=False,
                                        buffer_tokens=40))
    per_epoch = len(batches) // 2
    for e in range(2):
        got = torch.cat(batches[e * per_epoch:(e + 1) * per_epoch]).numpy()
        assert np.array_equal(_sorted_rows(got), _sorted_rows(stored))
    # the two caches are mixed inside batches, not read one after the other
    from_b = [(b.numpy()[:, 0] > 2.5).mean() for b in batches[:per_epoch - 1]]
    assert 0 < np.mean(from_b) < 1 and sum(0 < f < 1 for f in from_b) >= len(from_b) // 2
    # pooled statistics: exactly those of all stored tokens together
    s64 = stored.astype(np.float64)
    assert np.allclose(stream.mean_d, s64.mean(0), atol=1e-5)
    assert stream.std == pytest.approx(np.sqrt(((s64 - s64.mean(0)) ** 2).mean()), rel=1e-5)
    norm = next(stream.token_sampler(16, seed=2, normalize=True, buffer_tokens=40))
    raw = next(stream.token_sampler(16, seed=2, normalize=False, buffer_tokens=40))
    assert torch.allclose(norm, (raw - torch.from_numpy(stream.mean_d)) / stream.std)


def test_stream_refuses_caches_of_different_layers(tmp_path, two):
    other = write_synthetic_cache(tmp_path / "o", _acts(4, 6, 2), np.zeros(4, int), ["x"], LAYOUT, layer=3)
    with pytest.raises(CacheError, match=r"layer is 3 .* same backbone, weights and layer"):
        TokenStream([two[0], open_cache(other)])


def test_closing_a_stream_early_ends_its_reader_thread(two):
    before = threading.active_count()
    it = TokenStream(list(two)).token_sampler(4, seed=0, buffer_tokens=8)
    next(it)
    it.close()
    assert threading.active_count() == before


def test_training_cache_is_refused_by_whole_image_readers(two):
    b = two[1]
    assert b.is_subsampled and b.tokens_per_image == 2 and b.n_patches == 6 and b.n_tokens == 58
    assert np.array_equal(b.positions(3, 12), sample_positions(range(3, 12), 6, 2, seed=3))
    with pytest.raises(CacheError, match=r"keeping 2 of 6 patch positions .*tokens_per_image=2.*without "
                                         r"tokens_per_image"):
        next(b.iter_images())
    with pytest.raises(CacheError, match="M1"):
        b.require_full_grid("M1")
    assert np.array_equal(two[0].positions(0, 2), np.tile(np.arange(6), (2, 1)))


def test_positions_are_seeded_per_image():
    a = sample_positions([0, 1, 2, 7], 196, 16, seed=42)
    assert a.shape == (4, 16) and a.dtype == np.int16
    assert all(len(set(r)) == 16 and list(r) == sorted(r) for r in a)
    assert np.array_equal(a[3], sample_positions([7], 196, 16, seed=42)[0])  # batching does not matter
    assert not np.array_equal(a, sample_positions([0, 1, 2, 7], 196, 16, seed=43))
    with pytest.raises(ConfigError, match=r"tokens_per_image=300: .*196 patch positions"):
        sample_positions([0], 196, 300, seed=0)


def test_half_batches_finished_on_a_device_equal_the_cpu_path(two):
    stream = TokenStream(list(two))
    kw = dict(seed=4, buffer_tokens=30)
    cpu = list(stream.token_sampler(8, normalize=True, **kw))
    half = list(stream.token_sampler(8, half=True, **kw))
    assert half[0].dtype == torch.float16
    done = list(stream.finish_on(iter(half), torch.device("cpu")))
    assert all(torch.equal(a, b) for a, b in zip(cpu, done, strict=True))
