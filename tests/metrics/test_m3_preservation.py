"""M3: planted answers (identical reconstruction → exactly 1) and the metric inside ``visae.evaluate``."""

from __future__ import annotations

import numpy as np
import pytest

from visae.backbones.layout import TokenLayout
from visae.cache.testing import write_synthetic_cache
from visae.metrics.m3_preservation import compute_m3
from visae.sae.testing import identity_sae


def labelled(n: int = 300, d: int = 16, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    return (rng.normal(size=(k, d))[y] * 0.8 + rng.normal(size=(n, d))).astype(np.float32), y


def test_identical_reconstruction_gives_exactly_one() -> None:
    x, y = labelled()
    r = compute_m3(x, x.copy(), y)
    assert r.value == 1.0 and r.acc_raw == r.acc_recon and r.acc_raw > 0.5
    assert r.n_train + r.n_test == len(y) and r.n_test == 60


def test_accuracies_match_scikit_learn_directly() -> None:
    """Reference: the paper's protocol written with scikit-learn alone (80/20 stratified split, seed 42;
    LogisticRegression lbfgs, C = 1, max_iter = 1000, fitted on raw features, applied to both inputs)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    x, y = labelled()
    rng = np.random.default_rng(3)
    recon = x + rng.normal(size=x.shape).astype(np.float32) * 2.0
    r = compute_m3(x, recon, y)
    train, test = train_test_split(np.arange(len(y)), test_size=0.2, random_state=42, stratify=y)
    train, test = np.sort(train), np.sort(test)
    clf = LogisticRegression(C=1.0, solver="lbfgs", max_iter=1000).fit(x[train], y[train])
    acc_raw, acc_recon = clf.score(x[test], y[test]), clf.score(recon[test], y[test])
    assert (r.n_train, r.n_test, r.n_classes) == (240, 60, 4)
    assert r.acc_raw == pytest.approx(acc_raw) and r.acc_recon == pytest.approx(acc_recon)
    assert r.value == pytest.approx(acc_recon / acc_raw) and acc_recon < acc_raw


def test_constant_reconstruction_scores_one_class_share() -> None:
    """A reconstruction that is the same vector for every image gets one prediction for all: with four
    balanced classes, 15 of the 60 held-out images are right whichever class it is."""
    x, y = labelled()
    r = compute_m3(x, np.zeros_like(x), y)
    assert r.acc_recon == pytest.approx(0.25) and r.value == pytest.approx(0.25 / r.acc_raw)


def test_m3_through_evaluate_with_an_exact_sae(tmp_path) -> None:
    from visae.metrics.evaluate import evaluate

    layout = TokenLayout(("cls",), 2, 2, 14)
    rng = np.random.default_rng(0)
    y = np.arange(120) % 3
    acts = rng.normal(size=(120, 4, 8)).astype(np.float32) + 1.5 * np.eye(8, dtype=np.float32)[y][:, None, :]
    cache = write_synthetic_cache(tmp_path / "c", acts, y, ["a", "b", "c"], layout)
    res = evaluate(identity_sae(8), cache, metrics=["m3"], out_dir=tmp_path / "out", device="cpu")
    assert res["m3"].value == 1.0
    assert (tmp_path / "out" / "m3.json").is_file()


def test_whiten_before_probe_is_fitted_on_the_training_split() -> None:
    from visae.metrics.m3_preservation import M3Config, compute_m3, whiten_features
    from visae.metrics.probes import stratified_split

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 60)
    acts = rng.normal(size=(180, 6)) @ rng.normal(size=(6, 6)) + labels[:, None]
    recon = acts + 0.1 * rng.normal(size=acts.shape)
    train, _ = stratified_split(labels, 0.2, 42)
    for kind in ("pca", "zca"):
        wa, wr = whiten_features(kind, acts, recon, train)
        same_a, same_r = whiten_features(kind, acts, acts, train)  # one map for raw and recon
        np.testing.assert_array_equal(same_a, same_r)
        np.testing.assert_array_equal(same_a, wa)
        assert not np.allclose(wr, wa)
        np.testing.assert_allclose(np.cov(wa[train], rowvar=False), np.eye(6), atol=1e-9)
        assert not np.allclose(np.cov(wa, rowvar=False), np.eye(6), atol=1e-3)  # only the train rows
        r = compute_m3(acts, recon, labels, M3Config(whiten=kind))
        assert r.value is not None and 0.5 < r.value <= 1.2
