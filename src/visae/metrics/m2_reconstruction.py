"""M2 — reconstruction: token-level fraction of variance unexplained (paper eq. 4), mean L0, dead features.

``FVU = Σ‖a − â‖² / Σ‖a − ā‖²`` over every patch token of the evaluation set, ā the per-dimension mean
over that set. Accumulated in one streaming pass with float64 sums (Σ‖a − â‖², Σ(a − s) per dimension,
Σ‖a − s‖², s a fixed shift taken from the first group against cancellation), so the value is exact
whatever the cache size. Computed in the SAE's input space: FVU does not change under the cache's
mean subtraction and scalar std division.
"""

from __future__ import annotations

import typing
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from pydantic import Field

from visae.metrics.base import EvalContext, Metric, MetricConfig, MetricResult, register_metric
from visae.sae.sparse import SparseCodes
from visae.uncertainty import BootstrapConfig, Interval, percentile_interval, poisson_weights

# Tokens per chunk of the per-image sums: two [chunk, D] work buffers, reused group after group.
WORK_TOKENS = 4096

if TYPE_CHECKING:
    from collections.abc import Iterable

    from visae.metrics.encode import EncodedBatch, PooledFeatures


class M2Config(MetricConfig):
    """Settings for M2; defaults are the paper's Table 2."""

    dead_threshold: float = Field(0.0, ge=0, allow_inf_nan=False,
                                  description="a feature is dead if its activation never exceeds this "
                                  "on the evaluation set (paper: never active, i.e. 0)")


class M2Result(MetricResult):
    """M2: ``value`` is the token-level FVU (lower is better)."""

    fvu: float | None = Field(description="Σ‖a − â‖² / Σ‖a − ā‖² over all evaluation tokens (eq. 4)")
    explained_variance: float | None = Field(description="1 − FVU")
    mse: float = Field(description="mean over tokens of ‖a − â‖² (SAE input space)")
    total_variance: float = Field(description="mean over tokens of ‖a − ā‖² (SAE input space)")
    mean_l0: float = Field(description="mean number of active (> 0) features per token")
    dead: int = Field(description="features never above dead_threshold on the evaluation set")
    dead_fraction: float = Field(description="dead / d_sae")
    d_sae: int = Field(description="dictionary size")
    n_tokens: int = Field(description="patch tokens evaluated")
    n_images: int = Field(description="images evaluated")


class M2Accumulator:
    """Streaming float64 sums for FVU, the L0 count and each feature's maximum."""

    def __init__(self, d_in: int, d_sae: int, config: M2Config, device: torch.device) -> None:
        self.config = config
        self.d_sae = d_sae
        self.shift_d: torch.Tensor | None = None
        self.sum_d = torch.zeros(d_in, dtype=torch.float64, device=device)
        self.sum_sq = torch.zeros((), dtype=torch.float64, device=device)
        self.sum_err = torch.zeros((), dtype=torch.float64, device=device)
        self.sum_l0 = torch.zeros((), dtype=torch.int64, device=device)
        self.max_f = torch.full((d_sae,), float("-inf"), dtype=torch.float32, device=device)
        """Largest stored (non-zero) code per feature; the implicit zeros are added in :meth:`result`."""
        self.nnz_f = torch.zeros(d_sae, dtype=torch.int64, device=device)
        self.n_tokens = 0
        self.n_images = 0
        self.boot: BootstrapConfig | None = None
        self._work: torch.Tensor | None = None

    def enable_bootstrap(self, config: BootstrapConfig) -> None:
        """Also keep per-replicate weighted sums (Poisson weights per image) for an interval of FVU."""
        if config.n_boot > 0:
            self.boot = config
            self.boot_err_b = torch.zeros(config.n_boot, dtype=torch.float64)
            self.boot_sq_b = torch.zeros(config.n_boot, dtype=torch.float64)
            self.boot_tokens_b = torch.zeros(config.n_boot, dtype=torch.float64)
            self.boot_sum_db = torch.zeros((self.sum_d.shape[0], config.n_boot), dtype=torch.float64)

    def _add_replicates(self, image_index_n: np.ndarray, err_n: torch.Tensor, sq_n: torch.Tensor,
                        sum_nd: torch.Tensor, n_patches: int) -> None:
        assert self.boot is not None
        w_nb = torch.from_numpy(poisson_weights(image_index_n, self.boot.n_boot, self.boot.seed)).double()
        self.boot_err_b += err_n.cpu() @ w_nb
        self.boot_sq_b += sq_n.cpu() @ w_nb
        self.boot_tokens_b += n_patches * w_nb.sum(dim=0)
        self.boot_sum_db += sum_nd.cpu().T @ w_nb

    def interval(self) -> Interval | None:
        """Bootstrap interval of FVU (None without the bootstrap)."""
        if self.boot is None:
            return None
        return percentile_interval(self.replicates(), self.boot.level)

    def replicates(self) -> np.ndarray:
        """Replicates ``[B]`` of FVU: weighted error over the weighted variance about the replicate's own
        mean (NaN where that variance is 0)."""
        tokens = self.boot_tokens_b.clamp_min(1.0)
        total_b = (self.boot_sq_b - (self.boot_sum_db * self.boot_sum_db).sum(dim=0) / tokens).numpy()
        err_b = self.boot_err_b.numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total_b > 0, err_b / np.where(total_b > 0, total_b, 1.0), np.nan)

    def update(self, acts_npd: torch.Tensor, recon_npd: torch.Tensor,
               codes_npf: torch.Tensor | SparseCodes, image_index_n: np.ndarray | None = None) -> None:
        """Add one group of images (activations, reconstructions and codes in the SAE input space).

        Codes are dense ``[n, P, F]`` or sparse over the ``n·P`` tokens (:class:`SparseCodes`);
        ``image_index_n`` (the images' cache positions) feeds the bootstrap.
        """
        from visae.metrics.encode import dense_to_sparse

        d = acts_npd.shape[-1]
        a_td = acts_npd.reshape(-1, d).float()
        codes = codes_npf if isinstance(codes_npf, SparseCodes) else dense_to_sparse(
            codes_npf.reshape(a_td.shape[0], -1))
        device = a_td.device
        if self.sum_d.device != device:
            self._to(device)
        if self.shift_d is None:
            self.shift_d = a_td.double().mean(dim=0).float()
        n, p = acts_npd.shape[0], acts_npd.shape[1]
        err_n, sq_n, sum_nd = self._image_sums(a_td.view(n, p, d), recon_npd.float())
        self.sum_err += err_n.sum()
        self.sum_sq += sq_n.sum()
        self.sum_d += sum_nd.sum(dim=0)
        self.sum_l0 += (codes.vals_n > 0).sum()
        self.max_f.scatter_reduce_(0, codes.cols_n, codes.vals_n.float(), reduce="amax")
        self.nnz_f += torch.bincount(codes.cols_n, minlength=self.d_sae)
        self.n_tokens += a_td.shape[0]
        self.n_images += n
        if self.boot is not None and image_index_n is not None:
            self._add_replicates(np.asarray(image_index_n), err_n, sq_n, sum_nd, p)

    def _image_sums(self, a_npd: torch.Tensor, r_npd: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-image ``(Σ|a − r|², Σ|a − shift|², Σ (a − shift))`` in float64: sums over the P patches in the
        input precision, in chunks of images through reused work buffers (no [tokens, D] temporary)."""
        n, p, d = a_npd.shape
        assert self.shift_d is not None
        err_n = torch.empty(n, dtype=torch.float64, device=a_npd.device)
        sq_n, sum_nd = torch.empty_like(err_n), torch.empty(n, d, dtype=torch.float64, device=a_npd.device)
        step = max(1, WORK_TOKENS // p)
        if self._work is None or self._work.shape[1:] != (step * p, d) or self._work.device != a_npd.device:
            self._work = torch.empty(2, step * p, d, dtype=a_npd.dtype, device=a_npd.device)
        for s0 in range(0, n, step):
            s1 = min(n, s0 + step)
            a_td = a_npd[s0:s1].reshape(-1, d)
            err_td = torch.sub(a_td, r_npd[s0:s1].reshape(-1, d), out=self._work[0, :a_td.shape[0]])
            centred_td = torch.sub(a_td, self.shift_d, out=self._work[1, :a_td.shape[0]])
            err_n[s0:s1] = _squared_norms(err_td).view(s1 - s0, p).sum(dim=1, dtype=torch.float64)
            sq_n[s0:s1] = _squared_norms(centred_td).view(s1 - s0, p).sum(dim=1, dtype=torch.float64)
            sum_nd[s0:s1] = centred_td.view(s1 - s0, p, d).sum(dim=1)
        return err_n, sq_n, sum_nd

    def _to(self, device: torch.device) -> None:
        for name in ("sum_d", "sum_sq", "sum_err", "sum_l0", "max_f", "nnz_f"):
            setattr(self, name, getattr(self, name).to(device))

    def result(self) -> M2Result:
        """FVU, MSE, mean L0 and dead features of everything added."""
        if self.n_tokens == 0:
            raise ValueError("m2: no tokens were encoded")
        n = self.n_tokens
        mean_shifted_d = self.sum_d / n
        total = float(self.sum_sq - n * torch.dot(mean_shifted_d, mean_shifted_d))
        err = float(self.sum_err)
        fvu = err / total if total > 0 else None
        # a feature with fewer stored entries than tokens was 0 somewhere: its maximum is at least 0
        max_f = torch.where(self.nnz_f < n, self.max_f.clamp_min(0.0), self.max_f)
        dead = int((max_f <= self.config.dead_threshold).sum())
        result = M2Result(
            metric="m2", value=fvu, higher_is_better=False,
            note="" if fvu is not None else "activations have zero variance over the evaluation set",
            fvu=fvu, explained_variance=None if fvu is None else 1.0 - fvu,
            mse=err / n, total_variance=total / n, mean_l0=float(self.sum_l0) / n,
            dead=dead, dead_fraction=dead / self.d_sae, d_sae=self.d_sae, n_tokens=n, n_images=self.n_images,
        )
        return typing.cast(M2Result, result.with_interval(self.interval() if fvu is not None else None))


def _squared_norms(x_td: torch.Tensor) -> torch.Tensor:
    """Row sums of squares ``[T]``; ``vector_norm`` is one fused pass (several times ``vecdot`` on CPU)."""
    return torch.linalg.vector_norm(x_td, dim=1).square_()


def compute_m2(batches: Iterable[EncodedBatch], config: M2Config | None = None) -> M2Result:
    """FVU, mean L0 and dead features in one pass over encoded image groups."""
    config = config or M2Config()
    acc: M2Accumulator | None = None
    for batch in batches:
        if acc is None:
            acc = M2Accumulator(batch.acts_npd.shape[-1], batch.d_sae, config,
                                batch.acts_npd.device)
        acc.update(batch.acts_npd, batch.recon_npd, batch.codes)
    if acc is None:
        raise ValueError("m2: no images were encoded")
    return acc.result()


@register_metric
class M2Reconstruction(Metric[M2Config]):
    """Registered as ``m2``."""

    name: ClassVar[str] = "m2"

    def __init__(self, config: M2Config, ctx: EvalContext) -> None:
        super().__init__(config, ctx)
        self.acc = M2Accumulator(ctx.sae.d_in, ctx.sae.d_sae, config, ctx.device)
        self.acc.enable_bootstrap(ctx.bootstrap)

    def update(self, batch: EncodedBatch) -> None:
        """Add one group of encoded images."""
        self.acc.update(batch.acts_npd, batch.recon_npd, batch.codes, batch.image_index_n)

    def finalize(self, pooled: PooledFeatures | None) -> MetricResult:
        """The M2 result."""
        return self.acc.result()
