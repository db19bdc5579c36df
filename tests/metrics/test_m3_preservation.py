"""M3: planted answers (identical reconstruction → exactly 1) and the metric inside ``visae.evaluate``."""

from __future__ import annotations

import numpy as np
import pytest

from visae.backbones.layout import TokenLayout
from visae.cache.testing import write_synthetic_cache
from visae.metrics.m3_preservation import M3Config, compute_m3
from visae.metrics.probes import ProbeConfig, fit_probe, stratified_split
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


def test_accuracies_are_the_raw_probes_on_each_input() -> None:
    x, y = labelled()
    rng = np.random.default_rng(3)
    recon = x + rng.normal(size=x.shape).astype(np.float32) * 2.0
    r = compute_m3(x, recon, y, M3Config(probe=ProbeConfig(max_iter=1000)))
    tr, te = stratified_split(y)
    probe = fit_probe(x[tr], y[tr], ProbeConfig(max_iter=1000))
    assert r.acc_raw == pytest.approx(np.mean(probe.predict(x[te]) == y[te]))
    assert r.acc_recon == pytest.approx(np.mean(probe.predict(recon[te]) == y[te]))
    assert r.value == pytest.approx(r.acc_recon / r.acc_raw) and r.value < 1


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
