"""Fine-grained / texture classification accuracy and sparse-probing AUC (H2, H4; CUB-200, DTD, iNaturalist).

Protocol (the M6 probes, paper Table 2): image features are max-pooled over patches; a multinomial logistic
probe (:func:`visae.metrics.probes.fit_probe`: lbfgs, C = 1, no class weights, ``max_iter`` 500; inputs
standardized on the training split only with ``probe.standardize``) is trained on the dataset's training
images and scored on its test images, for each feature kind: accuracy → ``task:<name>_acc:<features>``. Sparse
probing (codes only): features ranked once by ANOVA F (``f_classif``) on the training split, a probe on the
top ``sparse_k``, mean one-vs-rest AUC over the test classes → ``task:<name>_sparse_auc<k>:codes``.

Train and test: two caches (``{"train": …, "test": …}``), or one cache split 80/20, stratified, seed 42.
Code columns never active on the training images are dropped before the probe (their weights would be 0).

``whiten: pca|zca`` (App. C ablation, as ``m3.whiten``): raw and reconstructed features are whitened with one
map fitted on the raw features of the training split (raw features are pooled for the fit even when only
``recon`` is asked for); codes are not whitened.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import Field

from visae.cache.reader import ActivationCache
from visae.cache.whitening import PROBE_WHITEN_HELP, whiten_rows, whitening_of_rows
from visae.metrics.probes import (
    ProbeConfig,
    fit_probe,
    ovr_auc,
    rank_features,
    stratified_split,
    take_columns,
)
from visae.sae.base import SAE
from visae.tasks.base import (
    TaskConfig,
    TaskResult,
    check_features,
    headline,
    pooled_features,
    train_and_held_out,
)
from visae.tasks.registry import TaskSpec


class ClassificationConfig(TaskConfig):
    """Settings of the classification task."""

    name: str = Field("classification",
                      description="dataset name used in metric names, e.g. cub → task:cub_acc:raw")
    sparse_k: int | None = Field(128, ge=1,
                                 description="sparse-probing budget on codes (paper H4: 128); None skips it")
    test_size: float = Field(0.2, gt=0, lt=1,
                             description="single-cache mode: stratified test fraction (paper Table 2: 0.2)")
    probe: ProbeConfig = Field(default_factory=lambda: ProbeConfig(max_iter=500),
                               description="logistic probe settings (paper Table 2: lbfgs, C = 1, max_iter "
                                           "500 for M6)")
    whiten: Literal["none", "pca", "zca"] = Field("none", description=PROBE_WHITEN_HELP + "; codes are not "
                                                                                       "whitened")


def live_columns(x_train: sp.csr_matrix) -> np.ndarray:
    """Columns with at least one non-zero on the training rows."""
    return np.flatnonzero(np.diff(sp.csc_matrix(x_train).indptr) > 0)


def probe_accuracy(x_train: np.ndarray | sp.csr_matrix, y_train: np.ndarray,
                   x_test: np.ndarray | sp.csr_matrix,
                   y_test: np.ndarray, probe: ProbeConfig) -> float:
    """Test accuracy of the paper's probe trained on ``x_train`` (sparse inputs: live columns only)."""
    if sp.issparse(x_train):
        cols = live_columns(sp.csr_matrix(x_train))
        if len(cols) == 0:
            return float(np.mean(y_test == np.bincount(y_train).argmax()))
        x_train, x_test = take_columns(x_train, cols), take_columns(x_test, cols)
    return fit_probe(np.asarray(x_train), y_train, probe).accuracy(np.asarray(x_test), y_test)


def sparse_probe_auc(x_train: np.ndarray | sp.csr_matrix, y_train: np.ndarray,
                     x_test: np.ndarray | sp.csr_matrix,
                     y_test: np.ndarray, k: int, probe: ProbeConfig) -> tuple[float | None, int]:
    """Mean one-vs-rest test AUC of a probe on the top-``k`` features by ANOVA F, and the k actually used."""
    ranked = rank_features(x_train, y_train)
    if sp.issparse(x_train):
        live = set(live_columns(sp.csr_matrix(x_train)).tolist())
        ranked = np.array([c for c in ranked if c in live], dtype=np.int64)
    cols = ranked[:k]
    if len(cols) == 0:
        return None, 0
    model = fit_probe(take_columns(x_train, cols), y_train, probe)
    aucs = ovr_auc(y_test, model.predict_proba(take_columns(x_test, cols)), model.classes)
    finite = aucs[np.isfinite(aucs)]
    return (float(finite.mean()) if len(finite) else None), len(cols)


def whiten_pooled(kind: str, train: dict[str, np.ndarray | sp.csr_matrix],
                  test: dict[str, np.ndarray | sp.csr_matrix]) -> None:
    """Whiten the ``raw`` and ``recon`` entries of ``train`` and ``test`` in place with one map fitted on
    ``train["raw"]``; codes are left as they are."""
    w = whitening_of_rows(kind, np.asarray(train["raw"]))
    for feats in (train, test):
        for k in ("raw", "recon"):
            if k in feats:
                feats[k] = whiten_rows(w, np.asarray(feats[k]))


def run_classification(sae: SAE | None, caches: ActivationCache | Mapping[str, ActivationCache],
                       config: ClassificationConfig, device: torch.device) -> TaskResult:
    """Probe accuracy on raw / codes / recon pooled features, and sparse-probing AUC on codes."""
    kinds = check_features(config.features, sae)
    whiten = config.whiten != "none" and ("raw" in kinds or "recon" in kinds)
    pooled = [*kinds, "raw"] if whiten and "raw" not in kinds else kinds  # the whitening is fitted on raw
    if isinstance(caches, ActivationCache):
        feats = pooled_features(caches, sae, pooled, device, config.group_size)
        labels = caches.labels
        tr, te = stratified_split(labels, config.test_size, config.seed)
        train = {kind: values[tr] for kind, values in feats.items()}
        test = {kind: values[te] for kind, values in feats.items()}
        y_train, y_test = labels[tr], labels[te]
        split = (f"one cache, stratified {1 - config.test_size:.0%}/{config.test_size:.0%} split "
                 f"(seed {config.seed})")
    else:
        train_cache, test_cache = train_and_held_out(caches, "classification", ("test", "val"))
        train = pooled_features(train_cache, sae, pooled, device, config.group_size)
        test = pooled_features(test_cache, sae, pooled, device, config.group_size)
        y_train, y_test = train_cache.labels, test_cache.labels
        split = "train and test caches"
    if whiten:
        whiten_pooled(config.whiten, train, test)
    scores: dict[str, float | None] = {}
    notes = []
    for kind in kinds:
        scores[f"task:{config.name}_acc:{kind}"] = probe_accuracy(train[kind], y_train, test[kind], y_test,
                                                                  config.probe)
    if config.sparse_k is not None and "codes" in kinds:
        auc, used = sparse_probe_auc(train["codes"], y_train, test["codes"], y_test, config.sparse_k,
                                     config.probe)
        scores[f"task:{config.name}_sparse_auc{config.sparse_k}:codes"] = auc
        if used < config.sparse_k:
            notes.append(f"sparse probing used {used} live features (< k = {config.sparse_k})")
    protocol = (f"{split}: {len(y_train)} train / {len(y_test)} test images; logistic probe on "
                "max-pooled features"
                + (f"; sparse probe on the top {config.sparse_k} codes by ANOVA F"
                   if config.sparse_k else "")
                + (f"; raw/recon {config.whiten}-whitened (fitted on the raw training features)"
                   if whiten else ""))
    return TaskResult(metric=f"task:{config.name}", task=config.name,
                      value=headline(scores, f"{config.name}_acc"),
                      higher_is_better=True, scores=scores, protocol=protocol, n_train=len(y_train),
                      n_eval=len(y_test), note="; ".join(notes))


CLASSIFICATION = TaskSpec(ClassificationConfig, run_classification)
CUB = TaskSpec(ClassificationConfig, run_classification, {"name": "cub"})
DTD = TaskSpec(ClassificationConfig, run_classification, {"name": "dtd"})
INAT = TaskSpec(ClassificationConfig, run_classification, {"name": "inat"})
