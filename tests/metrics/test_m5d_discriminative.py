"""M5d (discriminability-weighted consistency, §5.5): the AUC against sklearn, and closed-form answers on
planted features — consistent across two classes (D = 1 − 1/(K − 1)) against consistent on one (D = 1)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from sklearn.metrics import roc_auc_score

from visae.metrics.base import METRICS, EvalContext
from visae.metrics.encode import EncodedBatch, PooledFeatures
from visae.metrics.m5_monosemanticity import M5Config, StreamingTopN, compute_m5
from visae.metrics.m5d_discriminative import (
    FEATURES_FILE,
    M5dConfig,
    M5dDiscriminative,
    M5dResult,
    compute_m5d,
    ovr_auc,
    target_classes,
)
from visae.uncertainty import BootstrapConfig

K_CLASSES, PER_CLASS = 4, 30


def test_ovr_auc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(300), 1)  # many ties
    y = rng.random(300) < 0.3
    assert ovr_auc(scores, y) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    assert np.isnan(ovr_auc(scores, np.zeros(300, dtype=bool)))


def test_target_class_by_weight_then_smallest_label() -> None:
    labels = np.array([[2, 2, 1, 1], [3, 0, 0, 3], [5, 5, 4, 4]])
    weights = np.array([[0.1, 0.1, 1.0, 0.5], [1.0, 0.5, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert target_classes(labels, weights).tolist() == [1, 0, 4]


def planted() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled codes [n, 3], labels, embeddings. Feature 0 fires (value 1) on every image of classes 0
    and 1; feature 1 fires on every image of class 0; feature 2 fires on random images of all classes.
    Images of classes 0 and 1 share one embedding (so features 0 and 1 have MS = 1)."""
    rng = np.random.default_rng(1)
    n = K_CLASSES * PER_CLASS
    labels = np.arange(n) % K_CLASSES
    pooled = np.zeros((n, 3), dtype=np.float32)
    pooled[:, 0] = np.isin(labels, [0, 1])
    pooled[:, 1] = labels == 0
    pooled[:, 2] = rng.random(n) * (rng.random(n) < 0.5)
    emb = rng.normal(size=(n, 16)) + 1.0
    emb[np.isin(labels, [0, 1])] = emb[0]
    return pooled, labels, emb.astype(np.float32)


def run(pooled: np.ndarray, labels: np.ndarray, emb: np.ndarray,
        bootstrap: BootstrapConfig | None = None) -> tuple[M5dResult, pd.DataFrame]:
    tracker = StreamingTopN(16)
    tracker.update(torch.from_numpy(pooled), np.arange(len(pooled)))
    groups: dict[str, np.ndarray] = {}
    m5, table = compute_m5(*tracker.result(), labels, lambda i: emb[i], M5Config(), baseline_out=groups)
    return compute_m5d(table, m5.baseline, sp.csr_matrix(pooled), labels, bootstrap=bootstrap,
                       baseline_g=groups["groups"])


def test_planted_known_answers() -> None:
    pooled, labels, emb = planted()
    result, table = run(pooled, labels, emb)
    row = table.set_index("feature")
    # two of four equal classes: AUC for class 0 = P(neg below) + ½ P(tie) = 2/3 + 1/2 · 1/3 = 5/6
    assert row.loc[0, "target_class"] == 0 and row.loc[1, "target_class"] == 0
    assert row.loc[0, "auc"] == pytest.approx(5 / 6)
    assert row.loc[0, "discriminability"] == pytest.approx(2 / 3)
    assert row.loc[1, "auc"] == pytest.approx(1.0) and row.loc[1, "discriminability"] == pytest.approx(1.0)
    # both are perfectly consistent (MS = 1, so normalized consistency 1): M5 cannot tell them apart, M5d can
    assert row.loc[0, "ms"] == pytest.approx(1.0) and row.loc[1, "ms"] == pytest.approx(1.0)
    assert row.loc[0, "m5d"] == pytest.approx(2 / 3) and row.loc[1, "m5d"] == pytest.approx(1.0)
    b = result.baseline
    assert b is not None and 0 < b < 1
    expected = np.mean([(ms - b) / (1 - b) * d
                        for ms, d in zip(row["ms"], row["discriminability"], strict=True)])
    assert result.value == pytest.approx(expected)
    assert result.raw == pytest.approx(np.mean(row["ms"] * row["discriminability"]))
    assert result.n_defined == 3
    assert result.mean_discriminability == pytest.approx(row["discriminability"].mean())


def test_random_feature_has_small_discriminability_and_interval_covers() -> None:
    pooled, labels, emb = planted()
    result, table = run(pooled, labels, emb, BootstrapConfig(n_boot=200))
    assert table.set_index("feature").loc[2, "discriminability"] < 0.35
    assert result.ci_low is not None and result.ci_high is not None
    assert result.ci_low <= result.value <= result.ci_high  # type: ignore[operator]


def test_registered_metric_streams_and_writes(tmp_path: Path) -> None:
    assert METRICS["m5d"] is M5dDiscriminative
    pooled, labels, emb = planted()
    n = len(labels)
    codes_npf = np.repeat(pooled[:, None, :], 4, axis=1)
    codes_npf[:, 1:] *= 0.5  # max over patches stays the planted value
    ctx = EvalContext(sae=None, cache=SimpleNamespace(labels=labels), device=torch.device("cpu"),  # type: ignore[arg-type]
                      out_dir=tmp_path, backbone="synthetic", extras={"m5_embedder": lambda idx: emb[idx]},
                      bootstrap=BootstrapConfig(n_boot=0))
    metric = M5dDiscriminative(M5dConfig(), ctx)
    for s in range(0, n, 32):
        metric.update(EncodedBatch(image_index_n=np.arange(s, min(n, s + 32)), labels_n=labels[s:s + 32],
                                   acts_npd=torch.zeros(0), codes_npf=torch.from_numpy(codes_npf[s:s + 32]),
                                   recon_npd=torch.zeros(0), grid_hw=(2, 2)))
    empty = np.zeros((n, 0), np.float32)
    got = metric.finalize(PooledFeatures(labels_n=labels, acts_nd=empty, recon_nd=empty,
                                         codes_nf=sp.csr_matrix(pooled)))
    expected, _ = run(pooled, labels, emb)
    assert isinstance(got, M5dResult) and got.value == pytest.approx(expected.value, abs=1e-12)
    assert len(pd.read_parquet(tmp_path / FEATURES_FILE)) == 3
