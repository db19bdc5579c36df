"""M1 — spatial coherence: mean per-feature Moran's I of SAE codes on the patch grid (paper §4.1, eq. 2–3,
App. F).

A feature's map on one image is its code over the P = H × W patches (row-major). Moran's I uses binary
queen (8-neighbour) weights and the P / ΣW normalization of eq. 2 (no row standardization). A feature is
evaluable on an image when it is active (> 0) on at least 5 patches and its map's variance exceeds 1e-8;
it is evaluable in aggregate with at least 50 such images (paper Table 2). The SAE-level score is the mean
over evaluable features of their per-feature mean I; the z-statistic of App. F checks it against the
spatial-random null E[I] = −1/(P − 1).

``m1.grid = "HxW"`` (the App. G resolution control) resamples every valid map bilinearly to H × W before
Moran's I; the null is then that of the new grid, −1/(H·W − 1). Validity is decided on the native map.

Only the features active in an image are scored: codes are sparse, so per image the maps of features with
enough active patches are gathered and scored in one batched call.
"""

from __future__ import annotations

import math
import typing
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, TypeVar

import numpy as np
import torch
from pydantic import Field

from visae.metrics.base import EvalContext, Metric, MetricConfig, MetricResult, register_metric
from visae.uncertainty import BootstrapConfig, Interval, percentile_interval, poisson_weights

if TYPE_CHECKING:
    from collections.abc import Iterable

    from visae.metrics.encode import EncodedBatch, PooledFeatures

FEATURES_TABLE = "m1_features.parquet"
S = TypeVar("S", bound="SpatialSummary")
# Maps scored per morans_i call: bounds the gathered copy to ~64 MiB of float32 at P = 256.
MAPS_PER_CHUNK = 65536
# Elements per block of morans_i on CPU (~1 MiB of float32: the temporaries stay in cache).
CPU_BLOCK_ELEMENTS = 1 << 18
# Bootstrap sums go through a dense per-(feature, image) table once maps fill 1/ratio of it.
DENSE_REPLICATE_RATIO = 16


# --- Moran's I on a lattice ------------------------------------------------------------------------
def queen_weight_sum(grid_h: int, grid_w: int) -> int:
    """ΣW of binary queen weights on an H × W lattice: each neighbouring pair counted twice."""
    return 2 * (grid_h * (grid_w - 1) + grid_w * (grid_h - 1) + 2 * (grid_h - 1) * (grid_w - 1))


def null_expectation(n_patches: int) -> float:
    """E[I] = −1/(P − 1) under spatial randomness (Moran, 1950)."""
    return -1.0 / (n_patches - 1)


def morans_i(maps: torch.Tensor) -> torch.Tensor:
    """Moran's I of every map in ``maps [..., H, W]`` with binary queen weights (paper eq. 2).

    ``I = P/ΣW · Σ_pq w_pq z_p z_q / Σ_p z_p²`` with ``z`` the map minus its mean. The neighbour sum is
    a separable 3 × 3 box sum (a W × W band product and a one-row shift), never a P × P matrix. Computed in
    float64 for float64 input, float32
    otherwise; NaN where a map is constant. Works on any device, batched over the leading dimensions.
    """
    if maps.ndim < 2:
        raise ValueError(f"morans_i: expected maps [..., H, W], got shape {tuple(maps.shape)}")
    grid_h, grid_w = maps.shape[-2], maps.shape[-1]
    lead = maps.shape[:-2]
    dtype = torch.float64 if maps.dtype == torch.float64 else torch.float32
    x = maps.reshape(-1, grid_h, grid_w)
    if grid_h * grid_w < 2 or x.shape[0] == 0:
        return torch.full(lead, float("nan"), dtype=dtype, device=maps.device)
    # On CPU the few elementwise passes run far faster on cache-sized blocks than on one large tensor.
    block = max(1, CPU_BLOCK_ELEMENTS // (grid_h * grid_w)) if maps.device.type == "cpu" else x.shape[0]
    if x.shape[0] <= block:
        return _morans_i_block(x.to(dtype)).reshape(lead)
    out = torch.cat([_morans_i_block(x[s:s + block].to(dtype)) for s in range(0, x.shape[0], block)])
    return out.reshape(lead)


def _morans_i_block(x_nhw: torch.Tensor) -> torch.Tensor:
    n, grid_h, grid_w = x_nhw.shape
    n_patches = grid_h * grid_w
    flat = x_nhw.reshape(n, n_patches)
    z = flat - flat.mean(dim=-1, keepdim=True)
    denom = torch.linalg.vecdot(z, z)
    # Queen box sum B = T_H Z T_W (T: tridiagonal ones). Y = Z T_W is one small GEMM over all rows; then
    # Σ z·B = Σ z·Y + 2 Σ_r z[r]·Y[r+1] by the symmetry of T_W, and the neighbour sum is Σ z·B − Σ z².
    band = _tridiagonal_ones(grid_w, z.dtype, z.device)
    y = (z.reshape(n * grid_h, grid_w) @ band).reshape(n, n_patches)
    box = torch.linalg.vecdot(z, y) + 2.0 * torch.linalg.vecdot(z[:, :-grid_w], y[:, grid_w:])
    out = (n_patches / queen_weight_sum(grid_h, grid_w)) * (box - denom) / denom
    # (amax, amin separately: aminmax is an order of magnitude slower on CPU)
    return out.masked_fill(flat.amax(dim=-1) == flat.amin(dim=-1), float("nan"))


def _tridiagonal_ones(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    idx = torch.arange(size, device=device)
    return ((idx[:, None] - idx[None, :]).abs() <= 1).to(dtype)


GRID_PATTERN = r"^[1-9][0-9]*x[1-9][0-9]*$"


def parse_grid(text: str | None) -> tuple[int, int] | None:
    """``"14x14"`` → ``(14, 14)``; None stays None."""
    if text is None:
        return None
    h, w = text.lower().split("x")
    return int(h), int(w)


def resample_maps(maps_khw: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear resampling of every map to ``grid_hw`` (``align_corners=False``: half-pixel centres, edge
    values clamped; no antialiasing), the App. G control for grid resolution. A map already on that grid
    is returned as is."""
    if tuple(maps_khw.shape[-2:]) == tuple(grid_hw):
        return maps_khw
    x = maps_khw.reshape(-1, 1, *maps_khw.shape[-2:])
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    out = torch.nn.functional.interpolate(x.to(dtype), size=grid_hw, mode="bilinear", align_corners=False)
    return out.reshape(*maps_khw.shape[:-2], *grid_hw)


def z_statistic(feature_means: np.ndarray, n_patches: int, ddof: int = 1) -> tuple[float, float]:
    """App. F: ``z = (Ī_SAE − E[I]) / (sd({Ī_i}) / √N_eval)``; returns ``(z, sd)`` (sd with ``ddof``).

    NaN when fewer than ``ddof + 1`` features are given or the sd is zero.
    """
    values = np.asarray(feature_means, dtype=np.float64)
    n_eval = values.size
    if n_eval <= ddof:
        return float("nan"), float("nan")
    sd = float(np.std(values, ddof=ddof))
    if sd == 0.0:
        return float("nan"), sd
    return float((values.mean() - null_expectation(n_patches)) / (sd / math.sqrt(n_eval))), sd


# --- accumulation shared with the raw-backbone diagnostic --------------------------------------------
class SpatialSummary(MetricResult):
    """Summary of per-feature (or per-channel) mean Moran's I; shared by M1 and the raw diagnostic."""

    mean_i: float | None = Field(description="mean over evaluable features of their mean I (eq. 3)")
    median_i: float | None = Field(description="median of the per-feature means")
    q25_i: float | None = Field(description="25th percentile of the per-feature means")
    q75_i: float | None = Field(description="75th percentile of the per-feature means")
    iqr_i: float | None = Field(description="interquartile range q75 − q25 of the per-feature means")
    n_eval: int = Field(description="number of evaluable features (enough valid images)")
    n_dict: int = Field(description="number of features (dictionary size, or channels for raw)")
    eval_fraction: float = Field(description="N_eval / N_dict")
    null_expectation: float = Field(description="E[I] = −1/(P − 1) under spatial randomness")
    z: float | None = Field(description="App. F null-check z = (Ī − E[I]) / (sd / √N_eval)")
    sd_feature_means: float | None = Field(description="sd of the per-feature means used in z")
    sd_ddof: int = Field(description="delta degrees of freedom of that sd (1: sample sd)")
    n_images: int = Field(description="images streamed")
    n_valid_pairs: int = Field(description="valid (feature, image) maps scored in total")
    grid_h: int = Field(description="rows of the grid Moran's I was computed on (the resampled grid if any)")
    grid_w: int = Field(description="columns of the grid Moran's I was computed on")
    native_grid: str = Field("", description="the backbone's patch grid 'HxW' when the maps were resampled "
                             "to grid_h × grid_w before scoring (App. G control); empty otherwise")
    native_mean_i: float | None = Field(None, description="with resampling: the same mean computed on the "
                                        "native grid from the same maps (the comparison App. G asks for)")


class MoranAccumulator:
    """Per-feature float64 sums and counts of Moran's I over valid images, on the computing device."""

    def __init__(self, n_features: int, device: torch.device) -> None:
        self.n_features = n_features
        self.sum_f = torch.zeros(n_features, dtype=torch.float64, device=device)
        self.count_f = torch.zeros(n_features, dtype=torch.int64, device=device)
        self.n_images = 0
        self.grid_hw: tuple[int, int] | None = None
        self.boot: BootstrapConfig | None = None
        self.boot_sum_fb = torch.zeros(0, dtype=torch.float64)
        self.boot_count_fb = torch.zeros(0, dtype=torch.float64)
        self.resample_hw: tuple[int, int] | None = None
        """Grid every valid map is bilinearly resampled to before Moran's I (None: the native grid)."""
        self.native_sum_f = torch.zeros(n_features, dtype=torch.float64, device=device)
        self.native_count_f = torch.zeros(n_features, dtype=torch.int64, device=device)

    def enable_bootstrap(self, config: BootstrapConfig) -> None:
        """Also keep per-replicate weighted sums ``[F, B]`` (Poisson weights of each map's image)."""
        if config.n_boot > 0:
            self.boot = config
            shape = (self.n_features, config.n_boot)
            self.boot_sum_fb = torch.zeros(shape, dtype=torch.float64, device=self.sum_f.device)
            self.boot_count_fb = torch.zeros(shape, dtype=torch.float64, device=self.sum_f.device)

    def follow(self, device: torch.device) -> None:
        """Keep the sums on the device the stream arrives on."""
        if self.sum_f.device != device:
            self.sum_f = self.sum_f.to(device)
            self.count_f = self.count_f.to(device)
            self.boot_sum_fb = self.boot_sum_fb.to(device)
            self.boot_count_fb = self.boot_count_fb.to(device)

    def _add_replicates(self, feature_k: torch.Tensor, image_k: torch.Tensor, i_k: torch.Tensor) -> None:
        assert self.boot is not None
        images, inverse = torch.unique(image_k, return_inverse=True)
        w_ub = torch.from_numpy(poisson_weights(images.cpu().numpy(), self.boot.n_boot, self.boot.seed))
        w_ub = w_ub.to(device=i_k.device, dtype=torch.float64)
        n_maps, n_img = i_k.numel(), images.numel()
        if self.n_features * n_img <= DENSE_REPLICATE_RATIO * n_maps:
            # many maps per image: per-(feature, image) tables times the weights, one GEMM (~6× the scatter)
            table_2fu = torch.zeros(2, self.n_features, n_img, dtype=torch.float64, device=i_k.device)
            table_2fu[0].index_put_((feature_k, inverse), i_k.double(), accumulate=True)
            table_2fu[1].index_put_((feature_k, inverse), torch.ones_like(i_k, dtype=torch.float64),
                                    accumulate=True)
            sums_2fb = (table_2fu.view(2 * self.n_features, n_img) @ w_ub).view(2, self.n_features, -1)
            self.boot_sum_fb += sums_2fb[0]
            self.boot_count_fb += sums_2fb[1]
            return
        w_kb = w_ub[inverse]
        self.boot_sum_fb.index_add_(0, feature_k, w_kb * i_k.double()[:, None])
        self.boot_count_fb.index_add_(0, feature_k, w_kb)

    def interval(self, min_valid_images: int) -> Interval | None:
        """Bootstrap interval of the headline mean (None without the bootstrap)."""
        if self.boot is None:
            return None
        return percentile_interval(self.replicates(min_valid_images), self.boot.level)

    def replicates(self, min_valid_images: int) -> np.ndarray:
        """Replicates ``[B]`` of the headline: per replicate, the mean over the features with at least
        ``min_valid_images`` (weighted) valid images of their weighted mean I (NaN: none evaluable)."""
        count = self.boot_count_fb.cpu().numpy()
        total = self.boot_sum_fb.cpu().numpy()
        evaluable = count >= min_valid_images
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(evaluable, total / np.where(evaluable, count, 1.0), 0.0)
            return np.where(evaluable.any(axis=0), means.sum(axis=0) / evaluable.sum(axis=0), np.nan)

    def add(self, maps_khw: torch.Tensor, feature_k: torch.Tensor, variance_eps: float,
            image_k: torch.Tensor | None = None) -> None:
        """Score maps (already gathered; ``feature_k`` their feature index, ``image_k`` their image's
        position in the cache, needed for the bootstrap); keep those with var > eps."""
        if maps_khw.shape[0] == 0:
            return
        x = maps_khw.float()
        var_k = x.flatten(1).var(dim=1, correction=0)
        keep = var_k > variance_eps
        if not bool(keep.any()):
            return
        self._score(x[keep], feature_k[keep], None if image_k is None else image_k[keep])

    def _score(self, maps_khw: torch.Tensor, feature_k: torch.Tensor, image_k: torch.Tensor | None) -> None:
        """Moran's I of maps already known to have variance > eps (on the resampling grid when one is set);
        accumulate the finite ones."""
        if self.resample_hw is not None:
            native_k = morans_i(maps_khw)
            ok = torch.isfinite(native_k)
            if self.native_sum_f.device != native_k.device:
                self.native_sum_f = self.native_sum_f.to(native_k.device)
                self.native_count_f = self.native_count_f.to(native_k.device)
            self.native_sum_f.index_add_(0, feature_k[ok], native_k[ok].double())
            self.native_count_f.index_add_(0, feature_k[ok], torch.ones_like(feature_k[ok]))
            maps_khw = resample_maps(maps_khw, self.resample_hw)
        i_k = morans_i(maps_khw)
        finite = torch.isfinite(i_k)
        feats = feature_k[finite]
        self.sum_f.index_add_(0, feats, i_k[finite].double())
        self.count_f.index_add_(0, feats, torch.ones_like(feats))
        if self.boot is not None and image_k is not None:
            self._add_replicates(feats, image_k[finite], i_k[finite])

    def feature_means(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean_I per feature (NaN where no valid image), valid image count per feature)``."""
        count = self.count_f.cpu().numpy()
        total = self.sum_f.cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        return means, count

    def _native_mean(self, min_valid_images: int) -> float | None:
        """Mean over evaluable features of their native-grid mean I (None without resampling)."""
        if self.resample_hw is None:
            return None
        count = self.native_count_f.cpu().numpy()
        ok = count >= min_valid_images
        if not ok.any():
            return None
        return float((self.native_sum_f.cpu().numpy()[ok] / count[ok]).mean())

    def summarize(self, metric: str, min_valid_images: int, result_cls: type[S], note_empty: str) -> S:
        """Mean (headline), median, IQR, N_eval/N_dict, null and z over the evaluable features."""
        if self.grid_hw is None:
            raise ValueError(f"{metric}: no images were streamed")
        native = self.grid_hw
        grid_h, grid_w = self.resample_hw or native
        n_patches = grid_h * grid_w
        means, count = self.feature_means()
        evaluable = count >= min_valid_images
        values = means[evaluable]
        n_eval = int(evaluable.sum())
        common = {
            "metric": metric, "higher_is_better": True, "n_eval": n_eval, "n_dict": self.n_features,
            "eval_fraction": n_eval / self.n_features if self.n_features else 0.0,
            "null_expectation": null_expectation(n_patches), "sd_ddof": 1, "n_images": self.n_images,
            "n_valid_pairs": int(count.sum()), "grid_h": grid_h, "grid_w": grid_w,
            "native_grid": f"{native[0]}x{native[1]}" if self.resample_hw is not None else "",
            "native_mean_i": self._native_mean(min_valid_images),
        }
        if n_eval == 0:
            return result_cls(value=None, mean_i=None, median_i=None, q25_i=None, q75_i=None, iqr_i=None,
                              z=None, sd_feature_means=None, note=note_empty, **common)
        q25, median, q75 = (float(v) for v in np.percentile(values, [25, 50, 75]))
        z, sd = z_statistic(values, n_patches, ddof=1)
        mean = float(values.mean())
        result = result_cls(value=mean, mean_i=mean, median_i=median, q25_i=q25, q75_i=q75, iqr_i=q75 - q25,
                            z=None if math.isnan(z) else z, sd_feature_means=None if math.isnan(sd) else sd,
                            **common)
        return typing.cast(S, result.with_interval(self.interval(min_valid_images)))


def write_feature_table(path: Path, means: np.ndarray, count: np.ndarray) -> None:
    """Per-feature scores for the figures: Parquet with ``feature, mean_I, n_valid_images``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from visae.io import atomic_write_with

    table = pa.table({
        "feature": pa.array(np.arange(means.size, dtype=np.int64)),
        "mean_I": pa.array(means.astype(np.float64)),
        "n_valid_images": pa.array(count.astype(np.int64)),
    })
    atomic_write_with(path, lambda tmp: pq.write_table(table, tmp))


# --- M1 ----------------------------------------------------------------------------------------------
class M1Config(MetricConfig):
    """Settings for M1; defaults are the paper's Table 2."""

    min_active_patches: int = Field(5, ge=1, description="a feature is evaluable on an image only if it is "
                                    "active (> 0) on at least this many patches (paper Table 2: 5)")
    variance_eps: float = Field(1e-8, ge=0.0, description="and its map's variance (ddof 0) exceeds this "
                                "(paper Table 2: ε = 1e-8)")
    min_valid_images: int = Field(50, ge=1, description="a feature is evaluable in aggregate with at least "
                                  "this many valid images (paper Table 2: 50)")
    grid: str | None = Field(None, pattern=GRID_PATTERN, description="'HxW': bilinearly resample each valid "
                             "feature map to this grid before Moran's I, with the null −1/(P'−1) of the new "
                             "grid (App. G resolution control, e.g. '14x14'); None: the native grid")
    write_features: bool = Field(True, description=f"write per-feature scores to <out>/{FEATURES_TABLE}")


class M1Result(SpatialSummary):
    """M1: ``value`` is the mean Moran's I over evaluable SAE features (higher: more localized)."""


class M1Accumulator(MoranAccumulator):
    """Streams encoded images into per-feature Moran's I sums, scoring only the features active there."""

    def __init__(self, n_features: int, config: M1Config, device: torch.device) -> None:
        super().__init__(n_features, device)
        self.config = config
        self.resample_hw = parse_grid(config.grid)

    def update(self, codes_npf: torch.Tensor, grid_hw: tuple[int, int],
               image_index_n: np.ndarray | None = None) -> None:
        """Add one group of images' codes ``[n, P, F]`` (``image_index_n``: their cache positions)."""
        n, p, _ = codes_npf.shape
        grid_h, grid_w = grid_hw
        if p != grid_h * grid_w:
            raise ValueError(f"m1: codes have {p} patches but the grid is {grid_h}×{grid_w}")
        self.follow(codes_npf.device)
        self.grid_hw = grid_hw
        self.n_images += n
        active_nf = (codes_npf > 0).sum(dim=1)
        img_k, feat_k = torch.nonzero(active_nf >= self.config.min_active_patches, as_tuple=True)
        image_k = _positions(image_index_n, img_k)
        for start in range(0, img_k.numel(), MAPS_PER_CHUNK):
            sl = slice(start, start + MAPS_PER_CHUNK)
            maps_kp = codes_npf[img_k[sl], :, feat_k[sl]]
            self.add(maps_kp.reshape(-1, grid_h, grid_w), feat_k[sl], self.config.variance_eps,
                     None if image_k is None else image_k[sl])


    def update_batch(self, batch: EncodedBatch) -> None:
        """Add one encoded group from its sparse codes: only the maps of active features are built.

        Equals :meth:`update` on ``batch.codes_npf``: a pair (image, feature) is scored when the feature is
        > 0 on at least ``min_active_patches`` patches; its map holds every non-zero code of the pair.
        """
        n, p = batch.n_images, batch.n_patches
        grid_h, grid_w = batch.grid_hw
        if p != grid_h * grid_w:
            raise ValueError(f"m1: codes have {p} patches but the grid is {grid_h}×{grid_w}")
        codes = batch.codes
        keys = batch.image_feature_keys()
        self.follow(keys.device)
        self.grid_hw = batch.grid_hw
        self.n_images += n
        n_cols, size = codes.n_cols, n * codes.n_cols
        vals = codes.vals_n
        count = torch.bincount(keys[vals > 0], minlength=size)
        # map variance (ddof 0, the zeros included) from float64 moments of the stored entries, per
        # (image, feature) key: only the maps that pass both rules are built
        v64 = vals.double()
        s1 = torch.zeros(size, dtype=torch.float64, device=vals.device).index_add_(0, keys, v64)
        s2 = torch.zeros_like(s1).index_add_(0, keys, v64 * v64)
        varied = (s2 / p - (s1 / p) ** 2) > self.config.variance_eps
        keep = (count >= self.config.min_active_patches) & varied
        pair_key = torch.nonzero(keep).squeeze(1)
        if pair_key.numel() == 0:
            return
        lookup = torch.full((size,), -1, dtype=torch.int64, device=keys.device)
        lookup[pair_key] = torch.arange(pair_key.numel(), device=keys.device)
        pid = lookup[keys]
        on = pid >= 0
        pid, patch, vals = pid[on], codes.rows_n[on] % p, vals[on]
        feat_k = pair_key % n_cols
        image_k = _positions(batch.image_index_n, pair_key // n_cols)
        for start in range(0, pair_key.numel(), MAPS_PER_CHUNK):
            stop = min(start + MAPS_PER_CHUNK, pair_key.numel())
            sel = (pid >= start) & (pid < stop) if stop - start < pair_key.numel() else slice(None)
            maps = torch.zeros(stop - start, p, dtype=torch.float32, device=vals.device)
            maps[pid[sel] - start, patch[sel]] = vals[sel].float()
            self._score(maps.reshape(-1, grid_h, grid_w), feat_k[start:stop],
                        None if image_k is None else image_k[start:stop])


def _positions(image_index_n: np.ndarray | None, local_k: torch.Tensor) -> torch.Tensor | None:
    """Cache positions of the images at batch-local indices ``local_k`` (None without positions)."""
    if image_index_n is None:
        return None
    return torch.as_tensor(np.asarray(image_index_n, dtype=np.int64), device=local_k.device)[local_k]


def compute_m1(batches: Iterable[EncodedBatch], n_features: int, config: M1Config | None = None,
               device: torch.device | None = None) -> tuple[M1Result, np.ndarray, np.ndarray]:
    """M1 over encoded image groups: the result, per-feature mean I (NaN: no valid image) and counts."""
    config = config or M1Config()
    acc: M1Accumulator | None = None
    for batch in batches:
        if acc is None:
            acc = M1Accumulator(n_features, config, device or batch.acts_npd.device)
        acc.update_batch(batch)
    if acc is None:
        raise ValueError("m1: no images were encoded")
    means, count = acc.feature_means()
    return _summarize_m1(acc, config), means, count


def _summarize_m1(acc: MoranAccumulator, config: M1Config) -> M1Result:
    return acc.summarize("m1", config.min_valid_images, M1Result,
                         note_empty=f"no feature has {config.min_valid_images} valid images "
                                    f"(≥ {config.min_active_patches} active patches, variance > "
                                    f"{config.variance_eps}); lower m1.min_valid_images or use more images")


@register_metric
class M1Spatial(Metric[M1Config]):
    """Registered as ``m1``."""

    name: ClassVar[str] = "m1"

    def __init__(self, config: M1Config, ctx: EvalContext) -> None:
        super().__init__(config, ctx)
        self.acc = M1Accumulator(ctx.sae.d_sae, config, ctx.device)
        self.acc.enable_bootstrap(ctx.bootstrap)

    def update(self, batch: EncodedBatch) -> None:
        """Score the active features of one image group (from its sparse codes)."""
        self.acc.update_batch(batch)

    def finalize(self, pooled: PooledFeatures | None) -> MetricResult:
        """Summarize; write the per-feature table when an output folder is set."""
        result = _summarize_m1(self.acc, self.config)
        if self.ctx.out_dir is not None and self.config.write_features:
            means, count = self.acc.feature_means()
            write_feature_table(self.ctx.out_dir / FEATURES_TABLE, means, count)
        return result
