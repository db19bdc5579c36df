"""Retrieval R@k on data whose answer is known, and against a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from visae.backbones.layout import TokenLayout
from visae.cache.reader import open_cache
from visae.cache.testing import write_synthetic_cache
from visae.tasks import run_task
from visae.tasks.retrieval import recall_at_k

LAYOUT = TokenLayout(("cls",), 2, 2, 16)


def brute_force(x: np.ndarray, y: np.ndarray, k: int) -> float:
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = xn @ xn.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return float(np.mean([(y[t] == y[i]).any() for i, t in enumerate(top)]))


def test_matches_brute_force_and_sparse_equals_dense() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 12)).astype(np.float32)
    y = rng.integers(0, 5, 120)
    got = recall_at_k(x, y, ks=(1, 5, 10), chunk=32)
    for k in (1, 5, 10):
        assert got[k] == pytest.approx(brute_force(x, y, k))
    nonneg = np.maximum(x, 0)
    assert recall_at_k(sp.csr_matrix(nonneg), y, chunk=50) == recall_at_k(nonneg, y, chunk=50)


def test_exact_duplicates_give_recall_one() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=(30, 8)).astype(np.float32)
    labels = rng.integers(0, 10, 30)
    # split protocol: queries are rows 0..29, the gallery holds their exact duplicates (rows 30..59)
    x = np.concatenate([base, base])
    y = np.concatenate([labels, labels])
    out = recall_at_k(x, y, ks=(1, 5), query_idx=np.arange(30), gallery_idx=np.arange(30, 60))
    assert out == {1: 1.0, 5: 1.0}


def test_all_zero_codes_and_tiny_gallery() -> None:
    x = np.array([[1.0, 0], [0, 0], [1.0, 0]], dtype=np.float32)
    y = np.array([0, 1, 0])
    out = recall_at_k(x, y, ks=(1,))
    assert out[1] == pytest.approx(2 / 3)  # the zero row retrieves nothing of its class
    with pytest.raises(Exception, match="too few"):
        recall_at_k(x[:1], y[:1])


def test_run_task_on_a_cache_with_duplicates(tmp_path, make_split_sae) -> None:
    rng = np.random.default_rng(2)
    n, d = 16, 6
    acts = rng.normal(size=(n, LAYOUT.n_patches, d)).astype(np.float16)
    acts = np.concatenate([acts, acts])  # every image has an exact duplicate
    labels = np.tile(np.arange(n) % 4, 2)
    cache = open_cache(write_synthetic_cache(tmp_path / "cache", acts, labels, list("abcd"), LAYOUT))
    sae = make_split_sae(d)
    res = run_task("retrieval", sae, cache, {"features": ["raw", "codes", "recon"]}, out_dir=tmp_path / "out",
                   device=torch.device("cpu"))
    for kind in ("raw", "codes", "recon"):
        assert res.scores[f"task:retrieval_r1:{kind}"] == 1.0
    assert res.value == 1.0 and "leave-one-out" in res.protocol
    assert (tmp_path / "out" / "task_retrieval.json").is_file()
    raw_only = run_task("retrieval", None, cache, {"protocol": "split"}, device="cpu")
    assert set(raw_only.scores) == {"task:retrieval_r1:raw", "task:retrieval_r5:raw",
                                    "task:retrieval_r10:raw"}
