"""``m1.grid`` / ``raw.grid`` (App. G resolution control): each valid map is bilinearly resampled to the
given grid before Moran's I, with the new grid's null. Known answer: scipy's order-1 spline resampling at
half-pixel centres, then esda's Moran's I with libpysal queen weights, on planted blobs."""

from __future__ import annotations

import esda
import numpy as np
import pytest
import torch
from libpysal.weights import lat2W
from scipy.ndimage import map_coordinates

from visae.errors import ConfigValueError
from visae.metrics.encode import EncodedBatch
from visae.metrics.m1_spatial import M1Config, compute_m1, null_expectation, parse_grid, resample_maps
from visae.metrics.raw_spatial import RawConfig, compute_raw


def scipy_bilinear(map_hw: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Half-pixel-centre bilinear resampling, edges clamped (independent of torch)."""
    in_h, in_w = map_hw.shape
    ys = np.clip((np.arange(out_h) + 0.5) * in_h / out_h - 0.5, 0, in_h - 1)
    xs = np.clip((np.arange(out_w) + 0.5) * in_w / out_w - 0.5, 0, in_w - 1)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return map_coordinates(map_hw.astype(np.float64), [yy, xx], order=1, mode="nearest")


def esda_i(map_hw: np.ndarray) -> float:
    weights = lat2W(*map_hw.shape, rook=False)  # row-major ids, queen contiguity
    return float(esda.Moran(map_hw.ravel(), weights, transformation="B", permutations=0).I)


def blob(h: int, w: int, cy: float, cx: float, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))


def planted(n_images: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Codes [n, P, 2]: 0 = a blob per image, 1 = sparse noise."""
    rng = np.random.default_rng(seed)
    codes = np.zeros((n_images, h * w, 2))
    for i in range(n_images):
        b = blob(h, w, rng.uniform(2, h - 3), rng.uniform(2, w - 3), rng.uniform(1.2, 2.5))
        codes[i, :, 0] = np.where(b > 0.1, b, 0).ravel()
        codes[i, :, 1] = np.where(rng.random(h * w) < 0.3, rng.random(h * w), 0)
    return codes


def batches(codes: np.ndarray, grid: tuple[int, int], group: int) -> list[EncodedBatch]:
    t = torch.from_numpy(codes).float()
    out = []
    for s in range(0, t.shape[0], group):
        c = t[s:s + group]
        n = c.shape[0]
        out.append(EncodedBatch(np.arange(s, s + n), np.zeros(n, dtype=np.int64),
                                torch.zeros(n, c.shape[1], 2), c, torch.zeros(n, c.shape[1], 2), grid))
    return out


def test_resample_maps_equals_scipy_bilinear() -> None:
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, 16, 16))
    got = resample_maps(torch.from_numpy(maps), (14, 14)).numpy()
    for k in range(3):
        np.testing.assert_allclose(got[k], scipy_bilinear(maps[k], 14, 14), atol=1e-12)
    up = resample_maps(torch.from_numpy(maps[:1]), (20, 18)).numpy()
    np.testing.assert_allclose(up[0], scipy_bilinear(maps[0], 20, 18), atol=1e-12)
    np.testing.assert_array_equal(resample_maps(torch.from_numpy(maps), (16, 16)).numpy(), maps)


def test_m1_on_resampled_blobs_matches_esda() -> None:
    h = w = 16
    codes = planted(24, h, w)
    cfg = M1Config(min_valid_images=1, grid="14x14")
    result, means, counts = compute_m1(batches(codes, (h, w), 7), n_features=2, config=cfg)
    for f in range(2):
        expected = []
        for i in range(codes.shape[0]):
            m = codes[i, :, f].reshape(h, w)
            if (m > 0).sum() >= 5 and m.var() > 1e-8:
                expected.append(esda_i(scipy_bilinear(m, 14, 14)))
        assert counts[f] == len(expected)
        assert means[f] == pytest.approx(np.mean(expected), abs=1e-5)
    assert (result.grid_h, result.grid_w, result.native_grid) == (14, 14, "16x16")
    assert result.null_expectation == pytest.approx(-1 / 195)
    native, native_means, _ = compute_m1(batches(codes, (h, w), 7), 2, M1Config(min_valid_images=1))
    assert native.null_expectation == pytest.approx(null_expectation(256)) and native.native_grid == ""
    assert result.native_mean_i == pytest.approx(native.value, abs=1e-6)  # both from one pass
    assert native.native_mean_i is None
    # blobs stay coherent and noise stays near the null, but resampling moves both (interpolation smooths)
    assert means[0] > 0.5 and abs(native_means[1]) < 0.1 and means[1] > native_means[1]


def test_raw_on_resampled_fields_matches_esda() -> None:
    rng = np.random.default_rng(1)
    h, w = 16, 16
    acts = np.stack([np.stack([blob(h, w, *rng.uniform(3, 12, 2), 2.0).ravel(), rng.normal(size=h * w)], 1)
                     for _ in range(10)])
    t = torch.from_numpy(acts).float()
    result, means, counts = compute_raw([(t[:6], (h, w)), (t[6:], (h, w))],
                                        RawConfig(min_valid_images=1, grid="14x14"))
    for c in range(2):
        expected = [esda_i(scipy_bilinear(acts[i, :, c].reshape(h, w), 14, 14)) for i in range(10)]
        assert means[c] == pytest.approx(np.mean(expected), abs=1e-5)
    assert counts.tolist() == [10, 10] and result.null_expectation == pytest.approx(-1 / 195)


def test_grid_option_validates() -> None:
    assert parse_grid("14x14") == (14, 14) and parse_grid(None) is None
    for bad in ("14", "0x14", "14×14", "a x b"):
        with pytest.raises(ConfigValueError, match="grid"):
            M1Config(grid=bad)
