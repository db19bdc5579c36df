"""ActivationCache reader on synthetic caches: iterator, sampler, stats, verify, schema."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from visae.backbones.layout import TokenLayout
from visae.cache.reader import open_cache
from visae.cache.testing import write_synthetic_cache
from visae.errors import CacheError

LAYOUT = TokenLayout(("cls",), 2, 3, 4)  # P = 6


@pytest.fixture
def acts() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.normal(size=(37, 6, 5)) * 3 + np.arange(5)).astype(np.float32)


@pytest.fixture
def cache_dir(tmp_path, acts):
    labels = np.arange(37) % 3
    return write_synthetic_cache(tmp_path / "c", acts, labels, ["a", "b", "c"], LAYOUT, shard_images=8)


def test_round_trip_and_iter_images(cache_dir, acts):
    c = open_cache(cache_dir, verify=True)
    assert (c.n_images, c.n_patches, c.d_model, c.n_tokens) == (37, 6, 5, 222)
    assert c.layout == LAYOUT
    assert c.class_names == ["a", "b", "c"]
    assert c.labels.dtype == np.int64 and list(c.labels[:4]) == [0, 1, 2, 0]
    assert c.image_ids[3] == "img000003"
    assert len(c.manifest.shards) == 5
    stored = acts.astype(np.float16).astype(np.float32)
    got_idx, got = [], []
    for idx, a in c.iter_images(group_size=10, start=3, stop=30):
        assert a.dtype == torch.float32
        got_idx.append(idx)
        got.append(a.numpy())
    assert np.array_equal(np.concatenate(got_idx), np.arange(3, 30))
    assert np.array_equal(np.concatenate(got), stored[3:30])
    _, norm = next(c.iter_images(group_size=37, normalize=True))
    assert np.allclose(norm.numpy(), (stored - c.mean_d) / c.std, atol=1e-5)


def test_stats_equal_numpy_on_stored_values(cache_dir, acts):
    c = open_cache(cache_dir)
    stored = acts.astype(np.float16).astype(np.float64).reshape(-1, 5)
    mean = stored.mean(0)
    assert np.allclose(c.mean_d, mean, rtol=1e-6, atol=1e-6)
    assert c.std == pytest.approx(np.sqrt(((stored - mean) ** 2).mean()), rel=1e-12)
    stats = json.loads((cache_dir / "stats.json").read_text())
    assert stats["n_tokens"] == 222


@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_covers_every_token_once_per_epoch(cache_dir, acts, drop_last):
    c = open_cache(cache_dir)
    stored = acts.astype(np.float16).astype(np.float32).reshape(-1, 5)
    batches = list(c.token_sampler(16, seed=1, normalize=False, epochs=2, drop_last=drop_last,
                                   buffer_tokens=40))
    assert len(batches) == c.n_batches(16, epochs=2, drop_last=drop_last)
    per_epoch = len(batches) // 2
    for e in range(2):
        got = torch.cat(batches[e * per_epoch:(e + 1) * per_epoch]).numpy()
        if drop_last:
            assert len(got) == 222 // 16 * 16
            # every drawn token is a distinct stored token
            assert len(np.unique(got, axis=0)) == len(got)
        else:
            assert got.shape == stored.shape  # every token exactly once
            assert np.array_equal(got[np.lexsort(got.T)], stored[np.lexsort(stored.T)])
    # shuffled: the first batch is not the first tokens in order
    assert not np.array_equal(batches[0].numpy(), stored[:16])
    # epochs differ
    assert not torch.equal(batches[0], batches[per_epoch])


def test_sampler_deterministic_and_resumable(cache_dir):
    c = open_cache(cache_dir)
    kw = dict(normalize=True, epochs=3, buffer_tokens=40)
    full = list(c.token_sampler(16, seed=7, **kw))
    again = list(c.token_sampler(16, seed=7, **kw))
    assert all(torch.equal(a, b) for a, b in zip(full, again, strict=True))
    for start in (1, 5, 13, 20):
        resumed = list(c.token_sampler(16, seed=7, start_step=start, **kw))
        assert len(resumed) == len(full) - start
        assert all(torch.equal(a, b) for a, b in zip(full[start:], resumed, strict=True))
    other = next(c.token_sampler(16, seed=8, **kw))
    assert not torch.equal(other, full[0])


def test_checksum_failure_names_the_shard(cache_dir):
    p = cache_dir / "shard_00002.npy"
    raw = bytearray(p.read_bytes())
    raw[-3] ^= 0xFF
    p.write_bytes(bytes(raw))
    open_cache(cache_dir)  # no verification by default
    with pytest.raises(CacheError, match=r"shard_00002\.npy: sha256 mismatch .*rerun 'visae cache'"):
        open_cache(cache_dir, verify=True)


def test_newer_schema_is_an_upgrade_error(cache_dir):
    m = json.loads((cache_dir / "manifest.json").read_text())
    m["schema_version"] = 99
    m["some_future_field"] = 1
    (cache_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CacheError, match=r"newer.*upgrade visae"):
        open_cache(cache_dir)


def test_not_a_cache(tmp_path):
    with pytest.raises(CacheError, match=r"no manifest\.json"):
        open_cache(tmp_path)
    (tmp_path / "progress.json").write_text("{}")
    with pytest.raises(CacheError, match="incomplete"):
        open_cache(tmp_path)


def test_prefix_tokens_written(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(4, 6, 3)).astype(np.float32)
    pre = rng.normal(size=(4, 1, 3)).astype(np.float32)
    d = write_synthetic_cache(tmp_path / "p", a, np.zeros(4, int), ["x"], LAYOUT, prefix_nkd=pre)
    c = open_cache(d, verify=True)
    assert c.manifest.has_prefix
    assert np.array_equal(np.load(d / "prefix_00000.npy"), pre.astype(np.float16))
