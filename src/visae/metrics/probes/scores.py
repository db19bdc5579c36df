"""Scores of fitted probes: ROC AUC (binary and one-vs-rest) and the positive class's F1."""

from __future__ import annotations

import numpy as np


def binary_auc(y_n: np.ndarray, score_n: np.ndarray) -> float:
    """ROC AUC of scores for a 0/1 target (Mann–Whitney with average ranks; = ``roc_auc_score``); NaN if one
    class."""
    from scipy.stats import rankdata

    y = np.asarray(y_n).astype(bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = rankdata(score_n)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def ovr_auc(y_n: np.ndarray, proba_nk: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """One-vs-rest AUC per class (column k scores ``classes[k]``); NaN where the class is absent or alone.

    Their mean over classes present equals ``roc_auc_score(..., multi_class="ovr", average="macro")``.
    """
    return np.array([binary_auc(np.asarray(y_n) == c, proba_nk[:, k]) for k, c in enumerate(classes)])


def binary_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """F1 of the positive class (label 1), 0 when there are no predicted or true positives (sklearn's
    zero_division=0)."""
    t = np.asarray(y_true).astype(bool)
    p = np.asarray(y_pred).astype(bool)
    tp = int(np.sum(t & p))
    denom = int(t.sum()) + int(p.sum())
    return 0.0 if denom == 0 else 2.0 * tp / denom
