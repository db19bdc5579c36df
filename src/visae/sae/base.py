"""The SAE interface shared by every family: pre-encoder bias, unit-norm decoder rows, stored
normalization."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from visae.errors import ConfigError


@dataclass
class SAEOutput:
    """What a forward pass returns."""

    recon_nd: torch.Tensor
    """Reconstruction in the SAE's (normalized) input space."""
    codes_nf: torch.Tensor
    """Non-negative sparse codes."""
    pre_nf: torch.Tensor | None = None
    """Pre-activations (encoder output before the sparsity rule), for auxiliary losses."""


@dataclass(frozen=True)
class InferenceRule:
    """How a family turns encoder pre-activations into codes at inference, when it is one of the two
    rules the fused sparse encoder knows: ``pre · 1[pre > threshold]`` or per-token top-k."""

    threshold: float | torch.Tensor | None = None
    """Scalar or per-feature ``[F]`` threshold (None: top-k)."""
    k: int = 0


class SAE(nn.Module):
    """Base class: ``x → codes = σ(W_encᵀ(x − b_dec) + b_enc) → x̂ = codes W_dec + b_dec``.

    Weights: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]`` (rows kept at unit norm),
    ``b_dec [d_in]`` (the pre-encoder bias). Buffers ``act_mean [d_in]`` and ``act_std []`` hold the
    training cache's normalization statistics (paper Table 1), so that :meth:`normalize` maps raw backbone
    activations into the space the SAE was trained in. Subclasses define the sparsity rule.
    """

    family: ClassVar[str] = "base"
    needs_k: ClassVar[bool] = False
    """True for families whose sparsity rule is "keep K per token" (TopK, BatchTopK)."""
    act_mean: torch.Tensor
    act_std: torch.Tensor

    def __init__(self, d_in: int, d_sae: int, k: int | None = None, **hparams: Any) -> None:
        super().__init__()
        if self.needs_k and (k is None or k < 1):
            raise ConfigError(f"{self.family}: k (active features per token) must be a positive integer, "
                              f"got {k!r}")
        self.d_in = d_in
        self.d_sae = d_sae
        self.k = k
        self.hparams: dict[str, Any] = dict(hparams)
        self.W_enc = nn.Parameter(torch.empty(d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("act_mean", torch.zeros(d_in))
        self.register_buffer("act_std", torch.ones(()))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Decoder rows random unit vectors; encoder initialised to the decoder's transpose."""
        w = torch.randn(self.d_sae, self.d_in, generator=generator)
        w = w / w.norm(dim=1, keepdim=True)
        with torch.no_grad():
            self.W_dec.copy_(w)
            self.W_enc.copy_(w.T)
            self.b_enc.zero_()
            self.b_dec.zero_()

    @property
    def k_per_token(self) -> int:
        """K of a keep-K family (set at construction, so never missing for one)."""
        if self.k is None:
            raise ConfigError(f"{self.family} SAE has no k (active features per token)")
        return int(self.k)

    # --- normalization -------------------------------------------------------------------------
    def set_normalization(self, mean_d: torch.Tensor, std: float) -> None:
        """Store the training cache's per-dimension mean and scalar std."""
        with torch.no_grad():
            self.act_mean.copy_(torch.as_tensor(mean_d, dtype=self.act_mean.dtype))
            self.act_std.fill_(float(std))

    def normalize(self, acts_nd: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """Raw backbone activations → the SAE's input space: (a − mean) / std (``inplace``: overwriting
        ``acts_nd``, the same arithmetic)."""
        mean, std = self.act_mean.to(acts_nd.dtype), self.act_std.to(acts_nd.dtype)
        return acts_nd.sub_(mean).div_(std) if inplace else (acts_nd - mean) / std

    # --- the model -------------------------------------------------------------------------------
    def pre_acts(self, x_nd: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations ``(x − b_dec) W_enc + b_enc``."""
        return (x_nd - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x_nd: torch.Tensor) -> torch.Tensor:
        """Inference codes for normalized inputs; independent of the rest of the batch."""
        raise NotImplementedError

    def decode(self, codes_nf: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``codes W_dec + b_dec``."""
        return codes_nf @ self.W_dec + self.b_dec

    def forward(self, x_nd: torch.Tensor) -> SAEOutput:
        """Inference forward pass: codes then reconstruction."""
        codes = self.encode(x_nd)
        return SAEOutput(self.decode(codes), codes)

    # --- family hooks ------------------------------------------------------------------------------
    def inference_rule(self) -> InferenceRule | None:
        """The family's inference rule on :meth:`pre_acts`, for the fused sparse encoder; None when
        :meth:`encode` is no threshold or top-k rule (the evaluation then encodes densely)."""
        return None

    def with_options(self, **options: Any) -> SAE:
        """A variant of this SAE for evaluation (``--set sae.<option>=…``); the base class has none."""
        if options:
            raise ConfigError(f"sae.{next(iter(options))}: the {self.family} family has no evaluation option "
                              f"{next(iter(options))!r}")
        return self

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Project decoder rows back to unit norm (called after each optimizer step)."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))
