"""M1: Moran's I against esda/libpysal, the permutation null, planted blobs, App. F's z and the SAE-level
score."""

from __future__ import annotations

import math

import esda
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from libpysal.weights import lat2W

from visae.metrics.encode import EncodedBatch
from visae.metrics.m1_spatial import (
    M1Config,
    compute_m1,
    morans_i,
    null_expectation,
    queen_weight_sum,
    z_statistic,
)


def esda_i(map_hw: np.ndarray) -> float:
    h, w = map_hw.shape
    weights = lat2W(h, w, rook=False)  # ids are row-major: id = r * w + c
    return float(esda.Moran(map_hw.ravel(), weights, transformation="B", permutations=0).I)


def dense_queen(h: int, w: int) -> np.ndarray:
    """Independent P × P queen matrix from explicit neighbour offsets."""
    wm = np.zeros((h * w, h * w))
    for r in range(h):
        for c in range(w):
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    if (dr or dc) and 0 <= r + dr < h and 0 <= c + dc < w:
                        wm[r * w + c, (r + dr) * w + c + dc] = 1.0
    return wm


def naive_i(map_hw: np.ndarray, wm: np.ndarray) -> float:
    z = map_hw.ravel() - map_hw.mean()
    return float(len(z) / wm.sum() * (z @ wm @ z) / (z @ z))


def blob(h: int, w: int, cy: float, cx: float, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))


@pytest.mark.parametrize("grid", [(14, 14), (16, 16), (9, 13), (1, 7)])
def test_morans_i_matches_esda(grid: tuple[int, int]) -> None:
    h, w = grid
    rng = np.random.default_rng(h * 100 + w)
    maps = rng.normal(size=(6, h, w))
    maps[1] = np.maximum(maps[1] - 1.2, 0.0)  # mostly zeros, like sparse codes
    maps[2] = np.where(rng.random((h, w)) < 0.05, rng.random((h, w)), 0.0)
    maps[2].flat[:2] = [0.5, 0.7]  # at least two non-zeros
    maps[3] = blob(h, w, h / 3, w / 2, 2.0) + 0.01 * rng.normal(size=(h, w))
    maps[4] = np.indices((h, w)).sum(0) % 2  # checkerboard: strongly negative on rook, mixed on queen
    maps[5] = rng.exponential(size=(h, w)) * 1e3 + 1e4
    ours = morans_i(torch.from_numpy(maps)).numpy()
    ref = np.array([esda_i(m) for m in maps])
    np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0)
    # the float32 path (what M1 uses on codes) stays close too
    np.testing.assert_allclose(morans_i(torch.from_numpy(maps).float()).numpy(), ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("grid", [(14, 14), (16, 16), (3, 5), (1, 4), (2, 2)])
def test_weight_sum_closed_form(grid: tuple[int, int]) -> None:
    assert queen_weight_sum(*grid) == lat2W(*grid, rook=False).s0 == dense_queen(*grid).sum()


def test_constant_maps_are_nan_and_batch_shape_is_kept() -> None:
    maps = torch.randn(3, 4, 5, 6)
    maps[1, 2] = 3.25
    maps[0, 0] = 0.0
    out = morans_i(maps)
    assert out.shape == (3, 4)
    assert torch.isnan(out[1, 2]) and torch.isnan(out[0, 0])
    assert int(torch.isnan(out).sum()) == 2


def test_random_permutations_average_the_null() -> None:
    # Under randomization every permutation is equally likely and E[I] = −1/(P − 1) exactly.
    rng = np.random.default_rng(7)
    h, w = 14, 14
    base = np.maximum(rng.normal(size=h * w), 0) ** 2
    perms = np.stack([rng.permutation(base) for _ in range(20000)]).reshape(-1, h, w)
    vals = morans_i(torch.from_numpy(perms)).numpy()
    se = vals.std(ddof=1) / math.sqrt(vals.size)
    assert abs(vals.mean() - null_expectation(h * w)) < 4 * se
    assert null_expectation(196) == pytest.approx(-0.0051282, abs=1e-7)


def test_smooth_blobs_score_high_and_noise_near_null() -> None:
    rng = np.random.default_rng(1)
    blobs = np.stack([blob(16, 16, rng.uniform(3, 12), rng.uniform(3, 12), rng.uniform(1.5, 3))
                      for _ in range(20)])
    assert morans_i(torch.from_numpy(blobs)).min() > 0.6
    noise = rng.normal(size=(2000, 16, 16))
    assert abs(float(morans_i(torch.from_numpy(noise)).mean()) - null_expectation(256)) < 0.003


def test_z_statistic_hand_case() -> None:
    means = np.array([0.1, 0.2, 0.3, 0.4])
    sd = math.sqrt(((0.15**2) * 2 + (0.05**2) * 2) / 3)  # sample sd, ddof = 1
    expected = (0.25 - (-1 / 195)) / (sd / math.sqrt(4))
    z, got_sd = z_statistic(means, n_patches=196)
    assert got_sd == pytest.approx(sd)
    assert z == pytest.approx(expected)
    assert z == pytest.approx(3.9524, abs=1e-3)
    assert math.isnan(z_statistic(np.array([0.3]), 196)[0])


finite = st.floats(-100, 100, allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float64, st.tuples(st.integers(2, 7), st.integers(2, 7)), elements=finite),
    st.floats(0.01, 1e3), st.floats(-1e3, 1e3),
)
def test_invariant_to_positive_scale_shift_and_transpose(m: np.ndarray, scale: float, shift: float) -> None:
    base = morans_i(torch.from_numpy(m))
    if m.std() < 1e-3 * (np.abs(m).max() + 1):  # (near-)constant: nothing to compare reliably
        return
    moved = morans_i(torch.from_numpy(m * scale + shift))
    transposed = morans_i(torch.from_numpy(np.ascontiguousarray(m.T)))
    assert float(moved) == pytest.approx(float(base), abs=1e-6)
    assert float(transposed) == pytest.approx(float(base), abs=1e-9)
    assert float(morans_i(torch.from_numpy(-m))) == pytest.approx(float(base), abs=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_morans_i_on_cuda_matches_cpu() -> None:
    maps = torch.randn(1000, 14, 14, dtype=torch.float64)
    torch.testing.assert_close(morans_i(maps.cuda()).cpu(), morans_i(maps))


# --- the SAE-level score --------------------------------------------------------------------------
def planted_codes(n_images: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Codes [n, P, 5]: 0 = blob (coherent), 1 = sparse noise, 2 = < 5 active patches,
    3 = active on only the first 30 images, 4 = never active."""
    rng = np.random.default_rng(seed)
    codes = np.zeros((n_images, h * w, 5))
    for i in range(n_images):
        b = blob(h, w, rng.uniform(1, h - 2), rng.uniform(1, w - 2), rng.uniform(1.2, 2.5))
        codes[i, :, 0] = np.where(b > 0.1, b, 0).ravel()
        codes[i, :, 1] = np.where(rng.random(h * w) < 0.3, rng.random(h * w), 0)
        codes[i, rng.choice(h * w, 4, replace=False), 2] = 1.0
        if i < 30:
            codes[i, :, 3] = np.where(rng.random(h * w) < 0.5, rng.random(h * w), 0)
    return torch.from_numpy(codes).float()


def batches_of(codes_npf: torch.Tensor, grid_hw: tuple[int, int], group: int) -> list[EncodedBatch]:
    out = []
    for s in range(0, codes_npf.shape[0], group):
        c = codes_npf[s:s + group]
        n = c.shape[0]
        out.append(EncodedBatch(np.arange(s, s + n), np.zeros(n, dtype=np.int64),
                                torch.zeros(n, c.shape[1], 2),
                                c, torch.zeros(n, c.shape[1], 2), grid_hw))
    return out


def naive_feature_means(codes: np.ndarray, h: int, w: int, cfg: M1Config) -> tuple[np.ndarray, np.ndarray]:
    """Every (image, feature) pair, dense, through an explicit P × P weight matrix."""
    wm = dense_queen(h, w)
    n, _, f = codes.shape
    sums, counts = np.zeros(f), np.zeros(f, dtype=int)
    for i in range(n):
        for j in range(f):
            m = codes[i, :, j]
            if (m > 0).sum() >= cfg.min_active_patches and m.var() > cfg.variance_eps:
                sums[j] += naive_i(m.reshape(h, w), wm)
                counts[j] += 1
    with np.errstate(invalid="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan), counts


@pytest.mark.parametrize("grid", [(8, 8), (6, 10)])
def test_m1_matches_naive_loop_and_summary(grid: tuple[int, int]) -> None:
    h, w = grid
    codes = planted_codes(60, h, w)
    cfg = M1Config()
    result, means, counts = compute_m1(batches_of(codes, grid, 7), n_features=5, config=cfg)
    ref_means, ref_counts = naive_feature_means(codes.double().numpy(), h, w, cfg)
    np.testing.assert_array_equal(counts, ref_counts)
    np.testing.assert_allclose(means, ref_means, atol=1e-5)
    assert list(counts) == [60, 60, 0, 30, 0]
    evaluable = ref_means[[0, 1]]
    assert result.n_eval == 2 and result.n_dict == 5 and result.eval_fraction == pytest.approx(0.4)
    assert result.value == result.mean_i == pytest.approx(evaluable.mean(), abs=1e-5)
    assert result.median_i == pytest.approx(np.median(evaluable), abs=1e-5)
    assert result.iqr_i == pytest.approx(np.subtract(*np.percentile(evaluable, [75, 25])), abs=1e-5)
    assert result.null_expectation == pytest.approx(-1 / (h * w - 1))
    sd = evaluable.std(ddof=1)
    z = (evaluable.mean() + 1 / (h * w - 1)) / (sd / math.sqrt(2))
    assert result.z == pytest.approx(z, rel=1e-4) and result.sd_feature_means == pytest.approx(sd, rel=1e-4)
    assert result.sd_ddof == 1
    assert result.n_images == 60 and (result.grid_h, result.grid_w) == grid
    assert ref_means[0] > 0.5 and abs(ref_means[1]) < 0.1


def test_m1_thresholds_are_configurable() -> None:
    codes = planted_codes(60, 8, 8)
    result, _, counts = compute_m1(batches_of(codes, (8, 8), 16), 5,
                                   M1Config(min_active_patches=4, min_valid_images=30))
    assert list(counts) == [60, 60, 60, 30, 0]
    assert result.n_eval == 4
    empty, _, _ = compute_m1(batches_of(codes, (8, 8), 16), 5, M1Config(min_valid_images=1000))
    assert empty.value is None and empty.n_eval == 0 and "min_valid_images" in empty.note


def test_m1_rejects_a_grid_that_does_not_match() -> None:
    codes = planted_codes(3, 4, 4)
    with pytest.raises(ValueError, match="grid"):
        compute_m1(batches_of(codes, (3, 5), 3), 5)
