"""M5 against planted structure: identical top images score 1, random ones sit at the baseline, the
App. K decomposition is exact, streaming top-N equals brute force, sampling is seeded and uniform."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from visae.errors import ConfigError
from visae.metrics.base import EvalContext
from visae.metrics.encode import EncodedBatch
from visae.metrics.m5_monosemanticity import (
    FEATURES_FILE,
    M5Config,
    M5Monosemanticity,
    M5Result,
    StreamingTopN,
    compute_m5,
    default_evaluator,
    feature_scores,
    minmax_weights,
    random_group_baseline,
    resolve_evaluator,
    sample_features,
)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def stream_topn(pooled_nf: np.ndarray, top_n: int, batch_sizes: list[int]) -> StreamingTopN:
    tracker = StreamingTopN(top_n)
    start = 0
    for size in batch_sizes:
        part = pooled_nf[start:start + size]
        tracker.update(torch.from_numpy(part), np.arange(start, start + len(part)))
        start += len(part)
    assert start == len(pooled_nf)
    return tracker


# --- streaming top-N -------------------------------------------------------------------------------


def test_streaming_topn_equals_bruteforce_with_ties() -> None:
    rng = np.random.default_rng(0)
    n, f, k = 203, 37, 16
    # Quantized values with many zeros make ties common; ties must go to the earlier image.
    pooled = np.maximum(rng.integers(-3, 6, size=(n, f)), 0).astype(np.float32)
    pooled[:, 0] = 0.0  # a dead feature
    tracker = stream_topn(pooled, k, [1, 16, 7, 64, 50, 65])
    values, index, lo, hi = tracker.result()
    order = np.argsort(-pooled, axis=0, kind="stable")[:k]
    np.testing.assert_array_equal(index, order)
    np.testing.assert_array_equal(values, np.take_along_axis(pooled, order, axis=0))
    np.testing.assert_array_equal(lo, pooled.min(axis=0))
    np.testing.assert_array_equal(hi, pooled.max(axis=0))
    assert tracker.n_images == n


def test_streaming_topn_signed_values_and_large_indices() -> None:
    rng = np.random.default_rng(1)
    pooled = rng.normal(size=(90, 11)).astype(np.float32)  # negative values must order correctly too
    pooled[5:9, 3] = pooled[60:64, 3] = 7.5  # ties among positives
    offset = 2**31 - 200
    tracker = StreamingTopN(16)
    for s in range(0, 90, 25):
        tracker.update(torch.from_numpy(pooled[s:s + 25]), offset + np.arange(s, min(90, s + 25)))
    values, index, _, _ = tracker.result()
    order = np.argsort(-pooled, axis=0, kind="stable")[:16]
    np.testing.assert_array_equal(index - offset, order)
    np.testing.assert_array_equal(values, np.take_along_axis(pooled, order, axis=0))


def test_streaming_topn_fewer_images_than_n() -> None:
    pooled = np.array([[1.0, 0.0], [3.0, 2.0], [2.0, 0.5]], dtype=np.float32)
    values, index, _, _ = stream_topn(pooled, 16, [2, 1]).result()
    assert values.shape == (3, 2)
    np.testing.assert_array_equal(index[:, 0], [1, 2, 0])
    np.testing.assert_array_equal(index[:, 1], [1, 2, 0])


# --- sampling ----------------------------------------------------------------------------------------


def test_sampling_all_live_when_few() -> None:
    live = np.array([True, False, True, True, False])
    np.testing.assert_array_equal(sample_features(live, 2048, seed=1), [0, 2, 3])


def test_sampling_seeded_without_replacement_and_uniform() -> None:
    live = np.zeros(60, dtype=bool)
    live[::3] = True  # 20 live features
    a = sample_features(live, 5, seed=7)
    np.testing.assert_array_equal(a, sample_features(live, 5, seed=7))
    assert len(set(a.tolist())) == 5 and live[a].all()
    counts = np.zeros(60)
    n_draws = 4000
    for seed in range(n_draws):
        counts[sample_features(live, 5, seed=seed)] += 1
    assert counts[~live].sum() == 0
    freq = counts[live] / n_draws  # each live feature is chosen with probability 5/20
    # binomial sd = sqrt(.25*.75/4000) ≈ 0.0068; 5 sd bound
    assert np.all(np.abs(freq - 0.25) < 0.035), freq


# --- the score ----------------------------------------------------------------------------------------


def reference_ms(emb_ke: np.ndarray, w_k: np.ndarray, y_k: np.ndarray) -> tuple[float, ...]:
    """App. K by explicit loops over pairs u < v (as sae-for-vlm's metric.py does)."""
    e = unit(emb_ke.astype(np.float64))
    tot = num = mw = nw = mb = nb = 0.0
    for u, v in itertools.combinations(range(len(w_k)), 2):
        om = w_k[u] * w_k[v]
        c = float(e[u] @ e[v])
        tot += om
        num += om * c
        if y_k[u] == y_k[v]:
            mw += om
            nw += om * c
        else:
            mb += om
            nb += om * c
    nan = float("nan")
    return (num / tot if tot else nan, nw / mw if mw else nan, nb / mb if mb else nan, mw / tot
            if tot else nan)


def test_feature_scores_match_loops_and_decomposition_is_exact() -> None:
    rng = np.random.default_rng(3)
    f, k, e = 40, 16, 24
    emb = rng.normal(size=(f, k, e)) + 0.5
    w = rng.random((f, k))
    w[5, :] = 0.0  # zero denominator: undefined
    w[6, 2:] = 0.0  # a single pair carries all the mass
    y = rng.integers(0, 4, size=(f, k))
    y[7] = 1  # all one class: no between pairs
    y[8] = np.arange(k)  # all distinct: no within pairs
    s = feature_scores(emb, w, y)
    for j in range(f):
        ref = reference_ms(emb[j], w[j], y[j])
        got = (s.ms[j], s.ms_within[j], s.ms_between[j], s.rho_within[j])
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12, equal_nan=True)
    assert np.isnan(s.ms[5]) and np.isfinite(s.ms[6])
    assert np.isnan(s.ms_between[7]) and s.rho_within[7] == 1.0
    assert np.isnan(s.ms_within[8]) and s.rho_within[8] == 0.0
    ok = np.isfinite(s.ms)
    within = np.where(np.isfinite(s.ms_within), s.ms_within, 0.0)
    between = np.where(np.isfinite(s.ms_between), s.ms_between, 0.0)
    recon = s.rho_within * within + (1.0 - s.rho_within) * between
    assert np.max(np.abs(recon[ok] - s.ms[ok])) < 1e-9


def test_minmax_weights_use_global_min() -> None:
    values_fk = np.array([[5.0, 3.0, 2.0], [1.0, 1.0, 1.0]])
    w = minmax_weights(values_fk, min_f=np.array([1.0, 1.0]), max_f=np.array([5.0, 1.0]))
    np.testing.assert_allclose(w[0], [1.0, 0.5, 0.25])
    np.testing.assert_array_equal(w[1], 0.0)  # constant feature: no weight


def test_baseline_estimates_mean_over_all_pool_pairs() -> None:
    rng = np.random.default_rng(5)
    pool = rng.normal(size=(300, 16)) + np.linspace(0, 1.5, 16)
    groups = random_group_baseline(pool, 16, 1000, seed=0)
    e = unit(pool)
    cos = e @ e.T
    expected = cos[np.triu_indices(300, 1)].mean()  # E[group mean] for groups drawn without replacement
    assert abs(groups.mean() - expected) < 4 * groups.std() / np.sqrt(1000)
    np.testing.assert_array_equal(groups, random_group_baseline(pool, 16, 1000, seed=0))


def planted(n_images: int = 400, n_feat: int = 30, dim: int = 32, seed: int = 0):
    """Pooled codes, labels and anisotropic random embeddings (so the baseline is far from 0)."""
    rng = np.random.default_rng(seed)
    pooled = np.maximum(rng.normal(size=(n_images, n_feat)), 0).astype(np.float32)
    labels = rng.integers(0, 5, size=n_images)
    emb = rng.normal(size=(n_images, dim)) + 2.0 * np.ones(dim) / np.sqrt(dim) * 1.5
    return pooled, labels, emb.astype(np.float32)


def run_compute(pooled: np.ndarray, labels: np.ndarray, emb: np.ndarray,
                **cfg) -> tuple[M5Result, pd.DataFrame]:
    config = M5Config(**cfg)
    values, index, lo, hi = stream_topn(pooled, config.top_n, [64] * (len(pooled) // 64 + 1)).result()
    calls: list[np.ndarray] = []

    def embed(index_n: np.ndarray) -> np.ndarray:
        calls.append(index_n)
        return emb[index_n]

    result, table = compute_m5(values, index, lo, hi, labels, embed, config, evaluator="planted")
    assert len(calls) == (1 if result.n_scored else 0)  # one call for the whole pool
    return result, table


def test_random_top_images_score_near_baseline() -> None:
    pooled, labels, emb = planted(n_images=2000, n_feat=300, seed=1)
    result, table = run_compute(pooled, labels, emb)
    assert result.baseline is not None and result.baseline > 0.15  # anisotropic: a real floor
    assert result.raw is not None and result.value is not None
    assert abs(result.raw - result.baseline) < 0.02
    assert abs(result.value) < 0.03
    assert result.n_scored == result.n_live == 300 and result.n_defined == 300
    assert len(table) == 300


def test_identical_top_images_score_one() -> None:
    pooled, labels, emb = planted(seed=2)
    n_feat = pooled.shape[1]
    # Features 0..9 fire (strongly, with graded values) only on images whose embeddings we make identical.
    for j in range(10):
        rows = np.arange(j * 20, j * 20 + 16)
        pooled[:, j] = 0.0
        pooled[rows, j] = np.linspace(1, 3, 16)
        emb[rows] = emb[rows[0]] * (1 + np.arange(16)[:, None])  # same direction, any scale
    result, table = run_compute(pooled, labels, emb)
    ms = table.set_index("feature")["ms"]
    np.testing.assert_allclose(ms.loc[list(range(10))].to_numpy(), 1.0, atol=1e-12)
    assert result.n_scored == n_feat
    # Mixture of 10 perfect features and 20 random: raw is their average; norm in (0, 1).
    expected_raw = (10 + ms.loc[list(range(10, n_feat))].sum()) / n_feat
    assert result.raw == pytest.approx(expected_raw, abs=1e-12)
    assert result.value is not None and 0.2 < result.value < 0.8


def test_all_features_identical_give_norm_one() -> None:
    pooled, labels, emb = planted(n_images=200, n_feat=4, seed=3)
    for j in range(4):
        pooled[:, j] = 0.0
        rows = np.arange(j * 50, j * 50 + 16)
        pooled[rows, j] = 1.0 + np.arange(16)
        emb[rows] = emb[rows[0]]
    result, _ = run_compute(pooled, labels, emb)
    assert result.raw == pytest.approx(1.0, abs=1e-12)
    assert result.value == pytest.approx(1.0, abs=1e-12)


def test_dead_sae_gives_no_value() -> None:
    pooled = np.zeros((50, 8), dtype=np.float32)
    result, table = run_compute(pooled, np.zeros(50, int), np.ones((50, 4), np.float32))
    assert result.value is None and result.n_live == 0 and "no live" in result.note
    assert len(table) == 0


def test_max_features_caps_scoring() -> None:
    pooled, labels, emb = planted(n_images=300, n_feat=50, seed=4)
    result, table = run_compute(pooled, labels, emb, max_features=12, seed=3)
    assert result.n_scored == 12 and result.n_live == 50
    np.testing.assert_array_equal(table["feature"].to_numpy(), sample_features(np.ones(50, bool), 12, 3))


# --- evaluator pairing ------------------------------------------------------------------------------


def test_pairing_table_and_offline_pair() -> None:
    assert default_evaluator("dinov2-s14-offline") == "random-vit-s14"
    assert default_evaluator("random-vit-s14") == "dinov2-s14-offline"
    for trained, evaluator in [("dinov2-b14", "clip-b16"), ("clip-b16", "dinov2-b14"),
                               ("siglip-b16", "dinov2-b14"), ("deit-b16", "clip-b16"),
                               ("mae-b16", "clip-b16")]:
        assert default_evaluator(trained) == evaluator
    with pytest.raises(ConfigError, match="no M5 evaluator pairing"):
        default_evaluator("some-unknown-vit")


def test_same_backbone_refused_unless_forced() -> None:
    with pytest.raises(ConfigError, match="circular"):
        resolve_evaluator(M5Config(evaluator="dinov2-s14-offline"), "dinov2-s14-offline")
    with pytest.warns(UserWarning, match="own backbone"):
        name = resolve_evaluator(M5Config(evaluator="dinov2-s14-offline", allow_same_backbone=True),
                                 "dinov2-s14-offline")
    assert name == "dinov2-s14-offline"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_evaluator(M5Config(), "dinov2-s14-offline") == "random-vit-s14"
        assert resolve_evaluator(M5Config(evaluator="clip-b16"), "dinov2-s14-offline") == "clip-b16"
    # The timm name a short name stands for is the same backbone.
    with pytest.raises(ConfigError, match="circular"):
        resolve_evaluator(M5Config(evaluator="dinov2-b14"), "vit_base_patch14_dinov2.lvd142m")


# --- the metric class over a stream ---------------------------------------------------------------------


def test_metric_streams_and_writes_feature_table(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    n, p, f = 120, 9, 20
    codes_npf = np.maximum(rng.normal(size=(n, p, f)), 0).astype(np.float32)
    labels = rng.integers(0, 3, size=n)
    emb = rng.normal(size=(n, 8)).astype(np.float32)
    cache = SimpleNamespace(labels=labels)
    ctx = EvalContext(sae=None, cache=cache, device=torch.device("cpu"), out_dir=tmp_path,  # type: ignore[arg-type]
                      backbone="synthetic", extras={"m5_embedder": lambda idx: emb[idx]})
    metric = M5Monosemanticity(M5Config(top_n=8), ctx)
    for s in range(0, n, 32):
        metric.update(EncodedBatch(
            image_index_n=np.arange(s, min(n, s + 32)), labels_n=labels[s:s + 32],
            acts_npd=torch.zeros(0), codes_npf=torch.from_numpy(codes_npf[s:s + 32]),
            recon_npd=torch.zeros(0), grid_hw=(3, 3)))
    result = metric.finalize(None)
    assert isinstance(result, M5Result)
    pooled = codes_npf.max(axis=1)
    values, index, lo, hi = stream_topn(pooled, 8, [n]).result()
    expected, _ = compute_m5(values, index, lo, hi, labels, lambda i: emb[i], M5Config(top_n=8))
    assert result.value == pytest.approx(expected.value, abs=1e-12)
    table = pd.read_parquet(tmp_path / FEATURES_FILE)
    assert list(table.columns[:5]) == ["feature", "ms", "ms_within", "ms_between", "rho_within"]
    row = table.iloc[0]
    j = int(row["feature"])
    np.testing.assert_array_equal(row["top_images"], np.argsort(-pooled[:, j], kind="stable")[:8])
    np.testing.assert_allclose(row["top_activations"], np.sort(pooled[:, j])[::-1][:8])
    assert row["n_top"] == 8
    assert not list(tmp_path.glob("*.tmp-*"))


def test_metric_refuses_same_backbone_before_stream() -> None:
    cache = SimpleNamespace(labels=np.zeros(3, int))
    ctx = EvalContext(sae=None, cache=cache, device=torch.device("cpu"),  # type: ignore[arg-type]
                      backbone="random-vit-s14")
    with pytest.raises(ConfigError):
        M5Monosemanticity(M5Config(evaluator="random-vit-s14"), ctx)


# --- end to end on the offline assets ----------------------------------------------------------------


def data_initialized_sae(cache, n_features: int = 256, seed: int = 0):  # type: ignore[no-untyped-def]
    """An untrained ReLU SAE whose decoder rows are normalized patch tokens of the cache, with a threshold
    that keeps codes sparse: features then pick out images that resemble one real patch."""
    from visae.sae.base import SAE

    class ThresholdReLU(SAE):
        family = "test-relu"

        def encode(self, x_nd: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.pre_acts(x_nd))

    acts = np.concatenate([a.numpy() for _, a in cache.iter_images(group_size=64)])  # [N, P, D]
    sae = ThresholdReLU(cache.d_model, n_features)
    sae.set_normalization(torch.from_numpy(cache.mean_d), cache.std)
    rng = np.random.default_rng(seed)
    tokens = acts.reshape(-1, acts.shape[-1])[rng.choice(acts.shape[0] * acts.shape[1], n_features,
                                                         replace=False)]
    x = sae.normalize(torch.from_numpy(tokens).float())
    w = x / x.norm(dim=1, keepdim=True)
    with torch.no_grad():
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w.T)
        sae.b_enc.fill_(-0.5 * float(x.norm(dim=1).median()))
    return sae


@pytest.mark.slow
@pytest.mark.parametrize(("backbone", "evaluator"), [("dinov2-s14-offline", "random-vit-s14"),
                                                     ("random-vit-s14", "dinov2-s14-offline")])
def test_offline_pair_end_to_end(tmp_path: Path, backbone: str, evaluator: str) -> None:
    import time

    import visae
    from visae.metrics.evaluate import evaluate

    t0 = time.perf_counter()
    # 112 px (8×8 patches) and a stratified 48-image subset keep this CPU test short; the subset also
    # exercises re-reading images by id from a "<spec>#<subset>" source.
    cache_dir = visae.build_cache(backbone, "offline:faces", layer=5, out_dir=tmp_path / "caches",
                                  split="all",
                                  max_images=48, image_size=112, device="cpu", progress=False, num_workers=0)
    cache = visae.open_cache(cache_dir)
    t_cache = time.perf_counter() - t0
    sae = data_initialized_sae(cache)
    t1 = time.perf_counter()
    results = evaluate(sae, cache, metrics=["m5"], out_dir=tmp_path / "eval", device="cpu",
                       configs={"m5": {"evaluator_image_size": 112}})
    t_eval = time.perf_counter() - t1
    r = results["m5"]
    assert isinstance(r, M5Result)
    assert r.evaluator == evaluator and r.embedding_kind
    assert r.n_live > 0 and r.n_scored == r.n_live and r.top_n == 16
    assert r.raw is not None and r.baseline is not None and r.value is not None
    assert 16 <= r.n_embedded_images <= 48
    table = pd.read_parquet(tmp_path / "eval" / FEATURES_FILE)
    assert len(table) == r.n_scored
    # The headline is the features' mean score, normalized by the random-group baseline (App. K).
    assert r.raw == pytest.approx(table["ms"].dropna().mean())
    assert r.value == pytest.approx((r.raw - r.baseline) / (1 - r.baseline))
    store_files = list((Path(cache_dir) / "embeddings").glob(f"{evaluator}-*.npy"))
    assert len(store_files) == 1
    # A second evaluation on the same cache reuses the stored embeddings: nothing is recomputed or rewritten.
    stamp = store_files[0].stat().st_mtime_ns
    t2 = time.perf_counter()
    again = evaluate(sae, cache, metrics=["m5"], device="cpu",
                     configs={"m5": {"evaluator_image_size": 112}})["m5"]
    t_again = time.perf_counter() - t2
    assert store_files[0].stat().st_mtime_ns == stamp
    assert again.value == pytest.approx(r.value, abs=1e-12)
    print(f"\n{backbone} scored by {evaluator}: M5_norm={r.value:.4f} raw={r.raw:.4f} "
          f"baseline={r.baseline:.4f} live={r.n_live} pool={r.n_embedded_images}; cache {t_cache:.1f}s, eval "
          f"{t_eval:.1f}s, eval with stored embeddings {t_again:.1f}s")


def test_interval_resamples_features_and_baseline_groups() -> None:
    from visae.uncertainty import BootstrapConfig, percentile_interval, weighted_replicates

    pooled, labels, emb = planted(n_images=600, n_feat=80, seed=2)
    config = M5Config(n_baseline_groups=100)
    values, index, lo, hi = stream_topn(pooled, config.top_n, [64] * (len(pooled) // 64 + 1)).result()
    boot = BootstrapConfig(n_boot=50, seed=4)
    result, table = compute_m5(values, index, lo, hi, labels, lambda i: emb[i], config, bootstrap=boot)
    plain, _ = compute_m5(values, index, lo, hi, labels, lambda i: emb[i], config)
    assert result.value == plain.value and plain.ci_low is None
    # independent recomputation: resample the per-feature scores of the table and the baseline's groups
    ms = table["ms"].to_numpy(dtype=float)
    ms = ms[np.isfinite(ms)]
    from visae.metrics.m5_monosemanticity import random_group_baseline

    emb_pool = np.asarray(emb[np.unique(index[:, table["feature"].to_numpy()])], dtype=np.float64)
    base_g = random_group_baseline(emb_pool, config.top_n, config.n_baseline_groups, config.seed)
    raw_b = weighted_replicates(ms, np.arange(len(ms)), boot)
    base_b = weighted_replicates(base_g, np.arange(len(base_g)) + (1 << 40), boot)
    ref = percentile_interval((raw_b - base_b) / (1.0 - base_b), boot.level)
    assert (result.ci_low, result.ci_high) == pytest.approx((ref.low, ref.high))
