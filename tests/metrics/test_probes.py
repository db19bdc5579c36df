"""Probe engine: splits, ANOVA-F ranking, AUC/F1 against scikit-learn, and agreement of the two engines."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.feature_selection import f_classif
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score

from visae.errors import DataError
from visae.metrics.probes import (
    ProbeConfig,
    binary_auc,
    binary_f1,
    f_one_vs_rest,
    f_scores,
    fit_probe,
    ovr_auc,
    rank_features,
    stratified_split,
)


def blobs(n: int = 900, d: int = 24, k: int = 6, sep: float = 0.35,
          seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    x = (rng.normal(size=(k, d))[y] * sep + rng.normal(size=(n, d))) * rng.uniform(0.5, 5, d) + 3
    return x.astype(np.float32), y


def test_stratified_split_is_sklearns_and_keeps_singletons_in_train() -> None:
    from sklearn.model_selection import train_test_split

    y = np.repeat(np.arange(5), 20)
    tr, te = stratified_split(y)
    ref_tr, ref_te = train_test_split(np.arange(100), test_size=20, random_state=42, stratify=y)
    assert set(tr) == set(ref_tr) and set(te) == set(ref_te)
    assert np.all(np.bincount(y[te]) == 4)
    y2 = np.concatenate([y, [7]])
    tr2, te2 = stratified_split(y2)
    assert 100 in tr2 and 100 not in te2
    with pytest.raises(DataError):
        stratified_split(np.array([0, 1]))


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_f_scores_match_f_classif_and_rank_constant_last_indicator_first(sparse: bool) -> None:
    x, y = blobs(300, 10)
    x = np.maximum(x, 0.0)  # ReLU-like codes: many stored zeros become implicit in the sparse form
    x[:, 3] = 1.0  # constant: F is NaN → last
    x[:, 5] = 0.0  # never active: also last
    x[:, 7] = (y == 2).astype(np.float32)  # binary target below: perfect indicator, F = +inf → first
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = f_classif(x.astype(np.float64), y)[0]
    xs = sp.csr_matrix(x) if sparse else x
    got = f_scores(xs, y)
    ok = np.isfinite(ref)
    assert np.array_equal(np.isfinite(got), ok)
    np.testing.assert_allclose(got[ok], ref[ok], rtol=1e-9)
    assert list(rank_features(xs, y)[-2:]) == [3, 5]
    assert rank_features(xs, (y == 2).astype(int))[0] == 7
    expected = np.argsort(-np.where(np.isnan(ref), -np.inf, ref), kind="stable")
    assert np.array_equal(rank_features(xs, y), expected)


@pytest.mark.parametrize("sparse", [False, True])
def test_f_one_vs_rest_equals_binary_f_classif(sparse: bool) -> None:
    x, y = blobs(400, 12)
    x = np.maximum(x - 4, 0)
    x[:, 0] = 0.0
    xs = sp.csr_matrix(x) if sparse else x
    got = f_one_vs_rest(xs, y, np.arange(6))
    for c in range(6):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = f_classif(xs.astype(np.float64), y == c)[0]
        ok = np.isfinite(ref)
        np.testing.assert_allclose(got[c][ok], ref[ok], rtol=1e-6)
        assert got[c][0] == -np.inf


def test_auc_and_f1_match_sklearn() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 200)
    proba = rng.dirichlet(np.ones(4), 200)
    proba[:, 1] = np.round(proba[:, 1], 1)  # ties
    proba /= proba.sum(axis=1, keepdims=True)
    assert np.mean(ovr_auc(y, proba, np.arange(4))) == pytest.approx(
        roc_auc_score(y, proba, multi_class="ovr", average="macro"), abs=1e-12)
    yb = y == 1
    assert binary_auc(yb, proba[:, 1]) == pytest.approx(roc_auc_score(yb, proba[:, 1]), abs=1e-12)
    pred = proba[:, 1] > 0.25
    assert binary_f1(yb, pred) == pytest.approx(f1_score(yb, pred))
    assert binary_f1(np.zeros(5, bool), np.zeros(5, bool)) == 0.0


def test_sklearn_engine_is_standardized_logistic_regression() -> None:
    x, y = blobs()
    p = fit_probe(x, y, ProbeConfig(max_iter=1000, standardize=True))
    xs = (x - x.mean(0)) / x.std(0)
    ref = LogisticRegression(C=1.0, max_iter=1000).fit(xs, y)
    assert np.mean(p.predict(x) == ref.predict(xs)) > 0.99


@pytest.mark.parametrize("n_classes", [2, 6])
def test_torch_and_sklearn_engines_agree(n_classes: int) -> None:
    x, y = blobs(900, 24, n_classes)
    tr, te = stratified_split(y)
    res = {}
    for engine in ("sklearn", "torch"):
        p = fit_probe(x[tr], y[tr], ProbeConfig(engine=engine, max_iter=500, device="cpu", standardize=True))
        proba = p.predict_proba(x[te])
        auc = roc_auc_score(y[te],
                            proba[:, 1]) if n_classes == 2 else roc_auc_score(y[te], proba, multi_class="ovr")
        res[engine] = (p.accuracy(x[te], y[te]), auc, p.coef_kd)
        assert p.converged
    assert abs(res["sklearn"][0] - res["torch"][0]) <= 0.01
    assert abs(res["sklearn"][1] - res["torch"][1]) <= 0.01
    # the same objective: the weights agree closely, not only the scores
    scale = np.abs(res["sklearn"][2]).max()
    assert np.abs(res["sklearn"][2] - res["torch"][2]).max() < 0.02 * scale


def test_default_probe_is_plain_logistic_regression() -> None:
    x, y = blobs(300, 8)
    p = fit_probe(x, y, ProbeConfig(max_iter=1000))
    ref = LogisticRegression(C=1.0, max_iter=1000).fit(x, y)
    np.testing.assert_allclose(p.coef_kd, ref.coef_, rtol=1e-6)


def test_fit_probe_rejects_bad_input() -> None:
    x, y = blobs(50, 3)
    with pytest.raises(DataError):
        fit_probe(x, np.zeros(50, int))
    x[0, 0] = np.nan
    with pytest.raises(DataError):
        fit_probe(x, y)


@pytest.mark.parametrize("engine", ["sklearn", "torch"])
def test_warm_started_probe_reaches_the_cold_minimiser(engine: str) -> None:
    x, y = blobs(600, 20, 5)
    cfg = ProbeConfig(engine=engine, max_iter=1000, tol=1e-6, device="cpu")
    rng = np.random.default_rng(1)
    cols = rng.permutation(20)[:8]
    small = fit_probe(x[:, cols], y, cfg)
    cold = fit_probe(x, y, cfg)
    warm = fit_probe(x, y, cfg, init=small, init_cols=cols)  # the small probe's inputs sit at columns `cols`
    near = fit_probe(x + 0.01 * rng.normal(size=x.shape).astype(np.float32), y, cfg, init=cold)
    scale = np.abs(cold.coef_kd).max()
    assert np.abs(warm.coef_kd - cold.coef_kd).max() < 5e-2 * scale  # equal up to the solvers' tolerance
    assert np.mean(warm.predict(x) == cold.predict(x)) > 0.995
    assert near.n_iter < cold.n_iter  # a start near the minimiser needs fewer iterations


def test_solver_threads_rule_and_restores_torch_threads() -> None:
    import torch

    from visae.metrics.probes import ONE_THREAD_MACS, solver_thread_count, solver_threads

    assert solver_thread_count(ONE_THREAD_MACS / 2, None) == 1  # small probe: one thread
    assert solver_thread_count(ONE_THREAD_MACS * 2, None) is None  # large: the libraries' default
    assert solver_thread_count(10.0, 3) == 3  # an explicit setting wins
    before = torch.get_num_threads()
    with solver_threads(10.0):
        assert torch.get_num_threads() == 1
        from threadpoolctl import threadpool_info

        assert all(info["num_threads"] == 1 for info in threadpool_info())
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("engine", ["sklearn", "torch"])
def test_thread_count_does_not_change_the_probe(engine: str) -> None:
    x, y = blobs(400, 16, 4)
    one = fit_probe(x, y, ProbeConfig(engine=engine, threads=1, device="cpu"))
    many = fit_probe(x, y, ProbeConfig(engine=engine, threads=2, device="cpu"))
    auto = fit_probe(x, y, ProbeConfig(engine=engine, device="cpu"))
    scale = np.abs(one.coef_kd).max()
    for other in (many, auto):
        assert np.abs(other.coef_kd - one.coef_kd).max() <= 1e-5 * scale  # summation order only
        assert np.array_equal(other.predict(x), one.predict(x))


def test_auto_engine_is_sklearn_for_few_classes_and_torch_for_many() -> None:
    from visae.metrics.probes import TORCH_MIN_CLASSES, probe_engine

    auto = ProbeConfig(device="cpu")
    assert auto.engine == "auto"
    assert probe_engine(auto, 2) == "sklearn" and probe_engine(auto, TORCH_MIN_CLASSES - 1) == "sklearn"
    assert probe_engine(auto, TORCH_MIN_CLASSES) == "torch"
    assert probe_engine(ProbeConfig(engine="sklearn"), 1000) == "sklearn"
    x, y = blobs(300, 8, 5)
    few = fit_probe(x, y, auto)
    np.testing.assert_array_equal(few.coef_kd, fit_probe(x, y, ProbeConfig(engine="sklearn")).coef_kd)
    x, y = blobs(10 * TORCH_MIN_CLASSES, 6, TORCH_MIN_CLASSES, sep=2.0)
    many = fit_probe(x, y, auto)
    np.testing.assert_array_equal(many.coef_kd,
                                  fit_probe(x, y, ProbeConfig(engine="torch", device="cpu")).coef_kd)
    ref = fit_probe(x, y, ProbeConfig(engine="sklearn"))
    assert abs(many.accuracy(x, y) - ref.accuracy(x, y)) <= 0.01  # the same objective, either solver


@pytest.mark.parametrize("chunk_values", [1, 37, 10**9], ids=["row-by-row", "chunks", "one-chunk"])
def test_row_subset_gives_the_statistics_and_columns_of_the_copied_rows(chunk_values: int,
                                                                         monkeypatch) -> None:
    import visae.metrics.probes as probes
    from visae.metrics.probes import anova
    from visae.metrics.probes import rows as probe_rows

    monkeypatch.setattr(probe_rows, "CHUNK_VALUES", chunk_values)
    monkeypatch.setattr(anova, "CLASS_SUMS_BYTES", 8 * 12 * 2)  # two classes per block: several passes
    x, y = blobs(500, 12)
    x = np.maximum(x - 4, 0)
    x[:, 1] = 0.0
    codes = sp.csr_matrix(x)
    rows = np.sort(np.random.default_rng(3).choice(500, 310, replace=False))
    view, copied = probes.RowSubset(codes, rows), codes[rows]
    assert view.shape == copied.shape
    np.testing.assert_allclose(f_scores(view, y[rows]), f_scores(copied, y[rows]), rtol=1e-12)
    np.testing.assert_allclose(f_one_vs_rest(view, y[rows], np.arange(6)),
                               f_one_vs_rest(copied, y[rows], np.arange(6)), rtol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = f_classif(x[rows].astype(np.float64), y[rows])[0]  # the reference library, on dense rows
    ok = np.isfinite(ref)
    np.testing.assert_allclose(f_scores(view, y[rows])[ok], ref[ok], rtol=1e-9)
    cols = np.array([7, 0, 11, 3])
    assert np.array_equal(probes.take_columns(view, cols), x[rows][:, cols])


def test_non_finite_probe_inputs_name_the_rows_and_a_command_that_exists() -> None:
    from typer.testing import CliRunner

    from visae.cli import app

    x, y = blobs(60, 4)
    x[[3, 17], 1] = np.nan
    x[17, 2] = np.inf
    with pytest.raises(DataError, match=r"2 of 60 probe input rows hold NaN or Inf") as err:
        fit_probe(x, y)
    assert "'visae cache' command that built it with --verify" in str(err.value)
    help_text = CliRunner().invoke(app, ["cache", "--help"], env={"COLUMNS": "200"}).output
    assert "--verify" in help_text  # the advice names an option the CLI has
