"""Whitening before the probes (App. C): known answers on where it provably does and does not change a
probe's result, M6's whitening against a reference, and the switch refused where it does not apply (the
tasks' whitening: tests/tasks/test_task_whitening.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from visae.cache.whitening import whiten_rows, whitening_of_rows
from visae.config import build_config
from visae.errors import ConfigError
from visae.metrics.encode import PooledFeatures
from visae.metrics.m3_preservation import M3Config, compute_m3
from visae.metrics.m4_sparse_probing import M4Config
from visae.metrics.m6_cross_domain import M6Config, compute_m6_dataset
from visae.metrics.m7_absorption import M7Config
from visae.metrics.probes import ProbeConfig, fit_probe, stratified_split
from visae.tasks import task_config

UNREGULARISED = {"C": 1e6, "max_iter": 5000, "tol": 1e-10}


def overlapping_classes(seed: int = 0, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping Gaussian classes in 4 dimensions, mixed by a well-conditioned linear map (the
    unregularised logistic optimum is finite and unique)."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    x = rng.normal(size=(n, 4)) + 0.8 * y[:, None] * np.array([1.0, -0.5, 0.3, 0.0])
    mix = np.eye(4) + 0.3 * rng.normal(size=(4, 4))
    return x @ mix + 2.0, y


def tiny_signal(seed: int = 0, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Two classes separated only along a dimension whose scale is 1e-3 of the others (noise-free there)."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    x = rng.normal(size=(n, 5))
    x[:, 4] = 1e-3 * (2 * y - 1 + 0.3 * rng.normal(size=n))
    return x, y


@pytest.mark.parametrize("kind", ["pca", "zca"])
def test_unregularised_probe_is_invariant_under_whitening(kind: str) -> None:
    """An unregularised logistic probe is invariant under any invertible affine map of its inputs
    (w ↦ W⁻¹w): whitening changes none of its predictions, so M3 is unchanged."""
    acts, y = overlapping_classes()
    recon = acts + 0.5 * np.random.default_rng(1).normal(size=acts.shape)
    probe = ProbeConfig(**UNREGULARISED)
    plain = compute_m3(acts, recon, y, M3Config(probe=probe))
    white = compute_m3(acts, recon, y, M3Config(probe=probe, whiten=kind))
    assert plain.probe_converged and white.probe_converged
    assert (white.acc_raw, white.acc_recon) == (plain.acc_raw, plain.acc_recon)
    assert 0.55 < plain.acc_raw < 0.95  # not a trivially separable case


@pytest.mark.parametrize("kind", ["pca", "zca"])
def test_regularised_probe_changes_under_whitening(kind: str) -> None:
    """With L2 (C = 0.01) the probe cannot afford the ~10³ weight a 10⁻³-scale signal needs: chance
    unwhitened; whitening brings that direction to unit variance and the classes apart."""
    acts, y = tiny_signal()
    probe = ProbeConfig(C=0.01, max_iter=2000)
    plain = compute_m3(acts, acts, y, M3Config(probe=probe))
    white = compute_m3(acts, acts, y, M3Config(probe=probe, whiten=kind))
    assert plain.acc_raw < 0.7
    assert white.acc_raw > 0.9


def pooled(x: np.ndarray, y: np.ndarray, recon: np.ndarray | None = None) -> PooledFeatures:
    codes = sp.csr_matrix(np.maximum(np.concatenate([x, -x], axis=1), 0).astype(np.float32))
    return PooledFeatures(labels_n=y, acts_nd=x.astype(np.float32),
                          recon_nd=(x if recon is None else recon).astype(np.float32), codes_nf=codes)


def test_m6_whitens_raw_and_recon_probes_but_not_the_code_probes() -> None:
    x, y = tiny_signal(seed=2)
    tr, te = stratified_split(y, 0.2, 42)
    probe = ProbeConfig(C=0.01, max_iter=2000)
    train, test = pooled(x[tr], y[tr]), pooled(x[te], y[te])
    plain = compute_m6_dataset(train, test, M6Config(probe=probe, code_probe=True))
    white = compute_m6_dataset(train, test, M6Config(probe=probe, code_probe=True, whiten="zca"))
    assert plain.acc_raw < 0.7 and plain.acc_recon < 0.7
    assert white.acc_raw > 0.9 and white.acc_recon > 0.9
    assert (white.acc_codes, white.sparse_auc) == (plain.acc_codes, plain.sparse_auc)  # codes: not whitened


def test_m6_whitening_is_fitted_on_the_training_split_only() -> None:
    x, y = overlapping_classes(seed=4)
    tr, te = stratified_split(y, 0.2, 42)
    shifted = x.copy()
    shifted[te] = 100.0 * x[te] + 50.0  # a test split on another scale must not move the fit
    probe = ProbeConfig(C=0.5, max_iter=2000)
    a = compute_m6_dataset(pooled(x[tr], y[tr]), pooled(x[te], y[te]), M6Config(probe=probe, whiten="pca"))
    w = whitening_of_rows("pca", x[tr])
    ref = fit_probe(whiten_rows(w, x[tr].astype(np.float32)), y[tr], probe)
    assert a.acc_raw == ref.accuracy(whiten_rows(w, x[te].astype(np.float32)), y[te])
    b = compute_m6_dataset(pooled(shifted[tr], y[tr]), pooled(shifted[te], y[te]),
                           M6Config(probe=probe, whiten="pca"))
    assert b.acc_raw == ref.accuracy(whiten_rows(w, shifted[te].astype(np.float32)), y[te])


@pytest.mark.parametrize(("cls", "source"),
                         [(M4Config, "metric_configs.m4"), (M7Config, "metric_configs.m7")])
def test_whiten_is_refused_on_probes_of_codes(cls: type, source: str) -> None:
    assert build_config(cls, {"whiten": "none"}, source=source).whiten == "none"
    with pytest.raises(ConfigError) as err:
        build_config(cls, {"whiten": "pca"}, source=source)
    msg = str(err.value)
    assert "\n" not in msg and "whiten" in msg and "SAE codes" in msg and "whiten: none" in msg


def test_whiten_is_refused_on_retrieval() -> None:
    with pytest.raises(ConfigError) as err:
        task_config("retrieval", {"whiten": "zca"})
    msg = str(err.value)
    assert "\n" not in msg and "tasks.retrieval" in msg and "fits no probe" in msg and "whiten: none" in msg


def test_whiten_refusal_is_one_error_line_on_the_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from visae.backbones.layout import TokenLayout
    from visae.cache.testing import write_synthetic_cache
    from visae.cli import app
    from visae.sae.checkpoint import save_sae
    from visae.sae.registry import make_sae

    rng = np.random.default_rng(0)
    cache = write_synthetic_cache(tmp_path / "c", rng.standard_normal((8, 16, 6)).astype(np.float32),
                                  np.arange(8) % 2, ["a", "b"], TokenLayout((), 4, 4, 14))
    save_sae(make_sae("relu", 6, d_sae=12), tmp_path / "sae")
    res = CliRunner().invoke(app, ["eval", "--sae", str(tmp_path / "sae"), "--cache", str(cache),
                                   "--metrics", "m4", "--set", "m4.whiten=zca",
                                   "--out", str(tmp_path / "ev")])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "whiten" in lines[0], res.output
