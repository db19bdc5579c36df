"""Whitening (App. C ablation): whitened training activations have identity covariance, unwhitening gives
the activations back, a folded SAE gives the same codes on standardized inputs and unwhitened
reconstructions, and training with ``whiten`` stores the fit beside the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from visae.backbones.layout import TokenLayout
from visae.cache.reader import open_cache
from visae.cache.sampler import TokenStream
from visae.cache.testing import write_synthetic_cache
from visae.cache.whitening import (
    Whitening,
    fit_whitening,
    fold_into_sae,
    whitening_for,
    whitening_from_covariance,
    whitening_path,
)
from visae.errors import ConfigError


def correlated_cache(tmp_path: Path, n: int = 300, p: int = 9, d: int = 12) -> Path:
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(d, d)) * np.linspace(0.2, 3.0, d)  # strongly anisotropic, correlated
    acts = (rng.normal(size=(n * p, d)) @ mix + 5.0).reshape(n, p, d).astype(np.float32)
    layout = TokenLayout(prefix_names=(), grid_h=3, grid_w=3, patch_size=14)
    return write_synthetic_cache(tmp_path / "cache", acts, np.zeros(n, dtype=np.int64), ["a"], layout)


def all_standardized(cache_path: Path) -> torch.Tensor:
    cache = open_cache(cache_path)
    return torch.cat([a.reshape(-1, cache.d_model) for _, a in cache.iter_images(100, normalize=True)])


@pytest.mark.parametrize("kind", ["pca", "zca"])
def test_whitened_training_tokens_have_identity_covariance_and_invert(tmp_path: Path, kind: str) -> None:
    path = correlated_cache(tmp_path)
    x = all_standardized(path).double()
    w = fit_whitening(TokenStream([open_cache(path)]), kind, batch_size=500)
    assert w.n_tokens == len(x)
    xw = w.apply(x).numpy()
    np.testing.assert_allclose(np.cov(xw, rowvar=False), np.eye(x.shape[1]), atol=1e-8)
    np.testing.assert_allclose(xw.mean(axis=0), 0.0, atol=1e-8)
    np.testing.assert_allclose(w.invert(w.apply(x)).numpy(), x.numpy(), atol=1e-9)
    if kind == "zca":  # ZCA is the symmetric whitening: the one closest to the identity map
        np.testing.assert_allclose(w.w_dd, w.w_dd.T, atol=1e-10)


def test_eigenvalue_floor_and_bad_kind() -> None:
    cov = np.diag([4.0, 1.0, 0.0])
    w = whitening_from_covariance("pca", np.zeros(3), cov, 10, eps=1e-3)
    assert w.eigenvalues_d.tolist() == pytest.approx([4.0, 1.0, 4e-3])
    np.testing.assert_allclose(w.w_dd @ w.w_inv_dd, np.eye(3), atol=1e-12)
    with pytest.raises(ConfigError, match="whiten"):
        whitening_from_covariance("cholesky", np.zeros(3), cov, 10)


def test_store_beside_cache_and_reload(tmp_path: Path) -> None:
    path = correlated_cache(tmp_path)
    stream = TokenStream([open_cache(path)])
    assert whitening_for(stream, "none") is None
    first = whitening_for(stream, "zca")
    assert first is not None
    stored = whitening_path(stream, "zca")
    assert stored.parent == path and stored.is_file()
    again = Whitening.load(stored)
    np.testing.assert_array_equal(again.w_dd, first.w_dd)
    assert again.kind == "zca" and again.n_tokens == first.n_tokens


def test_folded_sae_has_same_codes_and_unwhitened_reconstructions(tmp_path: Path) -> None:
    from visae.sae.registry import make_sae

    path = correlated_cache(tmp_path)
    x = all_standardized(path)
    w = fit_whitening(TokenStream([open_cache(path)]), "pca", batch_size=500)
    torch.manual_seed(0)
    sae = make_sae("topk", 12, expansion=4, k=5)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_()
    xw = w.apply(x.double()).float()
    codes_w, recon_w = sae.encode(xw), sae.decode(sae.encode(xw))
    fold_into_sae(sae, w)
    codes = sae.encode(x)
    torch.testing.assert_close(codes, codes_w, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(sae.decode(codes), w.invert(recon_w.double()).float(), atol=2e-4, rtol=1e-4)


@pytest.mark.slow
def test_train_with_whitening_saves_a_folded_sae(tmp_path: Path) -> None:
    import yaml

    from visae.sae.checkpoint import load_sae
    from visae.sae.train import SAESpec, TrainConfig, train_saes

    path = correlated_cache(tmp_path)
    cfg = TrainConfig(batch_size=256, epochs=2, heldout_batches=1, progress=False, whiten="zca")
    out = train_saes(path, SAESpec(family="topk", expansion=2, k=4), tmp_path / "saes", cfg)[0]
    prov = yaml.safe_load((out / "config.yaml").read_text())["provenance"]
    assert prov["whitening"]["kind"] == "zca" and Path(prov["whitening"]["path"]).is_file()
    sae = load_sae(out)
    x = all_standardized(path)
    with torch.no_grad():
        r = sae(x).recon_nd
    fvu = float((r - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert fvu < 0.9  # reconstructions are in the standardized space, not the whitened one
