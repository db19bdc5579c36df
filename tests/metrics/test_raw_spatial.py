"""Raw-backbone diagnostic (App. G): per-channel Moran's I on dense signed activations, variance rule only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visae.metrics.m1_spatial import null_expectation
from visae.metrics.raw_spatial import RawConfig, compute_raw


def queen_i(map_hw: np.ndarray) -> float:
    """Independent dense form: explicit P × P queen matrix."""
    h, w = map_hw.shape
    wm = np.zeros((h * w, h * w))
    for r in range(h):
        for c in range(w):
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    if (dr or dc) and 0 <= r + dr < h and 0 <= c + dc < w:
                        wm[r * w + c, (r + dr) * w + c + dc] = 1.0
    z = map_hw.ravel() - map_hw.mean()
    return float(len(z) / wm.sum() * (z @ wm @ z) / (z @ z))


def planted_acts(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """[n, P, 4]: 0 smooth signed field, 1 iid noise, 2 constant (never valid), 3 tiny-variance noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    acts = np.zeros((n, h * w, 4))
    for i in range(n):
        fy, fx, ph = rng.uniform(0.1, 0.3), rng.uniform(0.1, 0.3), rng.uniform(0, 6)
        acts[i, :, 0] = (np.sin(fy * yy + ph) * np.cos(fx * xx) * 3 - 1).ravel()
        acts[i, :, 1] = rng.normal(size=h * w)
        acts[i, :, 2] = -2.5
        acts[i, :, 3] = 1e-5 * rng.normal(size=h * w)  # variance 1e-10 < 1e-8
    return acts


def groups(acts: np.ndarray, grid: tuple[int, int], size: int) -> list[tuple[torch.Tensor, tuple[int, int]]]:
    t = torch.from_numpy(acts).float()
    return [(t[s:s + size], grid) for s in range(0, t.shape[0], size)]


@pytest.mark.parametrize("grid", [(7, 7), (5, 9)])
def test_raw_channels_match_dense_reference(grid: tuple[int, int]) -> None:
    h, w = grid
    acts = planted_acts(60, h, w)
    result, means, counts = compute_raw(groups(acts, grid, 11))
    assert list(counts) == [60, 60, 0, 0]
    for ch in (0, 1):
        ref = np.mean([queen_i(acts[i, :, ch].reshape(h, w)) for i in range(60)])
        assert means[ch] == pytest.approx(ref, abs=1e-5)
    assert np.isnan(means[2]) and np.isnan(means[3])
    assert means[0] > 0.5 and abs(means[1] - null_expectation(h * w)) < 0.05
    assert result.metric == "raw" and result.n_eval == 2 and result.n_dict == 4
    assert result.value == pytest.approx(means[:2].mean(), abs=1e-9)
    assert result.null_expectation == pytest.approx(-1 / (h * w - 1))
    sd = np.std(means[:2], ddof=1)
    assert result.z == pytest.approx((means[:2].mean() + 1 / (h * w - 1)) / (sd / np.sqrt(2)), rel=1e-6)


def test_variance_rule_is_in_raw_units_and_thresholds_configurable() -> None:
    acts = planted_acts(20, 6, 6)
    # The same activations divided by a std of 1e-3 (as the SAE input space would be): the tiny channel's raw
    # variance is still 1e-10, so it stays invalid once the scale is given back.
    scaled = acts / 1e-3
    _, _, counts = compute_raw(groups(scaled, (6, 6), 8), RawConfig(min_valid_images=5), input_scale=1e-3)
    assert list(counts) == [20, 20, 0, 0]
    _, _, counts_low = compute_raw(groups(acts, (6, 6), 8), RawConfig(variance_eps=1e-12, min_valid_images=5))
    assert list(counts_low) == [20, 20, 0, 20]
    result, _, _ = compute_raw(groups(acts, (6, 6), 8), RawConfig(min_valid_images=21))
    assert result.n_eval == 0 and result.value is None and "min_valid_images" in result.note
