"""ANOVA-F feature ranking: the multi-class F (``f_classif``), its sparse row-chunked form, and the
one-vs-rest F of every class."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp

from visae.metrics.probes.rows import ArrayLike, RowSubset, _row_chunks


def f_scores(x_nf: ArrayLike, y_n: np.ndarray) -> np.ndarray:
    """ANOVA F statistic per feature (``sklearn.feature_selection.f_classif``).

    NaN (a constant feature) → −inf, so it ranks last; +inf (no within-class variance: a perfect
    class indicator) is kept and ranks first.
    """
    import warnings

    from sklearn.feature_selection import f_classif

    if sp.issparse(x_nf) or isinstance(x_nf, RowSubset):
        f = _f_classif_sparse(x_nf, np.asarray(y_n))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant features: 0/0 and a UserWarning, handled below
            f, _ = f_classif(np.asarray(x_nf, dtype=np.float64), y_n)  # float32 cancels
    # F < 0 only comes from rounding when the within-class variance is ~0: a perfect separator
    return np.where(np.isnan(f), -np.inf, np.where(f < 0, np.inf, f))


def _column_moments(x_nf: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature ``(Σ x, Σ x²)`` over the rows, in float64 (no squared copy of a sparse matrix)."""
    n_cols = x_nf.shape[1]
    total, total_sq = np.zeros(n_cols), np.zeros(n_cols)
    for _, block in _row_chunks(x_nf):
        if sp.issparse(block):
            total += np.bincount(block.indices, weights=block.data, minlength=n_cols)
            total_sq += np.bincount(block.indices, weights=block.data * block.data, minlength=n_cols)
        else:
            total += block.sum(axis=0)
            total_sq += np.square(block).sum(axis=0)
    return total, total_sq


CLASS_SUMS_BYTES = 64 * 2**20
"""Largest per-class sum block ``[classes, F]`` float64 held at once (more classes: several passes)."""


def _class_sums(x_nf: ArrayLike, y_n: np.ndarray,
                classes: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """For chunks of classes: ``(first class index, images per class [c, 1], Σ x per class [c, F])``, no
    ``[classes, F]`` array above :data:`CLASS_SUMS_BYTES` held."""
    n_cols = x_nf.shape[1]
    chunk = max(1, CLASS_SUMS_BYTES // (8 * n_cols))
    for s in range(0, len(classes), chunk):
        cls = np.asarray(classes[s:s + chunk])
        sums = np.zeros((len(cls), n_cols))
        for r0, block in _row_chunks(x_nf):
            member = (y_n[None, r0:r0 + block.shape[0]] == cls[:, None]).astype(np.float64)  # [c, rows]
            sums += (sp.csr_matrix(member) @ block).toarray() if sp.issparse(block) else member @ block
        yield s, (y_n[None, :] == cls[:, None]).sum(axis=1, keepdims=True).astype(np.float64), sums


def _f_classif_sparse(x_nf: ArrayLike, y_n: np.ndarray) -> np.ndarray:
    """``f_classif``'s one-way ANOVA F (float64) from per-class sums over row chunks: no float64 copy of
    the whole matrix, no per-class slices or squared copies."""
    classes = np.unique(y_n)
    n = x_nf.shape[0]
    total_f, total_q = _column_moments(x_nf)
    square_of_sums_n = total_f**2 / n
    ss_between = -square_of_sums_n
    for _, n_c, s_c in _class_sums(x_nf, y_n, classes):
        ss_between = ss_between + (s_c**2 / n_c).sum(axis=0)
    ss_tot = total_q - square_of_sums_n
    with np.errstate(divide="ignore", invalid="ignore"):
        return (ss_between / (len(classes) - 1)) / ((ss_tot - ss_between) / (n - len(classes)))


def rank_by_f(f_f: np.ndarray) -> np.ndarray:
    """Feature indices by descending F (stable: ties keep index order; +inf first, NaN/−inf last)."""
    f_f = np.where(np.isnan(f_f), -np.inf, f_f)
    return np.argsort(-f_f, kind="stable")


def rank_features(x_nf: ArrayLike, y_n: np.ndarray) -> np.ndarray:
    """Feature indices ranked by descending ANOVA F against ``y_n`` (constant features last)."""
    return rank_by_f(f_scores(x_nf, y_n))


def f_one_vs_rest(x_nf: ArrayLike, y_n: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Binary ANOVA F of every feature for each class against the rest: ``[len(classes), F]``.

    −inf for a constant feature, +inf for one without within-group variance (as :func:`f_scores`).

    Equals ``f_classif(x, y == c)`` for each class ``c``, computed from per-class sums in one pass.
    """
    y_n = np.asarray(y_n)
    n = x_nf.shape[0]
    total_f, total_q = _column_moments(x_nf)
    ss_tot = total_q - total_f**2 / n
    out = np.empty((len(classes), x_nf.shape[1]), dtype=np.float64)
    for s, n_c, s_c in _class_sums(x_nf, y_n, classes):
        n_r = n - n_c
        with np.errstate(divide="ignore", invalid="ignore"):
            ss_between = s_c**2 / n_c + (total_f - s_c) ** 2 / n_r - total_f**2 / n
            ss_within = np.maximum(ss_tot - ss_between, 0.0)
            f = ss_between / (ss_within / (n - 2))
        const = ss_tot <= 1e-12 * np.maximum(total_q, 1e-300)
        out[s:s + len(s_c)] = np.where(np.isnan(f) | const, -np.inf, f)
    return out
