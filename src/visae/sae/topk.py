"""TopK SAE (Gao et al. 2024): each token keeps its K largest pre-activations, in training and inference."""

from __future__ import annotations

import torch

from visae.sae.base import InferenceRule
from visae.sae.family import TrainableSAE
from visae.sae.sparse import StepResult, select_topk, topk_step


class TopKSAE(TrainableSAE):
    """``codes = TopK_K(ReLU(pre))`` per token; trained with the sparse kernels of :mod:`visae.sae.sparse`."""

    family = "topk"
    needs_k = True

    def encode(self, x_nd: torch.Tensor) -> torch.Tensor:
        """Per-token top-K of the positive pre-activations (batch independent)."""
        return select_topk(self.pre_acts(x_nd), self.k_per_token).to_dense().to(x_nd.dtype)

    def inference_rule(self) -> InferenceRule:
        """Per-token top-K."""
        return InferenceRule(k=self.k_per_token)

    def training_step(self, x_bd: torch.Tensor, compute_dtype: torch.dtype = torch.float32,
                      keep_residual: bool = False) -> StepResult:
        """Sparse TopK step (exact gradients of ``mean_r ‖x_r − x̂_r‖²``)."""
        return topk_step(x_bd, self.W_enc, self.b_enc, self.W_dec, self.b_dec, self.k_per_token, batch=False,
                         compute_dtype=compute_dtype, keep_residual=keep_residual)
