"""Uncertainty: seeded Poisson bootstrap over images, percentile intervals, intervals of a mean.

The bootstrap is the *Poisson* bootstrap (Hanley & MacGibbon 2006; Chamandy et al. 2012): replicate ``b``
gives image ``i`` the weight ``w[i, b] ~ Poisson(1)``, drawn from a counter-based hash of
``(seed, image index, b)``. Weights therefore do not depend on how the evaluation stream is grouped into
batches, on the device, or on the order images arrive in, so a metric can fold them into the sums it
already streams (one extra ``[F, B]`` or ``[B]`` accumulator) and never re-encode anything. Replicate
``b`` of a ratio-of-sums statistic is the same ratio over the weighted sums.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from pydantic import Field

from visae.config import FrozenConfig

_POISSON1_CDF = np.cumsum([math.exp(-1.0) / math.factorial(k) for k in range(20)])
"""P(X ≤ k) for X ~ Poisson(1), k = 0 … 19 (the tail beyond 19 is < 1e-18)."""

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


class BootstrapConfig(FrozenConfig):
    """Settings of the bootstrap intervals reported beside every headline metric."""

    n_boot: int = Field(200, ge=0, le=100_000,
                        description="bootstrap replicates over images (0: no intervals)")
    level: float = Field(0.95, gt=0.0, lt=1.0, description="two-sided coverage of the percentile interval")
    seed: int = Field(0, ge=0, description="seed of the replicate weights (independent of the SAE seed)")


@dataclass(frozen=True)
class Interval:
    """A two-sided interval, or the reason there is none."""

    low: float | None
    high: float | None
    level: float
    n: int
    """Replicates (bootstrap) or observations (interval of a mean) it rests on."""
    method: str
    note: str = ""


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays: a fast, well-mixed counter-based hash."""
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def poisson_weights(index_n: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Replicate weights ``[n, n_boot]`` (float32, Poisson(1)) of the images at positions ``index_n``.

    The weight of an image in a replicate depends only on ``(seed, index, replicate)``.
    """
    index = np.asarray(index_n, dtype=np.uint64).reshape(-1, 1)
    reps = np.arange(n_boot, dtype=np.uint64).reshape(1, -1)
    with np.errstate(over="ignore"):
        key = _splitmix64(np.array([seed], dtype=np.uint64) * np.uint64(0xD1B54A32D192ED03) & _MASK64)
        counter = (index * np.uint64(0x100000001B3) + reps + key) & _MASK64
    uniform = (_splitmix64(counter) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return np.searchsorted(_POISSON1_CDF, uniform, side="right").astype(np.float32)


def percentile_interval(replicates_b: np.ndarray, level: float, method: str = "bootstrap") -> Interval:
    """Percentile interval of bootstrap replicates; replicates that are NaN (undefined) are dropped."""
    reps = np.asarray(replicates_b, dtype=float)
    finite = reps[np.isfinite(reps)]
    if finite.size < 2:
        return Interval(None, None, level, int(finite.size), method,
                        note=f"{finite.size} defined replicate(s); an interval needs at least 2")
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(finite, [tail, 1.0 - tail])
    note = "" if finite.size == reps.size else f"{reps.size - finite.size} replicate(s) undefined, dropped"
    return Interval(float(low), float(high), level, int(finite.size), method, note)


def ratio_interval(num_b: np.ndarray, den_b: np.ndarray, level: float) -> Interval:
    """Interval of a ratio of weighted sums from per-replicate numerators and denominators."""
    num = np.asarray(num_b, dtype=float)
    den = np.asarray(den_b, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return percentile_interval(ratio, level)


def weighted_replicates(values_n: np.ndarray, index_n: np.ndarray, config: BootstrapConfig,
                        stat: str = "mean") -> np.ndarray:
    """Replicates ``[B]`` of the weighted mean of per-image values (``stat='mean'``) over images."""
    if stat != "mean":
        raise ValueError(f"unknown statistic {stat!r}; only 'mean' is supported")
    w = poisson_weights(index_n, config.n_boot, config.seed).astype(np.float64)
    total = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0,
                        (np.asarray(values_n, dtype=float) @ w) / np.maximum(total, 1e-300), np.nan)


def mean_interval(values: np.ndarray | list[float], level: float = 0.95) -> Interval:
    """Student-t interval of the mean of independent observations (e.g. per-SAE values of one backbone)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n < 2:
        return Interval(None, None, level, n, "t", note=f"n = {n}; an interval over SAEs needs at least 2")
    half = float(stats.t.ppf(0.5 + level / 2.0, df=n - 1) * x.std(ddof=1) / math.sqrt(n))
    centre = float(x.mean())
    return Interval(centre - half, centre + half, level, n, "t")


def weighted_auc_replicates(positive_n: np.ndarray, score_n: np.ndarray, w_nb: np.ndarray) -> np.ndarray:
    """ROC AUC of ``score_n`` for the 0/1 target ``positive_n`` under each replicate's weights ``[n, B]``
    (weighted Mann–Whitney; ties count one half): ``[B]``, NaN where a replicate lacks one class."""
    order = np.argsort(score_n, kind="stable")
    scores = np.asarray(score_n)[order]
    pos = np.asarray(positive_n, dtype=bool)[order]
    w = np.asarray(w_nb, dtype=np.float64)[order]
    starts = np.flatnonzero(np.r_[True, scores[1:] != scores[:-1]])
    pos_gb = np.add.reduceat(w * pos[:, None], starts, axis=0)
    neg_gb = np.add.reduceat(w * ~pos[:, None], starts, axis=0)
    below_gb = np.cumsum(neg_gb, axis=0) - neg_gb
    num_b = (pos_gb * (below_gb + 0.5 * neg_gb)).sum(axis=0)
    den_b = pos_gb.sum(axis=0) * neg_gb.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den_b > 0, num_b / np.where(den_b > 0, den_b, 1.0), np.nan)


def mean_ovr_auc_replicates(labels_n: np.ndarray, scores_nk: np.ndarray, classes: np.ndarray,
                            index_n: np.ndarray, config: BootstrapConfig) -> np.ndarray:
    """Replicates ``[B]`` of the mean one-vs-rest AUC over classes (column k scores ``classes[k]``)."""
    w_nb = poisson_weights(index_n, config.n_boot, config.seed)
    per_class = np.stack([weighted_auc_replicates(np.asarray(labels_n) == c, scores_nk[:, k], w_nb)
                          for k, c in enumerate(classes)])
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(per_class, axis=0)
