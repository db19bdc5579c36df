"""ReLU SAE with an L1 penalty (Bricken et al. 2023): ``codes = ReLU(pre)``."""

from __future__ import annotations

from typing import Any

import torch

from visae.sae.base import InferenceRule
from visae.sae.family import TrainableSAE, dense_stats
from visae.sae.sparse import StepResult


class ReLUSAE(TrainableSAE):
    """Loss ``mean_r ‖x_r − x̂_r‖² + l1_coeff · mean_r Σ_f codes_rf · ‖W_dec[f]‖``."""

    family = "relu"

    def __init__(self, d_in: int, d_sae: int, k: int | None = None, l1_coeff: float = 1.0,
                 **hparams: Any) -> None:
        super().__init__(d_in, d_sae, k, l1_coeff=l1_coeff, **hparams)
        self.l1_coeff = l1_coeff

    def encode(self, x_nd: torch.Tensor) -> torch.Tensor:
        """``ReLU(pre)``."""
        return torch.relu(self.pre_acts(x_nd))

    def inference_rule(self) -> InferenceRule:
        """A threshold at 0."""
        return InferenceRule(threshold=0.0)

    def training_step(self, x_bd: torch.Tensor, compute_dtype: torch.dtype = torch.float32,
                      keep_residual: bool = False) -> StepResult:
        """Reconstruction + L1 through autograd."""
        with torch.autocast(x_bd.device.type, dtype=compute_dtype, enabled=compute_dtype != torch.float32):
            pre = self.pre_acts(x_bd)
        codes = torch.relu(pre.float())
        recon = self.decode(codes)
        l1 = (codes * self.W_dec.norm(dim=1)).sum(1).mean()
        loss = (recon - x_bd).pow(2).sum(1).mean() + self.l1_coeff * l1
        loss.backward()
        return dense_stats(x_bd, recon.detach(), codes.detach(), loss.detach())
