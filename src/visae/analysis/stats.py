"""Small statistics shared by the analyses: per-backbone means (with intervals over SAEs) and a Spearman
test that refuses tiny n and gives the exact permutation p-value beside scipy's asymptotic one."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache
from itertools import permutations

import numpy as np
import pandas as pd
from scipy import stats

from visae.uncertainty import mean_interval

MIN_SPEARMAN_N = 3
"""Below three paired observations a rank correlation is meaningless (n = 2 gives ρ = ±1, p = 1 … or NaN)."""


@dataclass(frozen=True)
class Correlation:
    """A Spearman correlation, or the reason there is none."""

    rho: float | None
    p: float | None
    """Two-sided p-value as ``scipy.stats.spearmanr`` gives it (asymptotic t approximation)."""
    n: int
    note: str = ""
    p_exact: float | None = None
    """Two-sided exact permutation p-value over all n! orderings (n ≤ MAX_EXACT_N; None beyond)."""


def spearman(x: np.ndarray | list[float], y: np.ndarray | list[float]) -> Correlation:
    """Spearman ρ and two-sided p exactly as ``scipy.stats.spearmanr`` gives them, over pairs where both
    values are finite; None with a reason when n < 3 or either side is constant."""
    x_n = np.asarray(x, dtype=float)
    y_n = np.asarray(y, dtype=float)
    ok = np.isfinite(x_n) & np.isfinite(y_n)
    x_n, y_n = x_n[ok], y_n[ok]
    n = len(x_n)
    if n < MIN_SPEARMAN_N:
        return Correlation(None, None, n,
                           f"n = {n} paired value(s); Spearman needs at least {MIN_SPEARMAN_N}")
    if np.ptp(x_n) == 0 or np.ptp(y_n) == 0:
        return Correlation(None, None, n, "one side is constant across backbones; ρ is undefined")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.spearmanr(x_n, y_n)
    rho, p = float(res.statistic), float(res.pvalue)
    if not math.isfinite(rho):
        return Correlation(None, None, n, "scipy.stats.spearmanr returned NaN")
    return Correlation(rho, p if math.isfinite(p) else None, n, p_exact=exact_spearman_p(x_n, y_n))


MAX_EXACT_N = 9
"""Largest n whose n! orderings are enumerated for the exact p-value (9! = 362,880)."""


@lru_cache(maxsize=MAX_EXACT_N + 1)
def _all_orderings(n: int) -> np.ndarray:
    return np.array(list(permutations(range(n))), dtype=np.int8)


def exact_spearman_p(x: np.ndarray, y: np.ndarray) -> float | None:
    """Two-sided permutation p-value of Spearman's ρ: the share of the n! pairings of x with a
    reordering of y whose |ρ| is at least the observed one (ties: average ranks). None when n > 9."""
    n = len(x)
    if n > MAX_EXACT_N or n < MIN_SPEARMAN_N:
        return None
    rank_x = stats.rankdata(x) - (n + 1) / 2.0
    rank_y = stats.rankdata(y) - (n + 1) / 2.0
    norm = math.sqrt(float(rank_x @ rank_x) * float(rank_y @ rank_y))
    if norm == 0:
        return None
    observed = abs(float(rank_x @ rank_y)) / norm
    rho_all = np.abs(rank_y[_all_orderings(n)] @ rank_x) / norm
    return float(np.mean(rho_all >= observed - 1e-12))


def backbone_means(df: pd.DataFrame, metric: str) -> pd.Series:
    """Mean value of ``metric`` per backbone over every row (configurations) that has a finite value."""
    rows = df[(df["metric"] == metric) & np.isfinite(df["value"].to_numpy(dtype=float))]
    return rows.groupby("backbone", sort=True)["value"].mean()


def backbone_intervals(df: pd.DataFrame, metric: str, level: float = 0.95) -> pd.DataFrame:
    """Per-backbone mean of ``metric`` over its SAEs with a Student-t interval over those SAEs:
    columns ``backbone, mean, low, high, n``."""
    rows = df[(df["metric"] == metric) & np.isfinite(df["value"].to_numpy(dtype=float))]
    out = []
    for backbone, group in rows.groupby("backbone", sort=True):
        values = group["value"].to_numpy(dtype=float)
        interval = mean_interval(values, level)
        out.append({"backbone": backbone, "mean": float(values.mean()), "low": interval.low,
                    "high": interval.high, "n": interval.n})
    return pd.DataFrame(out, columns=["backbone", "mean", "low", "high", "n"])


def none_if_nan(x: float | None) -> float | None:
    """NaN → None (for JSON and for 'no number' semantics)."""
    return None if x is None or not math.isfinite(x) else float(x)
