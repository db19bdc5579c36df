"""The fitted probe (:class:`LinearProbe`) and :func:`fit_probe`, which standardizes, warm-starts and hands
the solve to an engine."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from visae.errors import DataError
from visae.metrics.probes.config import ProbeConfig, probe_engine
from visae.metrics.probes.engines import fit_sklearn, fit_torch
from visae.metrics.probes.rows import ArrayLike
from visae.metrics.probes.standardize import Standardizer
from visae.metrics.probes.threads import solver_threads


@dataclass
class LinearProbe:
    """A fitted probe: standardization + linear scores. Binary probes hold one weight row (class 1 vs 0)."""

    classes: np.ndarray
    """Label values, in score-column order."""
    coef_kd: np.ndarray
    """Weights: ``[K, D]`` for K > 2 classes, ``[1, D]`` for a binary probe."""
    intercept_k: np.ndarray
    scaler: Standardizer
    n_iter: int
    converged: bool

    def decision_function(self, x_nd: np.ndarray) -> np.ndarray:
        """Linear scores (``[N]`` binary, ``[N, K]`` multinomial), after standardization."""
        z = self.scaler.apply(x_nd).astype(np.float64) @ self.coef_kd.T + self.intercept_k
        return z[:, 0] if len(self.classes) == 2 else z

    def predict_proba(self, x_nd: np.ndarray) -> np.ndarray:
        """Class probabilities ``[N, K]`` in ``classes`` order."""
        z = self.decision_function(x_nd)
        if len(self.classes) == 2:
            p1 = 1.0 / (1.0 + np.exp(-z))
            return np.stack([1 - p1, p1], axis=1)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, x_nd: np.ndarray) -> np.ndarray:
        """Predicted labels."""
        z = self.decision_function(x_nd)
        if len(self.classes) == 2:
            return self.classes[(z > 0).astype(int)]
        return self.classes[np.argmax(z, axis=1)]

    def accuracy(self, x_nd: np.ndarray, y_n: np.ndarray) -> float:
        """Fraction of correct predictions."""
        return float(np.mean(self.predict(x_nd) == np.asarray(y_n)))


def _warm_coef(init: LinearProbe | None, classes: np.ndarray, d: int,
               init_cols: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """``init``'s weights placed at columns ``init_cols`` (default: the first ones) of ``d``, zeros
    elsewhere."""
    if init is None or not np.array_equal(init.classes, classes):
        return None
    d_init = init.coef_kd.shape[1]
    cols = np.arange(d_init) if init_cols is None else np.asarray(init_cols)
    if len(cols) != d_init or (d_init and (cols.min() < 0 or cols.max() >= d)):
        return None
    coef = np.zeros((init.coef_kd.shape[0], d), dtype=np.float64)
    coef[:, cols] = init.coef_kd
    return coef, np.asarray(init.intercept_k, dtype=np.float64).copy()


def fit_probe(x_nd: ArrayLike, y_n: np.ndarray, config: ProbeConfig | None = None,
              init: LinearProbe | None = None, init_cols: np.ndarray | None = None) -> LinearProbe:
    """Fit the paper's logistic probe on ``x_nd`` (dense) with labels ``y_n`` using ``config.engine``.

    ``init``: a probe fitted on related inputs — the previous budget of a nested top-k curve, or the raw
    features when fitting reconstructions — whose weights start the solver; its inputs are the columns
    ``init_cols`` of ``x_nd`` (default: the first ones), the other weights start at zero. The objective is
    strictly convex, so the minimiser is the same; only the number of iterations changes.
    """
    config = config or ProbeConfig()
    x_nd = np.asarray(x_nd.toarray() if sp.issparse(x_nd) else x_nd, dtype=np.float32)
    y_n = np.asarray(y_n)
    classes = np.unique(y_n)
    if len(classes) < 2:
        raise DataError(f"fit_probe: the training labels hold {len(classes)} class; a probe needs at "
                        "least two")
    if not np.all(np.isfinite(x_nd)):
        bad = int((~np.isfinite(x_nd)).any(axis=1).sum())
        raise DataError(f"fit_probe: {bad} of {len(x_nd)} probe input rows hold NaN or Inf; cache reads "
                        "reject non-finite activations, so these come from the SAE's codes or "
                        "reconstructions (retrain or reload the SAE) or from the arrays passed in; to "
                        "recheck a cache, rerun the 'visae cache' command that built it with --verify")
    scaler = Standardizer.fit(x_nd, config.standardize)
    xs = scaler.apply(x_nd)
    y_idx = np.searchsorted(classes, y_n)
    warm = _warm_coef(init, classes, xs.shape[1], init_cols)
    with solver_threads(float(xs.shape[0]) * xs.shape[1] * len(classes), config.threads):
        if probe_engine(config, len(classes)) == "sklearn":
            coef, icpt, n_iter, ok = fit_sklearn(xs, y_idx, config, warm)
        else:
            coef, icpt, n_iter, ok = fit_torch(xs, y_idx, len(classes), config, warm)
    return LinearProbe(classes, coef, icpt, scaler, n_iter, ok)
