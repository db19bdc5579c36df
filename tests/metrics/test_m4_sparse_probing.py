"""M4: planted indicator features give AUC 1 at k = 1; the curve, budgets and the metric wrapper."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import roc_auc_score

from visae.metrics.m4_sparse_probing import M4Config, compute_m4, sparse_probe_curve
from visae.metrics.probes import ProbeConfig, fit_probe, rank_features, stratified_split, take_columns


def noisy_codes(n: int, f: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (np.maximum(rng.normal(size=(n, f)), 0) * (rng.random((n, f)) < 0.1)).astype(np.float32)


def test_indicator_feature_gives_auc_one_at_k1() -> None:
    y = np.arange(400) % 2
    codes = noisy_codes(400, 200)
    codes[:, 57] = y  # feature 57 = indicator of class 1
    r = compute_m4(sp.csr_matrix(codes), y, M4Config(ks=[1, 4]))
    assert r.curve["1"] == 1.0


@pytest.mark.parametrize("engine", ["sklearn", "torch"])
def test_per_class_ranking_with_an_indicator_per_class_gives_auc_one(engine: str) -> None:
    y = np.arange(300) % 5
    codes = noisy_codes(300, 100)
    codes[:, 10:15] = np.eye(5)[y]
    cfg = M4Config(ks=[1], ranking="per_class", probe=ProbeConfig(engine=engine, max_iter=500, device="cpu"))
    r = compute_m4(sp.csr_matrix(codes), y, cfg)
    assert r.curve["1"] == 1.0


def test_global_curve_is_macro_ovr_auc_of_the_top_k_probe_and_skips_large_k() -> None:
    y = np.arange(300) % 4
    codes = noisy_codes(300, 40)
    codes[:, 5] += (y == 2) * 0.7
    r = compute_m4(sp.csr_matrix(codes), y, M4Config(ks=[1, 2, 8, 64, 128], warm_start=False))
    assert list(r.curve) == ["1", "2", "8", "40"]  # 64 and 128 exceed 40 features; headline at k = 40
    assert r.headline_k == 40 and r.value == r.curve["40"] and "40" in r.note
    tr, te = stratified_split(y)
    cols = rank_features(codes[tr], y[tr])[:8]
    p = fit_probe(take_columns(codes[tr], cols), y[tr], ProbeConfig(max_iter=500))
    ref = roc_auc_score(y[te], p.predict_proba(take_columns(codes[te], cols)), multi_class="ovr",
                        average="macro")
    assert r.curve["8"] == pytest.approx(ref, abs=1e-12)


def test_sparse_probe_curve_dense_and_sparse_inputs_agree() -> None:
    y = np.arange(200) % 3
    codes = noisy_codes(200, 30)
    codes[:, 2] += (y == 1)
    a = sparse_probe_curve(codes[:150], y[:150], codes[150:], y[150:], [1, 4], ProbeConfig(max_iter=500))
    b = sparse_probe_curve(sp.csr_matrix(codes[:150]), y[:150], sp.csr_matrix(codes[150:]), y[150:], [1, 4],
                           ProbeConfig(max_iter=500))
    assert a == pytest.approx(b)


@pytest.mark.parametrize("ranking", ["global", "per_class"])
@pytest.mark.parametrize("engine", ["sklearn", "torch"])
def test_warm_started_curve_equals_cold_probes(engine: str, ranking: str) -> None:
    rng = np.random.default_rng(5)
    y = np.arange(600) % 6
    codes = noisy_codes(600, 300, seed=5)
    codes[:, :40] += 0.25 * rng.normal(size=(6, 40))[y].clip(0)  # weak, overlapping class signal
    probe = ProbeConfig(engine=engine, max_iter=500, device="cpu")
    tr, te = stratified_split(y)
    ks = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    warm = sparse_probe_curve(codes[tr], y[tr], codes[te], y[te], ks, probe, ranking, warm_start=True)
    cold = sparse_probe_curve(codes[tr], y[tr], codes[te], y[te], ks, probe, ranking, warm_start=False)
    assert list(warm) == ks
    for k in ks:
        assert warm[k] == pytest.approx(cold[k], abs=0.005), k
    assert 0.6 < cold[256] < 1.0


@pytest.mark.parametrize("ranking", ["global", "per_class"])
def test_sparse_codes_are_read_in_row_chunks_with_the_dense_result(ranking: str, monkeypatch) -> None:
    from visae.metrics.probes import rows as probe_rows

    monkeypatch.setattr(probe_rows, "CHUNK_VALUES", 50)  # many chunks per split
    y = np.arange(300) % 4
    codes = noisy_codes(300, 40, seed=2)
    codes[:, 5] += 0.8 * (y == 2)
    config = M4Config(ks=[1, 2, 8, 64], headline_k=8, ranking=ranking)
    dense = compute_m4(codes, y, config)
    sparse = compute_m4(sp.csr_matrix(codes), y, config)
    assert list(sparse.curve) == ["1", "2", "8"]  # 64 > F is skipped
    assert sparse.curve == pytest.approx(dense.curve, abs=1e-9)
    assert sparse.value == pytest.approx(dense.value, abs=1e-9)
