"""Classification accuracy and sparse-probing AUC: known answers and a scikit-learn reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from visae.backbones.layout import TokenLayout
from visae.cache.reader import open_cache
from visae.cache.testing import write_synthetic_cache
from visae.errors import ConfigError
from visae.metrics.probes import stratified_split
from visae.tasks import run_task, task_rows
from visae.tasks.base import train_and_held_out

LAYOUT = TokenLayout(("cls",), 2, 2, 16)


def class_cache(tmp_path, name: str, n_per_class: int, sep: float, seed: int = 0, d: int = 8,
                n_classes: int = 4):
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(99).normal(size=(n_classes, d)) * sep
    labels = np.repeat(np.arange(n_classes), n_per_class)
    acts = means[labels][:, None, :] + rng.normal(size=(len(labels), LAYOUT.n_patches, d))
    return open_cache(write_synthetic_cache(tmp_path / name, acts.astype(np.float16), labels,
                                            [f"c{i}" for i in range(n_classes)], LAYOUT))


def test_separable_classes_score_one(tmp_path, make_split_sae) -> None:
    cache = class_cache(tmp_path, "cub", 15, sep=20.0)
    res = run_task("cub", make_split_sae(8), cache, {"features": ["raw", "codes", "recon"], "sparse_k": 4},
                   out_dir=tmp_path / "out", device=torch.device("cpu"))
    assert res.scores["task:cub_acc:raw"] == 1.0
    assert res.scores["task:cub_acc:codes"] == 1.0
    assert res.scores["task:cub_acc:recon"] == 1.0
    assert res.scores["task:cub_sparse_auc4:codes"] == pytest.approx(1.0)
    assert res.task == "cub" and (tmp_path / "out" / "task_cub.json").is_file()


def test_accuracy_equals_sklearn_reference(tmp_path) -> None:
    cache = class_cache(tmp_path, "dtd", 25, sep=0.6, seed=3)
    res = run_task("dtd", None, cache, device="cpu")
    acts = np.concatenate([cache.normalize(a).numpy() for _, a in cache.iter_images(group_size=1000)])
    pooled = acts.max(axis=1)
    tr, te = stratified_split(cache.labels, 0.2, 42)
    scaler = StandardScaler().fit(pooled[tr])
    clf = LogisticRegression(C=1.0, solver="lbfgs", max_iter=500).fit(scaler.transform(pooled[tr]),
                                                                      cache.labels[tr])
    ref = float(np.mean(clf.predict(scaler.transform(pooled[te])) == cache.labels[te]))
    assert res.scores["task:dtd_acc:raw"] == pytest.approx(ref)
    assert 0.3 < ref < 1.0  # a non-trivial case


def test_task_rows_with_train_and_test_caches(tmp_path, make_split_sae) -> None:
    caches = {"train": class_cache(tmp_path, "tr", 10, 20.0, seed=1),
              "val": class_cache(tmp_path, "te", 5, 20.0, seed=2)}
    saes = {"sae-a": make_split_sae(8), "sae-b": make_split_sae(8)}
    rows = task_rows("inat", caches, saes, {"sparse_k": 2}, device="cpu", seed=42)
    got = {(r["metric"], r["features"], r["sae_id"]): r["value"] for r in rows}
    assert got[("inat_acc", "raw", "")] == 1.0
    assert got[("inat_acc", "codes", "sae-a")] == 1.0 and got[("inat_acc", "codes", "sae-b")] == 1.0
    assert ("inat_sparse_auc2", "codes", "sae-b") in got
    assert len(rows) == 1 + 2 * 2


def test_train_and_held_out_takes_the_first_held_out_key_and_names_both_when_missing() -> None:
    train, test, val = object(), object(), object()
    pair = train_and_held_out({"train": train, "test": test, "val": val}, "classification", ("test", "val"))
    assert pair[0] is train and pair[1] is test
    pair = train_and_held_out({"train": train, "val": val}, "classification", ("test", "val"))
    assert pair[1] is val
    with pytest.raises(ConfigError, match=r"segmentation caches: need keys 'train' and 'val' \(or 'test'\), "
                                          r"got \['val'\]"):
        train_and_held_out({"val": val}, "segmentation", ("val", "test"))
