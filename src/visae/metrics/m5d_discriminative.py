"""M5d — discriminative monosemanticity: M5's consistency weighted by how well a feature separates its class.

The paper finds that M5 does not predict fine-grained accuracy and suggests "a discriminability-weighted
consistency score" (§5.5): a feature whose top images look alike but straddle several classes is consistent
without being discriminative. For each feature j that M5 scores (same sample, same top-N images, same
evaluator embeddings, App. K):

- consistency C_j = (MS_j − b) / (1 − b), M5's per-feature score normalized by M5's random-group baseline b;
- target class c_j = the label holding the largest activation weight among the feature's top-N images
  (ties: the smallest label);
- discriminability D_j = max(0, 2·AUC_j − 1), AUC_j the one-vs-rest ROC AUC of the feature's image-level
  (max-pooled) activation for c_j over all evaluation images (Mann–Whitney, ties count one half);
- m5d_j = C_j · D_j.

The headline is the mean of m5d_j over features with a defined MS; ``raw`` is the same mean with MS_j in
place of C_j. A feature firing identically on all images of two of K equal classes has AUC = 1 − 1/(2(K−1))
for either, so D = 1 − 1/(K−1); one firing on one class only has D = 1 (the known answers of the tests).
"""

from __future__ import annotations

import typing
from typing import ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pydantic import Field
from scipy.stats import rankdata

from visae.metrics.base import EvalContext, MetricResult, register_metric
from visae.metrics.encode import PooledFeatures
from visae.metrics.m5_monosemanticity import (
    M5Config,
    M5Monosemanticity,
    M5Result,
    compute_m5,
    write_features_table,
)
from visae.uncertainty import BootstrapConfig, Interval, percentile_interval, poisson_weights

FEATURES_FILE = "m5d_features.parquet"


class M5dConfig(M5Config):
    """Settings for M5d: M5's (paper Table 2 / App. K), shared so that both score the same features."""


class M5dResult(MetricResult):
    """M5d summary: ``value`` is the mean discriminability-weighted normalized consistency."""

    raw: float | None = Field(None, description="mean MS_j · D_j (M5_raw weighted by discriminability)")
    m5: float | None = Field(None, description="normalized M5 of the same features, for comparison")
    mean_discriminability: float | None = Field(None, description="mean D_j = max(0, 2·AUC_j − 1)")
    mean_auc: float | None = Field(None, description="mean one-vs-rest AUC of each feature for its class")
    separation: float | None = Field(None, description="mean MS_within − MS_between over features where "
                                     "both are defined (App. K decomposition; a second view of §5.5)")
    baseline: float | None = Field(None, description="M5's random-group baseline b")
    n_scored: int = Field(0, description="features scored (M5's sample)")
    n_defined: int = Field(0, description="scored features with a defined MS and AUC")


def ovr_auc(scores_n: np.ndarray, positive_n: np.ndarray) -> float:
    """ROC AUC of ``scores_n`` for the boolean target ``positive_n`` (ties one half); NaN without both
    classes."""
    pos = np.asarray(positive_n, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores_n)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def target_classes(top_labels_fk: np.ndarray, top_weights_fk: np.ndarray) -> np.ndarray:
    """Per feature, the label with the largest summed weight among its top images (ties: smallest label;
    all weights zero: the most frequent label)."""
    out = np.empty(len(top_labels_fk), dtype=np.int64)
    for j, (lab, w) in enumerate(zip(top_labels_fk, top_weights_fk, strict=True)):
        classes, inverse = np.unique(np.asarray(lab), return_inverse=True)
        mass = np.bincount(inverse, weights=np.asarray(w, dtype=np.float64), minlength=len(classes))
        if not mass.any():
            mass = np.bincount(inverse, minlength=len(classes)).astype(np.float64)
        out[j] = classes[int(np.argmax(mass))]
    return out


def feature_aucs(codes_nf: sp.spmatrix | np.ndarray, features: np.ndarray, target_f: np.ndarray,
                 labels_n: np.ndarray, chunk: int = 256) -> np.ndarray:
    """One-vs-rest AUC of each feature's image-level activation for its target class, ``[len(features)]``."""
    labels = np.asarray(labels_n)
    out = np.full(len(features), np.nan)
    csc = sp.csc_matrix(codes_nf) if sp.issparse(codes_nf) else None
    for s in range(0, len(features), chunk):
        cols = features[s:s + chunk]
        block = (csc[:, cols].toarray() if csc is not None
                 else np.asarray(codes_nf)[:, cols])
        for k in range(len(cols)):
            out[s + k] = ovr_auc(block[:, k], labels == target_f[s + k])
    return out


def compute_m5d(m5_table: pd.DataFrame, baseline: float | None, codes_nf: sp.spmatrix | np.ndarray,
                labels_n: np.ndarray, bootstrap: BootstrapConfig | None = None,
                baseline_g: np.ndarray | None = None,
                cache_labels_n: np.ndarray | None = None) -> tuple[M5dResult, pd.DataFrame]:
    """M5d from M5's per-feature table (``feature, ms, top_images, top_weights, ms_within, ms_between``),
    its baseline, and the image-level codes ``[n, F]`` of all evaluation images with their ``labels_n``.
    ``cache_labels_n`` labels the cache positions in ``top_images`` (default: ``labels_n``)."""
    labels = np.asarray(labels_n)
    top_labels = labels if cache_labels_n is None else np.asarray(cache_labels_n)
    features = m5_table["feature"].to_numpy(np.int64)
    ms = m5_table["ms"].to_numpy(np.float64)
    base = {"metric": "m5d", "higher_is_better": True, "baseline": baseline, "n_scored": len(features)}
    if len(features) == 0:
        return M5dResult(value=None, note="no live feature to score", **base), pd.DataFrame()
    top_images = np.stack(m5_table["top_images"].to_numpy())
    top_weights = np.stack(m5_table["top_weights"].to_numpy())
    target = target_classes(top_labels[top_images], top_weights)
    auc = feature_aucs(codes_nf, features, target, labels)
    disc = np.maximum(0.0, 2.0 * auc - 1.0)
    raw_f = ms * disc
    defined = np.isfinite(raw_f)
    table = pd.DataFrame({"feature": features, "ms": ms, "target_class": target, "auc": auc,
                          "discriminability": disc, "m5d_raw": raw_f})
    sep = (m5_table["ms_within"] - m5_table["ms_between"]).to_numpy(np.float64)
    common = {
        "raw": float(raw_f[defined].mean()) if defined.any() else None,
        "mean_discriminability": float(disc[defined].mean()) if defined.any() else None,
        "mean_auc": float(auc[defined].mean()) if defined.any() else None,
        "separation": float(np.nanmean(sep)) if np.isfinite(sep).any() else None,
        "n_defined": int(defined.sum()),
    }
    if not defined.any():
        note = "no scored feature has a defined MS and AUC"
        return M5dResult(value=None, note=note, **base, **common), table
    if baseline is None or baseline >= 1.0:
        return M5dResult(value=None, note="M5's baseline is undefined or 1; normalized M5d undefined",
                         **base, **common), table
    norm_f = (ms - baseline) / (1.0 - baseline) * disc
    table["m5d"] = norm_f
    m5 = float((ms[np.isfinite(ms)].mean() - baseline) / (1.0 - baseline))
    result = M5dResult(value=float(norm_f[defined].mean()), m5=m5, **base, **common)
    if bootstrap is not None and bootstrap.n_boot > 0 and baseline_g is not None and len(baseline_g):
        result = typing.cast(M5dResult, result.with_interval(
            _interval(ms[defined], disc[defined], baseline_g, bootstrap),
            unit="scored features and baseline groups"))
    return result, table


def _interval(ms_f: np.ndarray, disc_f: np.ndarray, baseline_g: np.ndarray,
              bootstrap: BootstrapConfig) -> Interval:
    """Percentile interval resampling features (MS and D together) and baseline groups independently."""
    w_fb = poisson_weights(np.arange(len(ms_f)), bootstrap.n_boot, bootstrap.seed).astype(np.float64)
    w_gb = poisson_weights(np.arange(len(baseline_g)) + (1 << 40), bootstrap.n_boot,
                           bootstrap.seed).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        total = w_fb.sum(axis=0)
        md_b = (w_fb * (ms_f * disc_f)[:, None]).sum(axis=0) / total
        d_b = (w_fb * disc_f[:, None]).sum(axis=0) / total
        b_b = (w_gb * baseline_g[:, None]).sum(axis=0) / w_gb.sum(axis=0)
        value_b = np.where(b_b < 1.0, (md_b - b_b * d_b) / (1.0 - b_b), np.nan)
    return percentile_interval(value_b, bootstrap.level)


@register_metric
class M5dDiscriminative(M5Monosemanticity):
    """Registered as ``m5d``: M5's streaming pass plus the image-level codes for each feature's AUC."""

    name = "m5d"
    config_cls: ClassVar[type[M5dConfig]] = M5dConfig  # type: ignore[assignment]
    needs_pooled = True
    needs_stream = True

    def __init__(self, config: M5dConfig, ctx: EvalContext) -> None:
        super().__init__(config, ctx)

    def finalize(self, pooled: PooledFeatures | None) -> MetricResult:
        """M5's scores of the sampled features, then each one's class AUC from the pooled codes."""
        if self.tracker.n_images == 0 or pooled is None:
            return M5dResult(metric="m5d", value=None, higher_is_better=True, note="no images were encoded")
        values_kf, index_kf, min_f, max_f = self.tracker.result()

        def embed_lazily(index_n: np.ndarray) -> np.ndarray:
            if self.embedder is None:
                self.embedder, _ = self._backbone_embedder()
            return np.asarray(self.embedder(index_n))

        baseline_store: dict[str, np.ndarray] = {}
        m5_result, table = compute_m5(values_kf, index_kf, min_f, max_f, self.ctx.cache.labels, embed_lazily,
                                      self.config, evaluator=self.evaluator, bootstrap=None,
                                      baseline_out=baseline_store)
        if not isinstance(m5_result, M5Result) or m5_result.raw is None:
            return M5dResult(metric="m5d", value=None, higher_is_better=True,
                             note=f"M5 could not be computed: {m5_result.note}")
        result, ftable = compute_m5d(table, m5_result.baseline, pooled.codes_nf, pooled.labels_n,
                                     bootstrap=self.ctx.bootstrap, baseline_g=baseline_store.get("groups"),
                                     cache_labels_n=self.ctx.cache.labels)
        if self.config.write_features and self.ctx.out_dir is not None and len(ftable):
            write_features_table(ftable, self.ctx.out_dir / FEATURES_FILE)
        return result
