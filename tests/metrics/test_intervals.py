"""Bootstrap intervals beside the headline metrics: replicate b of each streamed statistic equals the
statistic recomputed on a data set where image i appears w[i, b] times (the definition of a bootstrap
replicate), and the weighted AUC equals scikit-learn's with sample weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from visae.backbones.layout import TokenLayout
from visae.cache.reader import open_cache
from visae.cache.testing import write_synthetic_cache
from visae.metrics import m1_spatial
from visae.metrics.encode import EncodedBatch, encode_stream
from visae.metrics.evaluate import evaluate
from visae.metrics.m1_spatial import M1Accumulator, M1Config
from visae.metrics.m2_reconstruction import M2Accumulator, M2Config
from visae.metrics.m3_preservation import M3Config, compute_m3
from visae.sae.testing import ReluSAE
from visae.uncertainty import BootstrapConfig, poisson_weights, weighted_auc_replicates

BOOT = BootstrapConfig(n_boot=12, seed=5)


def _blob_codes(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    codes = np.zeros((n, h * w, 3))
    for i in range(n):
        cy, cx, s = rng.uniform(1, h - 2), rng.uniform(1, w - 2), rng.uniform(1.0, 2.5)
        b = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s)).ravel()
        codes[i, :, 0] = np.where(b > 0.1, b, 0)
        codes[i, :, 1] = np.where(rng.random(h * w) < 0.3, rng.random(h * w), 0)
        codes[i, :, 2] = np.where(rng.random(h * w) < 0.1 * (i % 3), rng.random(h * w), 0)
    return torch.from_numpy(codes).float()


def _batch(codes: torch.Tensor, index: np.ndarray, grid: tuple[int, int]) -> EncodedBatch:
    n, p, _ = codes.shape
    return EncodedBatch(index, np.zeros(n, dtype=np.int64), torch.zeros(n, p, 2), codes,
                        torch.zeros(n, p, 2), grid)


def _m1_value(acc: M1Accumulator, cfg: M1Config) -> float:
    means, count = acc.feature_means()
    evaluable = means[count >= cfg.min_valid_images]
    return float(evaluable.mean()) if evaluable.size else float("nan")


@pytest.mark.parametrize("dense_ratio", [16, 0], ids=["table-gemm", "scatter"])
def test_m1_replicates_equal_m1_on_resampled_images(dense_ratio, monkeypatch) -> None:
    monkeypatch.setattr(m1_spatial, "DENSE_REPLICATE_RATIO", dense_ratio)
    grid, n = (6, 6), 40
    codes = _blob_codes(n, *grid)
    cfg = M1Config(min_valid_images=25)
    acc = M1Accumulator(3, cfg, torch.device("cpu"))
    acc.enable_bootstrap(BOOT)
    for s in range(0, n, 9):
        acc.update_batch(_batch(codes[s:s + 9], np.arange(s, min(s + 9, n)), grid))
    reps = acc.replicates(cfg.min_valid_images)
    w_nb = poisson_weights(np.arange(n), BOOT.n_boot, BOOT.seed).astype(int)
    for b in range(BOOT.n_boot):
        rows = np.repeat(np.arange(n), w_nb[:, b])
        ref = M1Accumulator(3, cfg, torch.device("cpu"))
        ref.update_batch(_batch(codes[rows], np.arange(len(rows)), grid))
        assert reps[b] == pytest.approx(_m1_value(ref, cfg), abs=1e-9, nan_ok=True), b
    assert len(set(np.round(reps, 9))) > 1


@pytest.fixture
def cache(tmp_path):
    rng = np.random.default_rng(0)
    acts = (rng.normal(size=(23, 12, 6)) * np.array([1, 2, 3, 0.5, 1, 4]) + 5.0).astype(np.float32)
    layout = TokenLayout(("cls",), 3, 4, 8)
    return open_cache(write_synthetic_cache(tmp_path / "c", acts, np.arange(23) % 2, ["a", "b"], layout,
                                            shard_images=5))


def test_m2_replicates_equal_fvu_on_resampled_images(cache) -> None:
    torch.manual_seed(0)
    sae = ReluSAE(6, 16)
    sae.set_normalization(torch.from_numpy(cache.mean_d), cache.std)
    batches = list(encode_stream(sae, cache, group_size=4, device=torch.device("cpu")))
    acc = M2Accumulator(6, 16, M2Config(), torch.device("cpu"))
    acc.enable_bootstrap(BOOT)
    for batch in batches:
        acc.update(batch.acts_npd, batch.recon_npd, batch.codes, batch.image_index_n)
    reps = acc.replicates()
    acts = torch.cat([b.acts_npd for b in batches]).double().numpy()
    err = acts - torch.cat([b.recon_npd for b in batches]).double().numpy()
    w_nb = poisson_weights(np.arange(23), BOOT.n_boot, BOOT.seed).astype(int)
    for b in range(BOOT.n_boot):
        rows = np.repeat(np.arange(23), w_nb[:, b])
        a, e = acts[rows].reshape(-1, 6), err[rows].reshape(-1, 6)
        assert reps[b] == pytest.approx((e ** 2).sum() / ((a - a.mean(axis=0)) ** 2).sum(), rel=1e-6)
    result = acc.result()
    assert result.ci_low is not None and result.ci_high is not None and result.ci_low < result.ci_high
    assert "12 replicates" in result.ci_method


def test_weighted_auc_equals_sklearn_with_sample_weights() -> None:
    rng = np.random.default_rng(1)
    y = rng.random(80) < 0.4
    score = np.round(rng.normal(size=80) + y, 1)  # rounded: many ties
    w_nb = poisson_weights(np.arange(80), 6, seed=2)
    reps = weighted_auc_replicates(y, score, w_nb)
    for b in range(6):
        assert reps[b] == pytest.approx(roc_auc_score(y, score, sample_weight=w_nb[:, b]))


def test_m3_interval_brackets_and_off_switch() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    acts = rng.normal(size=(120, 5)) + labels[:, None] * 1.5
    recon = acts + rng.normal(scale=0.8, size=acts.shape)
    on = compute_m3(acts, recon, labels, M3Config(), BootstrapConfig(n_boot=100))
    off = compute_m3(acts, recon, labels, M3Config(), BootstrapConfig(n_boot=0))
    assert on.value == off.value and off.ci_low is None
    assert on.ci_low is not None and on.ci_high is not None and on.ci_low <= on.value <= on.ci_high


def test_evaluate_writes_intervals_and_turns_them_off(cache, tmp_path) -> None:
    torch.manual_seed(0)
    sae = ReluSAE(6, 16)
    sae.set_normalization(torch.from_numpy(cache.mean_d), cache.std)
    with_ci = evaluate(sae, cache, metrics=["m2"], device="cpu", bootstrap={"n_boot": 50})
    without = evaluate(sae, cache, metrics=["m2"], device="cpu", bootstrap={"n_boot": 0})
    assert with_ci["m2"].value == pytest.approx(without["m2"].value)
    assert with_ci["m2"].ci_low is not None and without["m2"].ci_low is None


def test_raw_diagnostic_interval_from_indexed_groups(cache) -> None:
    from visae.metrics.raw_spatial import RawConfig, compute_raw

    grid = (cache.layout.grid_h, cache.layout.grid_w)
    groups = [(acts, grid, index) for index, acts in cache.iter_images(group_size=6)]
    cfg = RawConfig(min_valid_images=5)
    with_ci, _, _ = compute_raw(groups, cfg, bootstrap=BootstrapConfig(n_boot=40))
    plain, _, _ = compute_raw([(a, g) for a, g, _ in groups], cfg)
    assert with_ci.value == pytest.approx(plain.value)
    assert plain.ci_low is None and with_ci.ci_low is not None and with_ci.ci_high is not None


def test_m6_dataset_interval_over_test_images() -> None:
    import scipy.sparse as sp

    from visae.metrics.encode import PooledFeatures
    from visae.metrics.m6_cross_domain import M6Config, compute_m6_dataset

    rng = np.random.default_rng(2)

    def pooled(n: int) -> PooledFeatures:
        labels = np.arange(n) % 3
        acts = (rng.normal(size=(n, 6)) + labels[:, None]).astype(np.float32)
        recon = (acts + rng.normal(scale=0.7, size=acts.shape)).astype(np.float32)
        return PooledFeatures(labels, acts, recon, sp.csr_matrix(np.maximum(acts, 0)))

    train, test = pooled(90), pooled(60)
    cfg = M6Config(sparse_k=4, code_probe=False)
    on = compute_m6_dataset(train, test, cfg, bootstrap=BootstrapConfig(n_boot=80))
    off = compute_m6_dataset(train, test, cfg)
    assert on.preservation == off.preservation and off.preservation_ci_low is None
    assert on.preservation_ci_low is not None and on.preservation_ci_high is not None
    assert on.preservation_ci_low <= on.preservation <= on.preservation_ci_high


def test_m7_interval_resamples_tasks() -> None:
    from visae.metrics.m7_absorption import compute_m7

    rng = np.random.default_rng(0)
    y = np.arange(800) % 4
    codes = (np.maximum(rng.normal(size=(800, 40)), 0) * (rng.random((800, 40)) < 0.2)).astype(np.float32)
    codes[:, 3] = y == 0
    which = rng.integers(0, 4, 800)
    for j in range(4):
        codes[:, 10 + j] = (y == 1) & (which == j)  # class 1's signal split over four features: absorbed
    boot = BootstrapConfig(n_boot=30, seed=1)
    result, tasks = compute_m7(codes, y, [[0, 1, 2, 3]], bootstrap=boot)
    absorbed = np.array([bool(t["absorbed"]) for t in tasks], dtype=float)
    w_nb = poisson_weights(np.arange(len(tasks)), boot.n_boot, boot.seed)
    with np.errstate(invalid="ignore"):
        reps = (absorbed @ w_nb) / w_nb.sum(axis=0)  # rate over each replicate's resampled tasks
    finite = reps[np.isfinite(reps)]
    assert result.ci_low == pytest.approx(np.quantile(finite, 0.025))
    assert result.ci_high == pytest.approx(np.quantile(finite, 0.975))
    assert "tasks" in result.ci_method
