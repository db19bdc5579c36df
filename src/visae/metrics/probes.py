"""Linear probes shared by M3, M4, M6 and M7: splits, standardization, ANOVA-F ranking, two fitting engines.

The probe is the paper's (Table 2, App. C): L2-regularized logistic regression, ``C = 1``, no class
weighting, multinomial for more than two classes. Two engines minimise the *same* objective,
``C · Σ_i logloss_i + ½‖W‖²`` (intercepts not penalized), selected by ``ProbeConfig.engine``:

- ``"sklearn"``: :class:`sklearn.linear_model.LogisticRegression` with ``solver="lbfgs"`` (the paper's CPU
  path);
- ``"torch"``: full-batch L-BFGS (``torch.optim.LBFGS``, strong-Wolfe line search) for multinomial probes and
  a damped Newton method for binary probes, on any device; suited to many classes and to GPUs;
- ``"auto"`` (default): scikit-learn below :data:`TORCH_MIN_CLASSES` classes (every binary probe, and every
  probe of the paper's small-class metrics), torch from there (ImageNet's 1000 classes).

Standardization (identical for every backbone, metric and engine): by default the probe inputs are the
pooled features as the evaluation pass produces them — activations and reconstructions in the SAE's
normalized input space (cache per-dimension mean subtracted, divided by the scalar std: paper App. C), codes
as they are — with no further per-column scaling, as in the paper and the authors' package. With
``ProbeConfig.standardize = true`` each probe input column is also centred and scaled by its mean and
population standard deviation *computed on the probe's training split only* (scikit-learn ``StandardScaler``
semantics; constant columns keep scale 1); that transform is then applied to every split and every input the
probe is applied to (so M3's reconstructions go through the raw training split's scaler).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, TypeAlias

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import Field, field_validator

from visae.config import FrozenConfig
from visae.device import check_device_string
from visae.errors import DataError

ArrayLike: TypeAlias = Any
"""A dense ``np.ndarray`` or a scipy sparse matrix (scipy's sparse types are not statically typed)."""


class ProbeConfig(FrozenConfig):
    """How a logistic-regression probe is fitted (paper Table 2 / App. C defaults)."""

    engine: Literal["auto", "sklearn", "torch"] = Field(
        "auto", description="'sklearn' (LogisticRegression, lbfgs; the paper's CPU path), 'torch' "
        "(full-batch L-BFGS / Newton on the selected device; same objective) or 'auto': sklearn for binary "
        "probes and fewer than TORCH_MIN_CLASSES (100) classes, torch from there (the measured crossover)")
    C: float = Field(1.0, gt=0,
                     description="inverse L2 strength: objective C·Σ logloss + ½‖W‖² (paper App. C: 1.0)")
    max_iter: int = Field(1000, ge=1,
                          description="solver iteration cap (paper Table 2: 1000 for M3, 500 for M4/M6/M7)")
    tol: float = Field(1e-4, gt=0,
                       description="convergence tolerance on the gradient (sklearn's default 1e-4)")
    standardize: bool = Field(
        False,
        description="also apply a StandardScaler fitted on the probe's training split to every input of the "
        "probe (default off: inputs are already in the cache-normalized space of paper App. C, as in "
        "the paper)")
    device: str = Field("auto", description="torch engine only: 'auto', 'cpu', 'cuda', 'cuda:1', 'mps'")
    threads: int | None = Field(
        None, ge=1,
        description="CPU threads of the solver's BLAS/OpenMP calls (torch: intra-op threads); None: one "
        "thread for small probes (below ONE_THREAD_MACS multiply-adds per pass, n·d·classes), the "
        "libraries' default above. Changes the speed only: the arithmetic is the same")

    _device = field_validator("device")(check_device_string)


TORCH_MIN_CLASSES = 100
"""``engine="auto"`` fits multinomial probes of at least this many classes with the torch engine. Measured
(``benchmarks/probes.py --dim 128``, 2-core CPU, one run): torch took 0.41× sklearn's speed at 10 classes,
1.32× at 100 and 1.53× at 1000, with accuracy within 1 point and AUC within 0.001; on a GPU the gap
grows."""


def probe_engine(config: ProbeConfig, n_classes: int) -> Literal["sklearn", "torch"]:
    """The engine that fits a probe of ``n_classes`` classes under ``config`` (resolves ``"auto"``)."""
    if config.engine != "auto":
        return config.engine
    return "torch" if n_classes >= TORCH_MIN_CLASSES else "sklearn"


def probe_config(max_iter: int) -> ProbeConfig:
    """The paper's probe settings with a metric's own iteration cap."""
    return ProbeConfig(max_iter=max_iter)


# --- solver threads ----------------------------------------------------------------------------------------

ONE_THREAD_MACS = 1e9
"""Multiply-adds per pass over a probe's training data (n · d · classes) below which its solver runs on one
thread. A probe's GEMMs are small (M3/M4/M7 on 512 images: 4e5–1e7 per pass); splitting them over the BLAS
thread pool costs more in synchronisation than it saves, and on a busy machine a preempted worker stalls
every call (measured on 2 cores at load 3: one thread was 4–16× faster than two up to 4e8 multiply-adds;
two threads won only at 1e10, a 1000-class probe on 40k images: README, Performance)."""


@lru_cache(maxsize=1)
def _thread_controller() -> Any:
    """threadpoolctl's view of the BLAS/OpenMP libraries loaded once scikit-learn's solvers are imported."""
    import sklearn.linear_model  # noqa: F401  (loads the OpenMP runtime of sklearn's loss kernels)
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def solver_thread_count(work_macs: float, threads: int | None) -> int | None:
    """Threads for a solve of ``work_macs`` multiply-adds per pass: ``threads`` if set, else 1 below
    :data:`ONE_THREAD_MACS`, else None (the libraries' default)."""
    if threads is not None:
        return threads
    return 1 if work_macs < ONE_THREAD_MACS else None


@contextmanager
def solver_threads(work_macs: float, threads: int | None = None) -> Iterator[None]:
    """Run the block with :func:`solver_thread_count` BLAS/OpenMP and torch intra-op threads (restored
    after)."""
    count = solver_thread_count(work_macs, threads)
    if count is None:
        yield
        return
    torch_before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        with _thread_controller().limit(limits=count):
            yield
    finally:
        torch.set_num_threads(torch_before)


# --- splits and ranking ------------------------------------------------------------------------------------


def stratified_split(labels_n: np.ndarray, test_size: float = 0.2,
                     seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/test indices (paper Table 2: 80/20, seed 42), as
    ``sklearn.model_selection.train_test_split``.

    Classes with a single image cannot be split: they go to the training side.
    """
    from sklearn.model_selection import train_test_split

    labels_n = np.asarray(labels_n)
    index_n = np.arange(len(labels_n))
    classes, counts = np.unique(labels_n, return_counts=True)
    single = np.isin(labels_n, classes[counts < 2])
    rest = index_n[~single]
    if len(rest) < 2:
        raise DataError(f"stratified_split: {len(labels_n)} labelled images with {len(classes)} classes: too "
                        "few to split; evaluate on more images")
    n_classes_rest = len(np.unique(labels_n[rest]))
    n_test = max(math.ceil(test_size * len(rest)), n_classes_rest)
    if len(rest) - n_test < n_classes_rest:
        raise DataError(f"stratified_split: {len(rest)} images cannot hold {n_classes_rest} classes in both "
                        "splits; evaluate on more images per class")
    train, test = train_test_split(rest, test_size=n_test, random_state=seed, stratify=labels_n[rest])
    train = np.sort(np.concatenate([train, index_n[single]]))
    return train, np.sort(test)


CHUNK_VALUES = 2**21
"""Stored values per row chunk of a sparse matrix (~50 MiB of chunk copies and float64 temporaries)."""


def _chunk_rows(matrix: sp.csr_matrix) -> int:
    """Rows per chunk holding about :data:`CHUNK_VALUES` stored values on average."""
    return max(1, int(CHUNK_VALUES * matrix.shape[0] / max(1, matrix.nnz)))


class RowSubset:
    """Rows ``rows`` of a CSR matrix, read a chunk at a time (:data:`CHUNK_VALUES`) and never copied whole.

    The ranking and column helpers below accept one wherever they accept a matrix, so that a probe's
    training rows of the evaluation's pooled codes (a memory-mapped file, possibly larger than the memory
    one wants to hold) need no in-memory copy.
    """

    def __init__(self, matrix: sp.csr_matrix, rows: np.ndarray) -> None:
        self.matrix = matrix
        self.rows = np.asarray(rows, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows), int(self.matrix.shape[1])

    def chunks(self) -> Iterator[tuple[int, sp.csr_matrix]]:
        """``(first row, CSR of the next rows)`` in order."""
        step = _chunk_rows(self.matrix)
        for s in range(0, len(self.rows), step):
            yield s, self.matrix[self.rows[s:s + step]]


def _row_chunks(x_nf: ArrayLike) -> Iterator[tuple[int, ArrayLike]]:
    """``(first row, float64 block)`` covering ``x_nf``: a dense matrix in one block, sparse ones (CSR,
    :class:`RowSubset`) in row chunks, so that no float64 copy of all the stored values is held."""
    if isinstance(x_nf, RowSubset):
        parts: Iterator[tuple[int, sp.csr_matrix]] = x_nf.chunks()
    elif sp.issparse(x_nf):
        x = sp.csr_matrix(x_nf)
        step = _chunk_rows(x)
        parts = ((s, x[s:s + step]) for s in range(0, x.shape[0], step))
    else:
        yield 0, np.asarray(x_nf, dtype=np.float64)  # float32 cancels in the sums of squares
        return
    for s, part in parts:
        yield s, sp.csr_matrix((part.data.astype(np.float64), part.indices, part.indptr), shape=part.shape)


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


def take_columns(x_nf: ArrayLike, cols: np.ndarray) -> np.ndarray:
    """Dense float32 ``x[:, cols]`` (sparse inputs, and a :class:`RowSubset` chunk by chunk, are sliced
    before densifying)."""
    if isinstance(x_nf, RowSubset):
        out = np.empty((x_nf.shape[0], len(cols)), dtype=np.float32)
        for s, part in x_nf.chunks():
            out[s:s + part.shape[0]] = part[:, cols].toarray()
        return out
    sub = x_nf[:, cols]
    return np.asarray(sub.toarray() if sp.issparse(sub) else sub, dtype=np.float32)


# --- standardization ---------------------------------------------------------------------------------------


@dataclass
class Standardizer:
    """Per-column mean and scale fitted on a training split (StandardScaler semantics)."""

    mean_d: np.ndarray
    scale_d: np.ndarray

    @classmethod
    def fit(cls, x_nd: np.ndarray, enabled: bool = True) -> Standardizer:
        """Fit on ``x_nd``; identity when ``enabled`` is false."""
        d = x_nd.shape[1]
        if not enabled:
            return cls(np.zeros(d, np.float64), np.ones(d, np.float64))
        x64 = np.asarray(x_nd, dtype=np.float64)
        mean = x64.mean(axis=0)
        std = x64.std(axis=0)
        # sklearn's _handle_zeros_in_scale: near-constant columns keep scale 1
        std = np.where(std < 10 * np.finfo(np.float64).eps * np.maximum(1.0, np.abs(mean)), 1.0, std)
        return cls(mean, std)

    def apply(self, x_nd: np.ndarray) -> np.ndarray:
        """Standardized float32 copy."""
        return ((np.asarray(x_nd, dtype=np.float64) - self.mean_d) / self.scale_d).astype(np.float32)


# --- fitted probe ------------------------------------------------------------------------------------------


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
        raise DataError("fit_probe: probe inputs contain NaN or Inf; check the activation cache (visae "
                        "cache verify)")
    scaler = Standardizer.fit(x_nd, config.standardize)
    xs = scaler.apply(x_nd)
    y_idx = np.searchsorted(classes, y_n)
    warm = _warm_coef(init, classes, xs.shape[1], init_cols)
    with solver_threads(float(xs.shape[0]) * xs.shape[1] * len(classes), config.threads):
        if probe_engine(config, len(classes)) == "sklearn":
            coef, icpt, n_iter, ok = _fit_sklearn(xs, y_idx, config, warm)
        else:
            coef, icpt, n_iter, ok = _fit_torch(xs, y_idx, len(classes), config, warm)
    return LinearProbe(classes, coef, icpt, scaler, n_iter, ok)


def _fit_sklearn(xs: np.ndarray, y_idx: np.ndarray, config: ProbeConfig,
                 warm: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray,
                                                                             np.ndarray, int, bool]:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=config.C, solver="lbfgs", max_iter=config.max_iter, tol=config.tol,
                             class_weight=None,
                             warm_start=warm is not None)
    if warm is not None:  # sklearn's warm start reads these attributes
        clf.coef_, clf.intercept_ = warm
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(xs, y_idx)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return (clf.coef_.astype(np.float64), clf.intercept_.astype(np.float64),
            int(np.max(clf.n_iter_)), converged)


def _fit_torch(xs: np.ndarray, y_idx: np.ndarray, n_classes: int, config: ProbeConfig,
               warm: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, int, bool]:
    from visae.device import pick_device

    device = pick_device(config.device)
    x = torch.as_tensor(xs, device=device)
    y = torch.as_tensor(y_idx, device=device)
    if n_classes == 2:
        w, b, it, ok = newton_binary(x[None], y[None].float(), config.C, config.max_iter, config.tol)
        return w[0:1].double().cpu().numpy(), b[0:1].double().cpu().numpy(), it, ok
    return _lbfgs_multinomial(x, y, n_classes, config, warm)


def _lbfgs_multinomial(x: torch.Tensor, y: torch.Tensor, n_classes: int, config: ProbeConfig,
                       warm: tuple[np.ndarray,
                                   np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """Minimise (C·Σ CE + ½‖W‖²)/n — the sklearn objective divided by n, which leaves the minimiser
    unchanged."""
    n, d = x.shape
    w = torch.zeros(n_classes, d, device=x.device, dtype=torch.float32)
    b = torch.zeros(n_classes, device=x.device, dtype=torch.float32)
    if warm is not None:
        w.copy_(torch.as_tensor(warm[0], dtype=torch.float32))
        b.copy_(torch.as_tensor(warm[1], dtype=torch.float32))
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=config.max_iter, history_size=10,
                            tolerance_grad=config.tol, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")
    reg = 0.5 / (config.C * n)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w.T + b, y, reduction="mean") + reg * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    n_iter = int(opt.state[opt._params[0]].get("n_iter", 0))
    return (w.detach().double().cpu().numpy(), b.detach().double().cpu().numpy(), n_iter,
            n_iter < config.max_iter)


@torch.no_grad()
def newton_binary(x_bnd: torch.Tensor, y_bn: torch.Tensor, C: float = 1.0, max_iter: int = 100,
                  tol: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
    """Batched binary logistic regression by damped Newton: B independent problems ``C·Σ logloss + ½‖w‖²``.

    ``x_bnd`` float32 ``[B, N, D]``, ``y_bn`` in {0, 1}. Returns ``(w [B, D], b [B], iterations, converged)``.
    """
    bsz, n, d = x_bnd.shape
    dev = x_bnd.device
    xa = torch.cat([x_bnd, torch.ones(bsz, n, 1, device=dev, dtype=x_bnd.dtype)], dim=2)  # bias column
    theta = torch.zeros(bsz, d + 1, device=dev, dtype=torch.float64)
    reg = torch.ones(d + 1, device=dev, dtype=torch.float64)
    reg[-1] = 0.0
    y = y_bn.to(torch.float64)

    def objective(th: torch.Tensor) -> torch.Tensor:
        z = torch.einsum("bnd,bd->bn", xa, th.float()).double()
        loss = torch.nn.functional.softplus(z) - y * z
        return C * loss.sum(dim=1) + 0.5 * (reg * th * th).sum(dim=1)

    obj = objective(theta)
    active = torch.ones(bsz, dtype=torch.bool, device=dev)
    n_iter = 0
    for step_i in range(1, max_iter + 1):
        n_iter = step_i
        z = torch.einsum("bnd,bd->bn", xa, theta.float()).double()
        p = torch.sigmoid(z)
        grad = C * torch.einsum("bnd,bn->bd", xa, (p - y).float()).double() + reg * theta
        gnorm = grad.abs().amax(dim=1) / n  # gradient of the mean-scaled objective, as sklearn's tol
        active &= gnorm > tol
        if not bool(active.any()):
            break
        s = (p * (1 - p)).float()
        hess = C * ((xa * s[:, :, None]).transpose(1,
                                                   2) @ xa).double() + torch.diag_embed(reg.expand(bsz, -1))
        hess = hess + 1e-10 * torch.eye(d + 1, device=dev, dtype=torch.float64)
        step = torch.linalg.solve(hess, grad.unsqueeze(-1)).squeeze(-1)
        step = torch.where(active[:, None], step, torch.zeros_like(step))
        t = torch.ones(bsz, device=dev, dtype=torch.float64)
        accepted = torch.zeros(bsz, dtype=torch.bool, device=dev)
        new_obj = obj.clone()
        for _ in range(30):  # backtracking: halve the step where the objective did not decrease
            cand = objective(theta - t[:, None] * step)
            ok = (cand <= obj + 1e-12 * obj.abs()) & ~accepted
            new_obj = torch.where(ok, cand, new_obj)
            theta_new = theta - t[:, None] * step
            theta = torch.where(ok[:, None], theta_new, theta)
            accepted |= ok
            if bool(accepted.all()):
                break
            t = torch.where(accepted, t, t * 0.5)
        obj = new_obj
        if bool((~accepted & active).all()):
            break  # no progress possible at machine precision
    w, b = theta[:, :d], theta[:, d]
    return w.float(), b.float(), n_iter, not bool(active.any())


# --- scores ------------------------------------------------------------------------------------------------


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
