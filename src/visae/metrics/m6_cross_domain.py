"""M6 — cross-domain generalization (paper §4.3, Table 2, App. L/M).

For every out-of-domain dataset (iNaturalist, CUB-200, DTD in the paper; any labelled cache here), the SAE
encodes that dataset's activation caches itself (:func:`visae.metrics.encode.encode_stream`; inputs
normalized with the statistics stored in the SAE = the ImageNet training statistics, Table 2), and raw
activations, reconstructions and codes are max-pooled to image features. Three probes are trained from
scratch on the dataset's own training split — one per representation, same hyperparameters (lbfgs, C = 1,
max_iter = 500, no class weights; inputs not rescaled per column unless ``probe.standardize`` is set) —
and scored on its test split.
Preservation = acc(recon) / acc(raw); sparse code probing = mean one-vs-rest AUC of the M4 probe at k = 128.

Each dataset is given as a training cache and a test cache built by ``visae cache`` on the same backbone and
layer (official splits). A dataset given as one cache is split 80/20, stratified, seed 42 (said in the note).
``value`` is the preservation on the headline dataset (the first listed unless ``headline`` names one).

``whiten: pca|zca`` (App. C ablation, as ``m3.whiten``) whitens the raw and reconstructed features of each
dataset with one map fitted on the raw features of that dataset's training split, before the raw and the
reconstruction probes; the code probes read SAE codes and are not whitened.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from visae.cache.whitening import PROBE_WHITEN_HELP, whiten_rows, whitening_of_rows
from visae.config import FrozenConfig
from visae.errors import ConfigError
from visae.metrics.base import EvalContext, Metric, MetricConfig, MetricResult, register_metric
from visae.metrics.encode import PooledCollector, PooledFeatures, encode_stream
from visae.metrics.probes import (
    ProbeConfig,
    binary_auc,
    fit_probe,
    ovr_auc,
    rank_features,
    stratified_split,
    take_columns,
)
from visae.uncertainty import BootstrapConfig, Interval, poisson_weights, ratio_interval


class OODDataset(FrozenConfig):
    """One out-of-domain dataset as activation caches."""

    name: str = Field(description="dataset name in the result (inat, cub, dtd …)")
    train_cache: str = Field(description="cache folder of the dataset's training split")
    test_cache: str | None = Field(None,
                                   description="cache folder of its test split; None: split train_cache "
                                   "80/20, stratified, seed 42")


class M6Config(MetricConfig):
    """Settings for M6; defaults are the paper's Table 2 / App. L."""

    datasets: list[OODDataset] = Field(
        default_factory=list,
        description="out-of-domain caches: a list of {name, train_cache, test_cache}, or a "
        "mapping name → cache path / {train_cache, test_cache}")
    headline: str | None = Field(None,
                                 description="dataset whose preservation is M6's value (default: the first; "
                                 "the paper reports iNaturalist)")
    sparse_k: int = Field(128, ge=1, description="budget of the sparse code probe (paper §4.3: 128)")
    code_probe: bool = Field(True, description="also train a probe on all (dense) code features (App. L)")
    test_size: float = Field(0.2, gt=0, lt=1, description="held-out fraction when a dataset has one cache")
    seed: int = Field(42, description="split seed when a dataset has one cache")
    group_size: int = Field(64, ge=1, description="images per encoding group")
    warm_start: bool = Field(True, description="start the reconstruction probe from the raw probe's "
                                               "weights and the "
                             "all-codes probe from the top-k probe's (same objectives, fewer iterations)")
    probe: ProbeConfig = Field(default_factory=lambda: ProbeConfig(max_iter=500),
                               description="the probes (paper App. L: lbfgs, C = 1, max_iter = 500)")
    whiten: Literal["none", "pca", "zca"] = Field(
        "none", description=PROBE_WHITEN_HELP + "; per dataset, its own training split; the code probes "
                            "are not whitened")

    @field_validator("datasets", mode="before")
    @classmethod
    def _mapping_form(cls, v: Any) -> Any:
        if isinstance(v, dict):
            out = []
            for name, item in v.items():
                if isinstance(item, (str, Path)):
                    out.append({"name": name, "train_cache": str(item)})
                elif isinstance(item, dict):
                    out.append({"name": name, **item})
                else:
                    raise ValueError(f"datasets.{name}: expected a cache path or {{train_cache, test_cache}}")
            return out
        return v

    @model_validator(mode="after")
    def _check(self) -> M6Config:
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"datasets: two datasets share a name ({', '.join(names)}); give each "
                             "its own name")
        if self.headline is not None and names and self.headline not in names:
            raise ValueError(f"headline {self.headline!r} is not among the datasets ({', '.join(names)})")
        return self


class M6DatasetResult(BaseModel):
    """Probe accuracies on one out-of-domain dataset."""

    model_config = ConfigDict(extra="forbid")

    acc_raw: float = Field(description="test accuracy of the probe on raw features")
    acc_recon: float = Field(description="test accuracy of the probe on reconstructed features")
    acc_codes: float | None = Field(description="test accuracy of the probe on all code features")
    preservation: float | None = Field(description="acc_recon / acc_raw")
    sparse_auc: float | None = Field(description="mean one-vs-rest AUC of the code probe on the "
                                                 "top-k features")
    sparse_k: int = Field(description="k of sparse_auc (min of the configured k and the dictionary size)")
    n_train: int = Field(description="training images")
    n_test: int = Field(description="test images")
    n_classes: int = Field(description="classes in the training split")
    split: str = Field(description="'caches' (official train/test caches) or 'internal 80/20'")
    preservation_ci_low: float | None = Field(None, description="lower end of the bootstrap interval of "
                                              "preservation over test images (probes not refitted)")
    preservation_ci_high: float | None = Field(None, description="its upper end")


class M6Result(MetricResult):
    """M6: ``value`` = preservation acc(recon)/acc(raw) on the headline dataset."""

    headline: str | None = Field(description="dataset of ``value``")
    datasets: dict[str, M6DatasetResult] = Field(description="per-dataset accuracies")


def compute_m6_dataset(train: PooledFeatures, test: PooledFeatures, config: M6Config,
                       split: str = "caches", bootstrap: BootstrapConfig | None = None) -> M6DatasetResult:
    """Probe raw, reconstructed and code features of one dataset (pooled train and test features); with
    ``bootstrap``, an interval of preservation over the test images."""
    y_tr, y_te = train.labels_n, test.labels_n
    if config.whiten != "none":  # one map, fitted on the raw training features, for raw and recon alike
        w = whitening_of_rows(config.whiten, train.acts_nd)
        train = PooledFeatures(labels_n=y_tr, acts_nd=whiten_rows(w, train.acts_nd),
                               recon_nd=whiten_rows(w, train.recon_nd), codes_nf=train.codes_nf)
        test = PooledFeatures(labels_n=y_te, acts_nd=whiten_rows(w, test.acts_nd),
                              recon_nd=whiten_rows(w, test.recon_nd), codes_nf=test.codes_nf)
    warm = config.warm_start  # reconstructions start from the raw probe; all codes from the top-k probe
    p_raw = fit_probe(train.acts_nd, y_tr, config.probe)
    right_raw = p_raw.predict(test.acts_nd) == y_te
    p_recon = fit_probe(train.recon_nd, y_tr, config.probe, init=p_raw if warm else None)
    right_recon = p_recon.predict(test.recon_nd) == y_te
    acc_raw, acc_recon = float(right_raw.mean()), float(right_recon.mean())
    interval = None
    if bootstrap is not None and bootstrap.n_boot > 0 and acc_raw > 0:
        w_nb = poisson_weights(np.arange(len(y_te)), bootstrap.n_boot, bootstrap.seed).astype(np.float64)
        interval = ratio_interval(right_recon @ w_nb, right_raw @ w_nb, bootstrap.level)
    k = min(config.sparse_k, train.codes_nf.shape[1])
    top = rank_features(train.codes_nf, y_tr)[:k]
    p_top = fit_probe(take_columns(train.codes_nf, top), y_tr, config.probe)
    x_te = take_columns(test.codes_nf, top)
    if len(p_top.classes) == 2:
        auc = binary_auc(y_te == p_top.classes[1], p_top.decision_function(x_te))
    else:
        auc = float(np.nanmean(ovr_auc(y_te, p_top.predict_proba(x_te), p_top.classes)))
    acc_codes = None
    if config.code_probe:
        p_codes = fit_probe(train.codes_nf, y_tr, config.probe, init=p_top if warm else None, init_cols=top)
        acc_codes = p_codes.accuracy(test.codes_nf.toarray(), y_te)
    return M6DatasetResult(acc_raw=acc_raw, acc_recon=acc_recon, acc_codes=acc_codes,
                           preservation=acc_recon / acc_raw if acc_raw > 0 else None,
                           sparse_auc=None if auc is None or np.isnan(auc) else auc, sparse_k=k,
                           n_train=len(y_tr), n_test=len(y_te), n_classes=len(np.unique(y_tr)), split=split,
                           preservation_ci_low=interval.low if interval else None,
                           preservation_ci_high=interval.high if interval else None)


def _rows(p: PooledFeatures, idx: np.ndarray) -> PooledFeatures:
    return PooledFeatures(labels_n=p.labels_n[idx], acts_nd=p.acts_nd[idx], recon_nd=p.recon_nd[idx],
                          codes_nf=p.codes_nf[idx])


def pool_cache(ctx: EvalContext, path: str, group_size: int) -> PooledFeatures:
    """Encode one cache with the context's SAE and max-pool raw, reconstructed and code features."""
    from visae.cache.reader import open_cache

    cache = open_cache(path)
    collector = PooledCollector()
    for batch in encode_stream(ctx.sae, cache, group_size=group_size, device=ctx.device, dense_codes=False):
        collector.update(batch)
    return collector.result()


def compute_m6(ctx: EvalContext, config: M6Config) -> M6Result:
    """M6 over every configured dataset."""
    if not config.datasets:
        return M6Result(metric="m6", value=None, higher_is_better=True, headline=None, datasets={},
                        note="no out-of-domain dataset configured (m6.datasets)")
    names = [dataset.name for dataset in config.datasets]
    if config.headline is not None and config.headline not in names:
        raise ConfigError(f"m6.headline={config.headline!r}: not among m6.datasets ({', '.join(names)})")
    out: dict[str, M6DatasetResult] = {}
    for ds in config.datasets:
        train = pool_cache(ctx, ds.train_cache, config.group_size)
        if ds.test_cache is not None:
            test = pool_cache(ctx, ds.test_cache, config.group_size)
            split = "caches"
        else:
            tr, te = stratified_split(train.labels_n, config.test_size, config.seed)
            train, test, split = _rows(train, tr), _rows(train, te), "internal 80/20"
        out[ds.name] = compute_m6_dataset(train, test, config, split, ctx.bootstrap)
    head = config.headline or names[0]
    internal = [name for name, result in out.items() if result.split != "caches"]
    note = (f"no test cache for {', '.join(internal)}: split 80/20 stratified, seed {config.seed}"
            if internal else "")
    if out[head].preservation is None:
        note = "; ".join(filter(None, [note, f"{head}: the raw probe has accuracy 0, so preservation "
                                             "acc_recon / acc_raw is undefined"]))
    result = M6Result(metric="m6", value=out[head].preservation, higher_is_better=True, note=note,
                      headline=head, datasets=out)
    if out[head].preservation_ci_low is None or out[head].preservation_ci_high is None:
        return result
    interval = Interval(out[head].preservation_ci_low, out[head].preservation_ci_high, ctx.bootstrap.level,
                        ctx.bootstrap.n_boot, "bootstrap")
    return typing.cast(M6Result, result.with_interval(interval, unit=f"{head} test images"))


@register_metric
class M6CrossDomain(Metric[M6Config]):
    """Registered as ``m6``; encodes its own out-of-domain caches (the evaluation cache is not used)."""

    name: ClassVar[str] = "m6"
    needs_pooled: ClassVar[bool] = False
    needs_stream: ClassVar[bool] = False

    def finalize(self, pooled: PooledFeatures | None) -> MetricResult:
        """Encode every out-of-domain cache and probe it."""
        return compute_m6(self.ctx, self.config)
