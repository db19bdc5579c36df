"""Exact permutation p-values of Spearman's ρ against enumeration and against scipy's permutation test."""

from __future__ import annotations

from itertools import permutations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from visae.analysis.stats import backbone_intervals, exact_spearman_p, spearman


def _enumerated_p(x: np.ndarray, y: np.ndarray) -> float:
    observed = abs(stats.spearmanr(x, y).statistic)
    rhos = [abs(stats.spearmanr(x, y[list(order)]).statistic) for order in permutations(range(len(y)))]
    return float(np.mean(np.array(rhos) >= observed - 1e-12))


@pytest.mark.parametrize("seed", range(4))
def test_exact_p_equals_enumeration_at_n5(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=5), rng.normal(size=5)
    assert exact_spearman_p(x, y) == pytest.approx(_enumerated_p(x, y))


def test_exact_p_with_ties_equals_scipy_permutation_test() -> None:
    x = np.array([1.0, 2.0, 2.0, 3.0, 5.0, 4.0, 7.0])
    y = np.array([0.3, 0.1, 0.4, 0.4, 0.9, 0.6, 0.8])
    # permuting one sample alone gives the n! = 5040 pairings, enumerated exactly by scipy; two-sided as
    # P(|ρ| ≥ |ρ_obs|) (scipy's own "two-sided" doubles the smaller tail instead)
    ref = stats.permutation_test((x,), lambda a: abs(stats.spearmanr(a, y).statistic),
                                 permutation_type="pairings", alternative="greater", vectorized=False)
    assert exact_spearman_p(x, y) == pytest.approx(ref.pvalue)


def test_perfect_order_at_n5_has_p_one_in_sixty() -> None:
    # ρ = ±1 only for the identity and the reversal: 2 of 120 orderings
    corr = spearman([1, 2, 3, 4, 5], [10, 20, 30, 40, 50])
    assert corr.rho == pytest.approx(1.0)
    assert corr.p_exact == pytest.approx(2 / 120)
    assert corr.p is not None and corr.p < corr.p_exact  # the asymptotic p is far too small at n = 5


def test_no_exact_p_beyond_nine() -> None:
    assert exact_spearman_p(np.arange(10.0), np.arange(10.0)) is None


def test_backbone_intervals_per_backbone() -> None:
    df = pd.DataFrame({"backbone": ["a"] * 3 + ["b"], "metric": "m1", "value": [0.1, 0.2, 0.3, 0.5]})
    out = backbone_intervals(df, "m1").set_index("backbone")
    assert out.loc["a", "mean"] == pytest.approx(0.2)
    ref = stats.t.interval(0.95, df=2, loc=0.2, scale=stats.sem([0.1, 0.2, 0.3]))
    assert (out.loc["a", "low"], out.loc["a", "high"]) == pytest.approx(ref)
    assert out.loc["b", "n"] == 1 and pd.isna(out.loc["b", "low"])
