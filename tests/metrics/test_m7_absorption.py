"""M7: a hand-built absorbed class and a non-absorbed one are classified correctly; grid; metric wrapper."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from visae.backbones.layout import TokenLayout
from visae.cache.testing import write_synthetic_cache
from visae.metrics.m7_absorption import M7Config, absorption_rate, compute_m7
from visae.sae.base import SAE


def planted(n: int = 800, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Classes 0–3 in one sibling group: class 0 has one indicator feature (3); class 1's signal is split over
    features 10–13, each image of class 1 firing exactly one of them at random."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    codes = (np.maximum(rng.normal(size=(n, 40)), 0) * (rng.random((n, 40)) < 0.2)).astype(np.float32)
    codes[:, 3] = y == 0
    which = rng.integers(0, 4, n)
    for j in range(4):
        codes[:, 10 + j] = (y == 1) & (which == j)
    return codes, y


def test_split_signal_is_absorbed_and_indicator_is_not() -> None:
    codes, y = planted()
    result, tasks = compute_m7(codes, y, [[0, 1, 2, 3]])
    by_class = {t["class_index"]: t for t in tasks}
    assert by_class[0]["f1_k1"] == 1.0 and by_class[0]["absorbed"] is False
    assert by_class[0]["features_k1"] == [3]
    assert by_class[1]["f1_k1"] < 0.8 and by_class[1]["f1_k4"] > 0.5 and by_class[1]["absorbed"] is True
    assert sorted(by_class[1]["features_k4"]) == [10, 11, 12, 13]
    assert result.n_tasks == 4 and result.value == result.n_absorbed / result.n_tasks
    assert len(result.grid) == 9 and {(g.alpha, g.beta) for g in result.grid} == {
        (a, b) for a in (0.7, 0.8, 0.9) for b in (0.3, 0.5, 0.7)}


def test_absorption_rate_closed_form() -> None:
    f1 = np.array([0.2, 0.9, 0.75, 0.5])
    f4 = np.array([0.6, 0.95, 0.4, 0.9])
    assert absorption_rate(f1, f4, 0.8, 0.5) == 0.5
    assert absorption_rate(f1, f4, 0.7, 0.3) == 0.5
    assert absorption_rate(f1, f4, 0.9, 0.3) == 0.75
    assert absorption_rate(np.array([]), np.array([]), 0.8, 0.5) is None


class CodesSAE(SAE):
    """Passes its (already sparse) input through as codes: lets a cache hold planted codes."""

    family = "test-identity"

    def encode(self, x_nd: torch.Tensor) -> torch.Tensor:
        return torch.relu(x_nd)

    def decode(self, codes_nf: torch.Tensor) -> torch.Tensor:
        return codes_nf


def test_m7_metric_uses_the_fashion_mnist_hierarchy(tmp_path) -> None:
    from visae.metrics.evaluate import evaluate

    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
             "Ankle boot"]
    rng = np.random.default_rng(0)
    y = np.arange(600) % 10
    acts = (rng.random((600, 4, 12)) < 0.05).astype(np.float32)
    acts[:, :, :10] = 0.0
    acts[np.arange(600), 0, y] = 1.0  # features 0–9 = class indicators; 10, 11 noise
    cache = write_synthetic_cache(tmp_path / "c", acts, y, names, TokenLayout(("cls",), 2, 2, 14))
    sae = CodesSAE(12, 12)
    res = evaluate(sae, cache, metrics=["m7"], out_dir=tmp_path / "out",
                   configs={"m7": {"probe": {"max_iter": 200}}},
                   device="cpu")
    r = res["m7"]
    assert r.hierarchy == "fashion-mnist" and r.n_groups == 2 and r.n_tasks == 7 and r.value == 0.0
    df = pd.read_parquet(tmp_path / "out" / "m7_tasks.parquet")
    assert set(df["class_name"]) == {"T-shirt/top", "Pullover", "Coat", "Shirt", "Sandal", "Sneaker",
                                     "Ankle boot"}
    assert (df["f1_k1"] == 1.0).all()


def test_m7_without_a_matching_hierarchy_reports_none(tmp_path) -> None:
    from visae.metrics.evaluate import evaluate

    y = np.arange(60) % 3
    acts = np.random.default_rng(0).random((60, 4, 6)).astype(np.float32)
    cache = write_synthetic_cache(tmp_path / "c", acts, y, ["0", "1", "2"], TokenLayout(("cls",), 2, 2, 14))
    r = evaluate(CodesSAE(6, 6), cache, metrics=["m7"], configs={"m7": M7Config()}, device="cpu")["m7"]
    assert r.value is None and "hierarchy" in r.note
