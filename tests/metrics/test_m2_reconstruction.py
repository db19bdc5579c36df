"""M2: FVU, mean L0 and dead features against a direct numpy computation; a perfect SAE gives FVU 0."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visae.backbones.layout import TokenLayout
from visae.cache.reader import open_cache
from visae.cache.testing import write_synthetic_cache
from visae.metrics import m2_reconstruction
from visae.metrics.encode import encode_stream
from visae.metrics.m2_reconstruction import M2Config, compute_m2
from visae.sae.testing import ReluSAE, identity_sae

LAYOUT = TokenLayout(("cls",), 3, 4, 8)  # P = 12




@pytest.fixture
def cache(tmp_path):
    rng = np.random.default_rng(0)
    acts = (rng.normal(size=(23, 12, 6)) * np.array([1, 2, 3, 0.5, 1, 4]) + 50.0).astype(np.float32)
    path = write_synthetic_cache(tmp_path / "c", acts, np.arange(23) % 2, ["a", "b"], LAYOUT, shard_images=5)
    return open_cache(path)


def stored_acts(cache) -> np.ndarray:
    return np.concatenate([a.numpy() for _, a in cache.iter_images(group_size=100)]).astype(np.float64)


@pytest.mark.parametrize("work_tokens", [4096, 12, 25], ids=["one-chunk", "image-chunks", "uneven"])
def test_m2_equals_direct_numpy(cache, work_tokens, monkeypatch) -> None:
    monkeypatch.setattr(m2_reconstruction, "WORK_TOKENS", work_tokens)
    torch.manual_seed(0)
    sae = ReluSAE(6, 16)
    with torch.no_grad():
        sae.b_enc.copy_(torch.linspace(-0.5, 0.2, 16))
        sae.b_enc[3] = -1e3  # never active: dead
    sae.set_normalization(torch.from_numpy(cache.mean_d), cache.std)
    result = compute_m2(encode_stream(sae, cache, group_size=4, device=torch.device("cpu")))

    a = stored_acts(cache).reshape(-1, 6)
    x = torch.from_numpy((a - cache.mean_d) / cache.std).float()
    with torch.no_grad():
        codes = sae.encode(x).double().numpy()
        recon = sae.decode(sae.encode(x)).double().numpy()
    recon_raw = recon * cache.std + cache.mean_d  # FVU is the same in raw units
    fvu = ((a - recon_raw) ** 2).sum() / ((a - a.mean(axis=0)) ** 2).sum()
    assert result.fvu == pytest.approx(fvu, rel=1e-5)
    assert result.value == result.fvu and result.higher_is_better is False
    assert result.explained_variance == pytest.approx(1 - fvu, rel=1e-5)
    assert result.mean_l0 == pytest.approx((codes > 0).sum(axis=1).mean())
    dead_ref = int((codes.max(axis=0) <= 0).sum())
    assert result.dead == dead_ref >= 1 and result.dead_fraction == pytest.approx(dead_ref / 16)
    assert result.n_tokens == 23 * 12 and result.n_images == 23 and result.d_sae == 16
    assert 0.0 < result.fvu < 10.0


def test_perfect_reconstruction_gives_zero_fvu(cache) -> None:
    sae = identity_sae(6)
    sae.set_normalization(torch.from_numpy(cache.mean_d), cache.std)
    result = compute_m2(encode_stream(sae, cache, group_size=7, device=torch.device("cpu")))
    assert result.fvu == 0.0 and result.mse == 0.0
    assert result.total_variance > 0


def test_unnormalized_large_offset_is_exact(cache) -> None:
    # Activations around 50 with no stored normalization: the shifted float64 sums stay exact.
    sae = ReluSAE(6, 8)
    result = compute_m2(encode_stream(sae, cache, group_size=3, device=torch.device("cpu")))
    a = stored_acts(cache).reshape(-1, 6)
    with torch.no_grad():
        recon = sae.decode(sae.encode(torch.from_numpy(a).float())).double().numpy()
    fvu = ((a - recon) ** 2).sum() / ((a - a.mean(axis=0)) ** 2).sum()
    assert result.fvu == pytest.approx(fvu, rel=1e-6)


def test_dead_threshold_is_configurable(cache) -> None:
    sae = identity_sae(6)
    sae.set_normalization(torch.from_numpy(cache.mean_d), cache.std)
    all_dead = compute_m2(encode_stream(sae, cache, group_size=8), M2Config(dead_threshold=1e6))
    assert all_dead.dead == 12 and all_dead.dead_fraction == 1.0
