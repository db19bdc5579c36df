"""Small statistics shared by the analyses: per-backbone means and a Spearman test that refuses tiny n."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

MIN_SPEARMAN_N = 3
"""Below three paired observations a rank correlation is meaningless (n = 2 gives ρ = ±1, p = 1 … or NaN)."""


@dataclass(frozen=True)
class Correlation:
    """A Spearman correlation, or the reason there is none."""

    rho: float | None
    p: float | None
    n: int
    note: str = ""


def spearman(x: np.ndarray | list[float], y: np.ndarray | list[float]) -> Correlation:
    """Spearman ρ and two-sided p exactly as ``scipy.stats.spearmanr`` gives them, over pairs where both
    values are finite; None with a reason when n < 3 or either side is constant."""
    x_n = np.asarray(x, dtype=float)
    y_n = np.asarray(y, dtype=float)
    ok = np.isfinite(x_n) & np.isfinite(y_n)
    x_n, y_n = x_n[ok], y_n[ok]
    n = len(x_n)
    if n < MIN_SPEARMAN_N:
        return Correlation(None, None, n, f"n = {n} paired value(s); Spearman needs at least {MIN_SPEARMAN_N}")
    if np.ptp(x_n) == 0 or np.ptp(y_n) == 0:
        return Correlation(None, None, n, "one side is constant across backbones; ρ is undefined")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.spearmanr(x_n, y_n)
    rho, p = float(res.statistic), float(res.pvalue)
    if not math.isfinite(rho):
        return Correlation(None, None, n, "scipy.stats.spearmanr returned NaN")
    return Correlation(rho, p if math.isfinite(p) else None, n)


def backbone_means(df: pd.DataFrame, metric: str) -> pd.Series:
    """Mean value of ``metric`` per backbone over every row (configurations) that has a finite value."""
    rows = df[(df["metric"] == metric) & np.isfinite(df["value"].to_numpy(dtype=float))]
    return rows.groupby("backbone", sort=True)["value"].mean()


def none_if_nan(x: float | None) -> float | None:
    """NaN → None (for JSON and for 'no number' semantics)."""
    return None if x is None or not math.isfinite(x) else float(x)
