"""M4 — sparse probing (paper §4.3, Table 2): mean one-vs-rest AUC of logistic probes on the top-k SAE
features.

Codes are max-pooled over patches. The evaluation cache is split 80/20, stratified, seed 42. With the
default ``ranking="global"`` the features are ranked once by descending multi-class ANOVA F
(``f_classif``) on the training split; for every budget k a multinomial logistic probe (lbfgs, C = 1,
max_iter = 500, no class weights; inputs are the cache-normalized codes, not rescaled per column unless
``probe.standardize`` is set — :mod:`visae.metrics.probes`) is trained on the top-k features and scored
by the mean over classes of the one-vs-rest ROC AUC of its predicted probabilities on the held-out split
(= ``roc_auc_score(multi_class="ovr", average="macro")``; classes absent from the held-out split are left
out of the mean). With ``ranking="per_class"`` each class gets its own ranking
(binary F, class vs rest) and a binary probe on its own top-k, scored by its AUC; the mean is reported.
Budgets larger than the dictionary are skipped; k = 128 is the headline.
"""

from __future__ import annotations

import math
import typing
from typing import Annotated, ClassVar, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import Field, field_validator

from visae.cache.whitening import refuse_probe_whiten
from visae.metrics.base import Metric, MetricConfig, MetricResult, register_metric
from visae.metrics.encode import PooledFeatures
from visae.metrics.probes import (
    ArrayLike,
    LinearProbe,
    ProbeConfig,
    RowSubset,
    binary_auc,
    f_one_vs_rest,
    fit_probe,
    newton_binary,
    ovr_auc,
    probe_engine,
    rank_by_f,
    rank_features,
    solver_threads,
    stratified_split,
    take_columns,
)
from visae.uncertainty import BootstrapConfig, mean_ovr_auc_replicates, percentile_interval

CURVE_TABLE = "m4_curve.csv"
PAPER_KS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class M4Config(MetricConfig):
    """Settings for M4; defaults are the paper's Table 2."""

    ks: list[Annotated[int, Field(ge=1)]] = Field(list(PAPER_KS), min_length=1,
                                                  description="feature budgets, each ≥ 1 (paper Table 2: 1, "
                                                              "2, 4, …, 1024); "
                          "budgets above the dictionary size are skipped")
    headline_k: int = Field(128, ge=1, description="the budget reported as M4 (paper §4.3: 128)")
    ranking: Literal["global", "per_class"] = Field(
        "global",
        description="'global': one multi-class f_classif ranking and multinomial probes (paper Table 2); "
        "'per_class': binary class-vs-rest ranking and probe per class")
    test_size: float = Field(0.2, gt=0, lt=1,
                             description="held-out fraction, stratified (paper Table 2: 0.2)")
    seed: int = Field(42, description="split seed (paper Table 2: 42)")
    probe: ProbeConfig = Field(default_factory=lambda: ProbeConfig(max_iter=500),
                               description="the probe (paper Table 2: lbfgs, C = 1, max_iter = 500)")
    write_curve: bool = Field(True, description=f"write the k → AUC curve to <out>/{CURVE_TABLE}")
    warm_start: bool = Field(True, description="start each budget's probe from the previous budget's weights "
                             "(same objective and minimiser, fewer iterations); false: every probe from zero")
    whiten: str = Field("none", description="not applicable: M4 probes SAE codes, which are not "
                                           "whitened (only 'none' is accepted; see m3.whiten)")

    @field_validator("whiten")
    @classmethod
    def _no_whiten(cls, v: str) -> str:
        return refuse_probe_whiten("m4", v, "M4's probes read SAE codes, not activations")


class M4Result(MetricResult):
    """M4: ``value`` = mean one-vs-rest AUC at ``headline_k`` (higher: concepts readable from few
    features)."""

    headline_k: int = Field(description="the budget of ``value`` (min of the configured k and the "
                                        "dictionary size)")
    curve: dict[str, float | None] = Field(description="k → mean AUC, every budget evaluated")
    ranking: str = Field(description="'global' or 'per_class'")
    n_train: int = Field(description="images the probes were trained on")
    n_test: int = Field(description="held-out images")
    n_classes: int = Field(description="classes in the training split")
    n_features: int = Field(description="dictionary size")


def sparse_probe_curve(codes_tr: ArrayLike, y_tr: np.ndarray, codes_te: ArrayLike, y_te: np.ndarray,
                       ks: list[int], probe: ProbeConfig, ranking: str = "global",
                       warm_start: bool = True,
                       scores_at: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
                       ) -> dict[int, float]:
    """Mean one-vs-rest AUC on the held-out rows for every budget k (≤ the number of features).

    The codes may be dense, scipy sparse or :class:`~visae.metrics.probes.RowSubset` views. The columns of
    the largest budget are densified once (per class with ``ranking="per_class"``); every budget reads its
    leading columns. With ``warm_start`` each probe (global ranking; per class: each class's own) starts
    from the previous (smaller, nested) budget's solution: the same convex objective, far fewer solver
    iterations. For every key of ``scores_at`` (global ranking) the held-out scores ``[n_test, n_classes]``
    and their classes are stored there.
    """
    budgets = sorted({k for k in ks if 1 <= k <= codes_tr.shape[1]})
    if not budgets:
        return {}
    if ranking == "global":
        top = rank_features(codes_tr, y_tr)[:budgets[-1]]
        return _global_curve(take_columns(codes_tr, top), y_tr, take_columns(codes_te, top), y_te, budgets,
                             probe, warm_start, scores_at)
    classes = np.unique(y_tr)
    f_cf = f_one_vs_rest(codes_tr, y_tr, classes)
    aucs: dict[int, list[float]] = {k: [] for k in budgets}
    for i, c in enumerate(classes):  # a class's top-k sets are nested: warm start along its own curve
        top = rank_by_f(f_cf[i])[:budgets[-1]]
        x_tr, x_te = take_columns(codes_tr, top), take_columns(codes_te, top)
        last: LinearProbe | None = None
        for k in budgets:
            auc, last = _class_auc(x_tr[:, :k], y_tr == c, x_te[:, :k], y_te == c, probe,
                                   init=last if warm_start else None)
            aucs[k].append(auc)
    return {k: float(np.nanmean(v)) for k, v in aucs.items()}


def _global_curve(top_tr: np.ndarray, y_tr: np.ndarray, top_te: np.ndarray, y_te: np.ndarray,
                  budgets: list[int], probe: ProbeConfig, warm_start: bool,
                  scores_at: dict[int, tuple[np.ndarray, np.ndarray]] | None) -> dict[int, float]:
    """The global ranking's curve on the top-ranked columns ``top_*`` (best first)."""
    out: dict[int, float] = {}
    prev = None
    for k in budgets:  # nested top-k sets: each probe starts from the previous budget's weights
        p = prev = fit_probe(top_tr[:, :k], y_tr, probe, init=prev if warm_start else None)
        x_te = top_te[:, :k]
        if len(p.classes) == 2:
            score = p.decision_function(x_te)
            out[k] = binary_auc(y_te == p.classes[1], score)
            if scores_at is not None and k in scores_at:
                scores_at[k] = (score[:, None], p.classes[1:])
        else:
            proba = p.predict_proba(x_te)
            out[k] = float(np.nanmean(ovr_auc(y_te, proba, p.classes)))
            if scores_at is not None and k in scores_at:
                scores_at[k] = (proba, p.classes)
    return out


def _class_auc(x_tr: np.ndarray, pos_tr: np.ndarray, x_te: np.ndarray, pos_te: np.ndarray,
               probe: ProbeConfig, init: LinearProbe | None = None) -> tuple[float, LinearProbe | None]:
    """AUC of a binary class-vs-rest probe on the dense columns ``x_*``, and the probe (None from the torch
    engine, whose Newton solves need no warm start). ``init``: the class's probe on the first of these
    columns."""
    if probe_engine(probe, 2) == "torch":
        import torch

        from visae.device import pick_device
        from visae.metrics.probes import Standardizer

        dev = pick_device(probe.device)
        scaler = Standardizer.fit(x_tr, probe.standardize)
        with solver_threads(float(x_tr.shape[0]) * x_tr.shape[1] * 2, probe.threads):
            w, b, _, _ = newton_binary(torch.as_tensor(scaler.apply(x_tr), device=dev)[None],
                                       torch.as_tensor(pos_tr, device=dev, dtype=torch.float32)[None],
                                       probe.C, probe.max_iter, probe.tol)
        score = scaler.apply(x_te) @ w[0].cpu().numpy() + float(b[0])
        return binary_auc(pos_te, score), None
    p = fit_probe(x_tr, pos_tr.astype(np.int64), probe, init=init)
    return binary_auc(pos_te, p.decision_function(x_te)), p


def compute_m4(codes_nf: ArrayLike, labels_n: np.ndarray, config: M4Config | None = None,
               bootstrap: BootstrapConfig | None = None) -> M4Result:
    """M4 on image-level codes ``codes_nf`` (dense or scipy sparse) with labels ``labels_n``; with
    ``bootstrap`` (global ranking), an interval of the headline AUC over the held-out images."""
    config = config or M4Config()
    codes = sp.csr_matrix(codes_nf) if sp.issparse(codes_nf) else np.asarray(codes_nf)
    train, test = stratified_split(labels_n, config.test_size, config.seed)
    n_features = codes.shape[1]
    head = min(config.headline_k, n_features)
    ks = sorted(set(config.ks) | {head})
    boot = bootstrap is not None and bootstrap.n_boot > 0 and config.ranking == "global"
    empty = (np.zeros((0, 0)), np.zeros(0))
    scores_at: dict[int, tuple[np.ndarray, np.ndarray]] | None = {head: empty} if boot else None
    # sparse codes (perhaps a memory-mapped file) are read in row chunks: no copy of either split
    codes_tr, codes_te = ((RowSubset(codes, train), RowSubset(codes, test)) if sp.issparse(codes)
                          else (codes[train], codes[test]))
    curve = sparse_probe_curve(codes_tr, labels_n[train], codes_te, labels_n[test], ks,
                               config.probe, config.ranking, warm_start=config.warm_start,
                               scores_at=scores_at)
    value = curve.get(head)
    value = None if value is None or math.isnan(value) else value
    note = ("" if head == config.headline_k
            else f"the dictionary has only {n_features} features: headline at k={head}")
    if value is None:
        note = "; ".join(filter(None,
                                [note, f"the AUC at k={head} is undefined: no class has both positive and "
                                             "negative held-out images (use more images or classes)"]))
    result = M4Result(metric="m4", value=value, higher_is_better=True, note=note, headline_k=head,
                      curve={str(k): (None if math.isnan(v) else v) for k, v in curve.items()},
                      ranking=config.ranking, n_train=len(train), n_test=len(test),
                      n_classes=len(np.unique(labels_n[train])), n_features=n_features)
    if bootstrap is None or scores_at is None or value is None or scores_at[head][0].size == 0:
        return result
    scores, classes = scores_at[head]
    reps = mean_ovr_auc_replicates(labels_n[test], scores, classes, test, bootstrap)
    return typing.cast(M4Result, result.with_interval(percentile_interval(reps, bootstrap.level),
                                                       unit="held-out images"))


def write_curve(path: str | object, result: M4Result) -> None:
    """The k → AUC curve as a two-column CSV (``k,auc``)."""
    from visae.io import atomic_write_text

    lines = ["k,auc"] + [f"{k},{'' if v is None else repr(v)}" for k, v in result.curve.items()]
    atomic_write_text(str(path), "\n".join(lines) + "\n")


@register_metric
class M4SparseProbing(Metric[M4Config]):
    """Registered as ``m4``."""

    name: ClassVar[str] = "m4"
    needs_pooled: ClassVar[bool] = True
    min_classes: ClassVar[int] = 2  # fits class probes
    needs_stream: ClassVar[bool] = False

    def finalize(self, pooled: PooledFeatures | None) -> MetricResult:
        """Rank, probe every budget, write the curve table."""
        if pooled is None:
            raise ValueError("m4: needs the pooled features of the evaluation pass")
        result = compute_m4(pooled.codes_nf, pooled.labels_n, self.config, self.ctx.bootstrap)
        if self.ctx.out_dir is not None and self.config.write_curve:
            write_curve(self.ctx.out_dir / CURVE_TABLE, result)
        return result
