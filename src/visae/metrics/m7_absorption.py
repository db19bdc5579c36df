"""M7 — probe-based feature absorption rate (paper §4.4, Table 2, App. N).

Codes are max-pooled over patches; the evaluation cache is split 80/20, stratified by class, seed 42 (the
probe-training split). For every sibling group of the label hierarchy with at least 3 classes present, and
every class c of the group, a binary task separates images of c from images of its siblings. Its features are
ranked by ``f_classif`` (class vs siblings) on the task's training images; logistic probes (lbfgs, C = 1,
max_iter = 500, no class weights; inputs not rescaled per column unless ``probe.standardize`` is set) on the
top 1 and the top 4 features are scored by F1 of class c on the task's held-out images. A task is *absorbed*
when ``F1(k=1) < α`` and ``F1(k=4) > β`` (α = 0.8, β = 0.5); M7 is the absorbed fraction of the eligible tasks
(lower is better). Tasks whose class or siblings are missing from either split are not eligible. The App. N
grid (α × β) comes in the same call.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, ClassVar

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from visae.cache.whitening import refuse_probe_whiten
from visae.errors import ConfigError
from visae.metrics.base import Metric, MetricConfig, MetricResult, register_metric
from visae.metrics.encode import PooledFeatures
from visae.metrics.probes import (
    ArrayLike,
    ProbeConfig,
    binary_f1,
    fit_probe,
    rank_features,
    stratified_split,
    take_columns,
)
from visae.uncertainty import BootstrapConfig, percentile_interval, weighted_replicates

TASKS_TABLE = "m7_tasks.parquet"
CACHE_HIERARCHY = "hierarchy.json"
"""A hierarchy file in the cache folder, read under ``hierarchy: auto`` (``visae synth`` plants one)."""


class M7Config(MetricConfig):
    """Settings for M7; defaults are the paper's Table 2."""

    hierarchy: str = Field("auto",
                           description="'auto' (the cache folder's hierarchy.json when it has one, else "
                           "the shipped hierarchy matching the cache's class names: "
                           "ImageNet wnids/lemmas → 'imagenet', or Fashion-MNIST), a shipped name "
                           "('imagenet': the paper-literal depth-1 WordNet siblings, the default; "
                           "'imagenet-authors': the authors' release, depth-1 + depth-2 groups; "
                           "'fashion_mnist') or the path of a hierarchy JSON file (format: "
                           "visae.datasets.hierarchy)")
    min_group_size: int = Field(3, ge=2, description="smallest sibling group used (paper Table 2: 3)")
    alpha: float = Field(0.8, ge=0, le=1, description="absorbed needs F1(k=1) < alpha (paper §4.4: 0.8)")
    beta: float = Field(0.5, ge=0, le=1, description="absorbed needs F1(k=4) > beta (paper §4.4: 0.5)")
    k_small: int = Field(1, ge=1, description="the single-feature budget (paper: 1)")
    k_large: int = Field(4, ge=1, description="the small-set budget (paper: 4)")
    alphas: list[Annotated[float, Field(ge=0, le=1)]] = Field([0.7, 0.8, 0.9],
                                                              description="sensitivity grid α values "
                                                                          "(paper App. N)")
    betas: list[Annotated[float, Field(ge=0, le=1)]] = Field([0.3, 0.5, 0.7],
                                                             description="sensitivity grid β values "
                                                                         "(paper App. N)")
    test_size: float = Field(0.2, gt=0, lt=1,
                             description="held-out fraction, stratified (paper Table 2: 0.2)")
    seed: int = Field(42, description="split seed (paper Table 2: 42)")
    probe: ProbeConfig = Field(default_factory=lambda: ProbeConfig(max_iter=500),
                               description="the probe (paper Table 2: lbfgs, C = 1, max_iter = 500)")
    write_tasks: bool = Field(True, description=f"write per-task detail to <out>/{TASKS_TABLE}")
    whiten: str = Field("none", description="not applicable: M7 probes SAE codes, which are not "
                                           "whitened (only 'none' is accepted; see m3.whiten)")

    @field_validator("whiten")
    @classmethod
    def _no_whiten(cls, v: str) -> str:
        return refuse_probe_whiten("m7", v, "M7's probes read SAE codes, not activations")

    @model_validator(mode="after")
    def _check(self) -> M7Config:
        if self.k_small >= self.k_large:
            raise ValueError(f"k_small ({self.k_small}) must be smaller than k_large ({self.k_large}); "
                             "the paper uses k_small=1, k_large=4")
        return self


class M7GridPoint(BaseModel):
    """Absorption rate at one (α, β) setting."""

    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(description="F1(k=1) threshold")
    beta: float = Field(description="F1(k=4) threshold")
    rate: float | None = Field(description="absorbed fraction of eligible tasks")


class M7Result(MetricResult):
    """M7: ``value`` = absorbed fraction of the eligible class-vs-sibling tasks (lower is better)."""

    n_tasks: int = Field(description="eligible class-vs-sibling tasks")
    n_absorbed: int = Field(description="tasks absorbed at the default (alpha, beta)")
    n_groups: int = Field(description="sibling groups used")
    hierarchy: str = Field(description="name of the hierarchy used")
    mean_f1_k1: float | None = Field(description="mean F1 of the top-1 probes")
    mean_f1_k4: float | None = Field(description="mean F1 of the top-4 probes")
    grid: list[M7GridPoint] = Field(description="App. N sensitivity: rate at every alpha × beta")


def absorption_tasks(codes_nf: ArrayLike, labels_n: np.ndarray, groups: list[list[int]],
                     config: M7Config | None = None,
                     group_names: list[str] | None = None) -> list[dict[str, object]]:
    """One record per eligible class-vs-siblings task: group, class, features used, F1 at both budgets."""
    config = config or M7Config()
    codes = sp.csr_matrix(codes_nf) if sp.issparse(codes_nf) else np.asarray(codes_nf)
    labels_n = np.asarray(labels_n)
    train, test = stratified_split(labels_n, config.test_size, config.seed)
    tasks: list[dict[str, object]] = []
    for group, members in enumerate(groups):
        tr = train[np.isin(labels_n[train], members)]
        te = test[np.isin(labels_n[test], members)]
        x_tr, x_te = codes[tr], codes[te]
        for cls in members:
            pos_tr = labels_n[tr] == cls
            pos_te = labels_n[te] == cls
            if not (pos_tr.any() and (~pos_tr).any() and pos_te.any() and (~pos_te).any()):
                continue
            order = rank_features(x_tr, pos_tr.astype(np.int64))
            rec: dict[str, object] = {"group": group_names[group] if group_names else str(group),
                                      "class_index": int(cls),
                                      "n_train": len(tr), "n_test": len(te),
                                      "n_pos_test": int(pos_te.sum())}
            for n_features, key in ((config.k_small, "k1"), (config.k_large, "k4")):
                cols = order[:n_features]
                probe = fit_probe(take_columns(x_tr, cols), pos_tr.astype(np.int64), config.probe)
                pred = probe.predict(take_columns(x_te, cols)).astype(bool)
                rec[f"f1_{key}"] = binary_f1(pos_te, pred)
                rec[f"features_{key}"] = [int(feature) for feature in cols]
            tasks.append(rec)
    return tasks


def absorption_rate(f1_small: np.ndarray, f1_large: np.ndarray, alpha: float, beta: float) -> float | None:
    """Fraction of tasks with F1(small) < alpha and F1(large) > beta; None without tasks."""
    if len(f1_small) == 0:
        return None
    return float(np.mean((f1_small < alpha) & (f1_large > beta)))


def compute_m7(codes_nf: ArrayLike, labels_n: np.ndarray, groups: list[list[int]],
               config: M7Config | None = None,
               group_names: list[str] | None = None,
               hierarchy_name: str = "",
               bootstrap: BootstrapConfig | None = None) -> tuple[M7Result, list[dict[str, object]]]:
    """M7 and its per-task records on image-level codes, for sibling ``groups`` of class indices; with
    ``bootstrap``, an interval of the rate over the class-vs-sibling tasks (its unit)."""
    config = config or M7Config()
    tasks = absorption_tasks(codes_nf, labels_n, groups, config, group_names)
    f1_1 = np.array([t["f1_k1"] for t in tasks], dtype=np.float64)
    f1_4 = np.array([t["f1_k4"] for t in tasks], dtype=np.float64)
    for t in tasks:
        t["absorbed"] = bool(float(t["f1_k1"]) < config.alpha and float(t["f1_k4"]) > config.beta)  # type: ignore[arg-type]
    value = absorption_rate(f1_1, f1_4, config.alpha, config.beta)
    grid = [M7GridPoint(alpha=a, beta=b, rate=absorption_rate(f1_1, f1_4, a, b))
            for a in config.alphas for b in config.betas]
    none_eligible = ("no eligible class-vs-sibling task (no sibling group of the hierarchy with classes "
                     "in both splits)")
    note = "" if tasks else none_eligible
    result = M7Result(metric="m7", value=value, higher_is_better=False, note=note, n_tasks=len(tasks),
                      n_absorbed=int(sum(bool(t["absorbed"]) for t in tasks)), n_groups=len(groups),
                      hierarchy=hierarchy_name, mean_f1_k1=float(f1_1.mean()) if tasks else None,
                      mean_f1_k4=float(f1_4.mean()) if tasks else None, grid=grid)
    if bootstrap is None or bootstrap.n_boot == 0 or len(tasks) < 2:
        return result, tasks
    absorbed = np.array([bool(t["absorbed"]) for t in tasks], dtype=np.float64)
    reps = weighted_replicates(absorbed, np.arange(len(tasks)), bootstrap)
    return typing.cast(M7Result, result.with_interval(percentile_interval(reps, bootstrap.level),
                                                       unit="class-vs-sibling tasks")), tasks


def write_tasks(path: Path, tasks: list[dict[str, object]], class_names: list[str]) -> None:
    """Per-task detail as Parquet (group, class, F1 at both budgets, features, absorbed)."""
    import pandas as pd

    from visae.io import atomic_write_with

    df = pd.DataFrame(tasks, columns=["group", "class_index", "n_train", "n_test", "n_pos_test", "f1_k1",
                                      "features_k1", "f1_k4", "features_k4", "absorbed"])
    df.insert(2, "class_name", [class_names[int(i)] if int(i) < len(class_names) else str(i)
                                for i in df["class_index"]])
    atomic_write_with(path, lambda tmp: df.to_parquet(tmp, index=False))


@register_metric
class M7Absorption(Metric[M7Config]):
    """Registered as ``m7``."""

    name: ClassVar[str] = "m7"
    needs_pooled: ClassVar[bool] = True
    min_classes: ClassVar[int] = 2  # fits class probes
    needs_stream: ClassVar[bool] = False

    def finalize(self, pooled: PooledFeatures | None) -> MetricResult:
        """Build the tasks from the hierarchy matching the cache's classes, probe them, write the detail."""
        from visae.datasets.hierarchy import load_hierarchy

        if pooled is None:
            raise ValueError("m7: needs the pooled features of the evaluation pass")
        class_names = list(self.ctx.cache.class_names)
        spec = self.config.hierarchy
        if spec == "auto" and (self.ctx.cache.path / CACHE_HIERARCHY).is_file():
            spec = str(self.ctx.cache.path / CACHE_HIERARCHY)  # e.g. a synthetic cache's planted hierarchy
        hierarchy = load_hierarchy(spec, class_names, self.config.min_group_size)
        named = hierarchy.named_sibling_groups(class_names, self.config.min_group_size) if hierarchy else []
        if not named:
            if self.config.hierarchy != "auto":
                raise ConfigError(f"m7.hierarchy={self.config.hierarchy!r}: no sibling group of ≥ "
                                  f"{self.config.min_group_size} classes matches the cache's class names "
                                  f"({', '.join(class_names[:5])} …); check the names in the hierarchy file")
            return M7Result(metric="m7", value=None, higher_is_better=False,
                            note="no shipped hierarchy matches the cache's class names; set m7.hierarchy to "
                                 "a hierarchy JSON file", n_tasks=0, n_absorbed=0, n_groups=0, hierarchy="",
                            mean_f1_k1=None, mean_f1_k4=None, grid=[])
        result, tasks = compute_m7(pooled.codes_nf, pooled.labels_n, [g for _, g in named], self.config,
                                   [n for n, _ in named], hierarchy.name if hierarchy else "",
                                   self.ctx.bootstrap)
        if self.ctx.out_dir is not None and self.config.write_tasks:
            write_tasks(self.ctx.out_dir / TASKS_TABLE, tasks, class_names)
        return result
