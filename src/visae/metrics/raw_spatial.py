"""Raw-backbone spatial diagnostic (paper App. G): M1's Moran's I statistic on raw activation channels.

Every channel of the cached activations is a map over the patch grid. Raw activations are dense and
signed, so only the variance rule applies: a (channel, image) map is valid when its variance exceeds
1e-8 (measured in the cache's raw units); a channel is evaluable with at least 50 valid images. The
summary (mean, median, IQR, N_eval/N_dict, null, z) is M1's. Needs only the activations of the shared
stream, not the codes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from pydantic import Field

from visae.metrics.base import EvalContext, Metric, MetricConfig, MetricResult, register_metric
from visae.metrics.m1_spatial import (
    GRID_PATTERN,
    MoranAccumulator,
    SpatialSummary,
    parse_grid,
    write_feature_table,
)
from visae.uncertainty import BootstrapConfig

if TYPE_CHECKING:
    from collections.abc import Iterable

    from visae.metrics.encode import EncodedBatch, PooledFeatures

CHANNELS_TABLE = "raw_channels.parquet"
MAPS_PER_CHUNK = 65536


class RawConfig(MetricConfig):
    """Settings for the raw-backbone diagnostic; defaults follow M1 (paper Table 2, App. G)."""

    variance_eps: float = Field(1e-8, ge=0.0, description="a channel's map on an image is valid when its "
                                "variance (ddof 0, raw cache units) exceeds this (paper: ε = 1e-8)")
    min_valid_images: int = Field(50, ge=1, description="a channel is evaluable with at least this many "
                                  "valid images (as M1, paper Table 2: 50)")
    grid: str | None = Field(None, pattern=GRID_PATTERN, description="'HxW': bilinearly resample each valid "
                             "channel map to this grid before Moran's I, null −1/(P'−1) of the new grid (as "
                             "m1.grid; App. G); None: the native grid")
    write_features: bool = Field(True, description=f"write per-channel scores to <out>/{CHANNELS_TABLE}")


class RawResult(SpatialSummary):
    """Raw diagnostic: ``value`` is the mean Moran's I over evaluable raw channels (n_dict = d_model)."""


class RawAccumulator(MoranAccumulator):
    """Streams activation groups ``[n, P, D]`` into per-channel Moran's I sums."""

    def __init__(self, n_channels: int, config: RawConfig, device: torch.device,
                 input_scale: float = 1.0) -> None:
        super().__init__(n_channels, device)
        self.config = config
        self.resample_hw = parse_grid(config.grid)
        # Activations arrive divided by the SAE's scalar std; a raw variance is scale² times theirs.
        self.eps_in_input_units = config.variance_eps / (input_scale ** 2)

    def update(self, acts_npd: torch.Tensor, grid_hw: tuple[int, int],
               image_index_n: np.ndarray | None = None) -> None:
        """Add one group of images' activations (``image_index_n``: their cache positions, for the
        bootstrap)."""
        n, p, d = acts_npd.shape
        grid_h, grid_w = grid_hw
        if p != grid_h * grid_w:
            raise ValueError(f"raw: activations have {p} patches but the grid is {grid_h}×{grid_w}")
        if d != self.n_features:
            raise ValueError(f"raw: activations have {d} channels, expected {self.n_features}")
        self.follow(acts_npd.device)
        self.grid_hw = grid_hw
        self.n_images += n
        images_per_chunk = max(1, MAPS_PER_CHUNK // d)
        channel_d = torch.arange(d, device=self.sum_f.device)
        for start in range(0, n, images_per_chunk):
            chunk = acts_npd[start:start + images_per_chunk]
            maps_khw = chunk.permute(0, 2, 1).reshape(-1, grid_h, grid_w)
            image_k = None
            if image_index_n is not None:
                positions = torch.as_tensor(np.asarray(image_index_n[start:start + images_per_chunk],
                                                       dtype=np.int64), device=channel_d.device)
                image_k = positions.repeat_interleave(d)
            self.add(maps_khw, channel_d.repeat(chunk.shape[0]), self.eps_in_input_units, image_k)


def _summarize_raw(acc: MoranAccumulator, config: RawConfig) -> RawResult:
    return acc.summarize("raw", config.min_valid_images, RawResult,
                         note_empty=f"no channel has {config.min_valid_images} images with variance > "
                                    f"{config.variance_eps}; lower raw.min_valid_images or use more images")


def compute_raw(batches: Iterable[tuple[torch.Tensor, tuple[int, int]]
                                 | tuple[torch.Tensor, tuple[int, int], np.ndarray]],
                config: RawConfig | None = None, input_scale: float = 1.0,
                bootstrap: BootstrapConfig | None = None) -> tuple[RawResult, np.ndarray, np.ndarray]:
    """Raw diagnostic over ``(acts_npd, grid_hw)`` groups: result, per-channel mean I and valid counts.

    ``input_scale`` is the factor that maps the given activations back to raw units (the SAE's std when
    they were normalized), so that the variance rule is applied in raw units. Groups given as
    ``(acts_npd, grid_hw, image_index_n)`` feed the ``bootstrap`` interval.
    """
    config = config or RawConfig()
    acc: RawAccumulator | None = None
    for group in batches:
        acts_npd, grid_hw = group[0], group[1]
        if acc is None:
            acc = RawAccumulator(acts_npd.shape[-1], config, acts_npd.device, input_scale)
            if bootstrap is not None:
                acc.enable_bootstrap(bootstrap)
        acc.update(acts_npd, grid_hw, group[2] if len(group) > 2 else None)
    if acc is None:
        raise ValueError("raw: no images were given")
    means, count = acc.feature_means()
    return _summarize_raw(acc, config), means, count


@register_metric
class RawSpatial(Metric[RawConfig]):
    """Registered as ``raw``."""

    name: ClassVar[str] = "raw"

    def __init__(self, config: RawConfig, ctx: EvalContext) -> None:
        super().__init__(config, ctx)
        scale = float(torch.as_tensor(ctx.sae.act_std))
        self.acc = RawAccumulator(ctx.sae.d_in, config, ctx.device, input_scale=scale)
        self.acc.enable_bootstrap(ctx.bootstrap)

    def update(self, batch: EncodedBatch) -> None:
        """Score every channel of one image group (codes are ignored)."""
        self.acc.update(batch.acts_npd, batch.grid_hw, batch.image_index_n)

    def finalize(self, pooled: PooledFeatures | None) -> MetricResult:
        """Summarize; write the per-channel table when an output folder is set."""
        result = _summarize_raw(self.acc, self.config)
        if self.ctx.out_dir is not None and self.config.write_features:
            means, count = self.acc.feature_means()
            write_feature_table(self.ctx.out_dir / CHANNELS_TABLE, means, count)
        return result
