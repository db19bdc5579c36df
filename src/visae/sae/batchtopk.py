"""BatchTopK SAE (Bussmann et al. 2024; the paper's family, §3): the top B·K activations of a batch.

Training keeps the ``B·K`` largest positive pre-activations of the whole batch. Inference must not depend
on the rest of the batch (paper App. E), so :meth:`encode` in eval mode is a JumpReLU at a fixed scalar
``threshold`` — a registered buffer, so it lives in ``state_dict`` and in every checkpoint. During training
the buffer follows an EMA of the batch cut; after training :func:`calibrate_threshold` sets it from
held-out activations so that the inference L0 equals K there.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from visae.sae.base import InferenceRule, SAEOutput
from visae.sae.family import TrainableSAE
from visae.sae.sparse import StepResult, encode_select, select_topk, topk_step


class BatchTopKSAE(TrainableSAE):
    """BatchTopK in training; ``pre · 1[pre > threshold]`` at inference."""

    family = "batchtopk"
    needs_k = True
    threshold: torch.Tensor

    def __init__(self, d_in: int, d_sae: int, k: int | None = None, threshold_momentum: float = 0.99,
                 **hparams: Any) -> None:
        super().__init__(d_in, d_sae, k, threshold_momentum=threshold_momentum, **hparams)
        self.threshold_momentum = threshold_momentum
        self.register_buffer("threshold", torch.tensor(math.nan))

    @property
    def calibrated(self) -> bool:
        """Whether an inference threshold is set (by training or calibration)."""
        return bool(torch.isfinite(self.threshold))

    def encode(self, x_nd: torch.Tensor) -> torch.Tensor:
        """JumpReLU at the stored threshold; per-token TopK only while no threshold exists yet."""
        pre = self.pre_acts(x_nd)
        if not self.calibrated:
            return select_topk(pre, self.k_per_token).to_dense().to(x_nd.dtype)
        return pre * (pre > self.threshold.to(pre.dtype).clamp_min(0.0))

    def inference_rule(self) -> InferenceRule:
        """The stored threshold (per-token top-K before one exists)."""
        if not self.calibrated:
            return InferenceRule(k=self.k_per_token)
        return InferenceRule(threshold=float(self.threshold.to(self.W_enc.dtype).clamp_min(0.0)))

    def calibrate(self, batches_bd: list[torch.Tensor]) -> dict[str, float]:
        """Set the inference threshold from held-out tokens (:func:`calibrate_threshold`)."""
        return calibrate_threshold(self, batches_bd)

    def training_step(self, x_bd: torch.Tensor, compute_dtype: torch.dtype = torch.float32,
                      keep_residual: bool = False) -> StepResult:
        """Sparse BatchTopK step; the threshold buffer tracks an EMA of the batch cut."""
        res = topk_step(x_bd, self.W_enc, self.b_enc, self.W_dec, self.b_dec, self.k_per_token, batch=True,
                        compute_dtype=compute_dtype, keep_residual=keep_residual)
        self.track_cut(res.cut)
        return res

    @torch.no_grad()
    def track_cut(self, cut: float) -> None:
        """Move the threshold buffer towards a training batch's cut (EMA; the first cut sets it)."""
        if self.calibrated:
            m = self.threshold_momentum
            self.threshold.mul_(m).add_((1 - m) * cut)
        else:
            self.threshold.fill_(cut)

    def train_forward_codes(self, x_bd: torch.Tensor) -> torch.Tensor:
        """Dense training-mode codes (batch-coupled), for tests and small problems."""
        codes, _ = encode_select(x_bd, self.W_enc, self.b_enc, self.b_dec, self.k_per_token, batch=True)
        return codes.to_dense()

    def forward(self, x_nd: torch.Tensor) -> SAEOutput:
        """Training mode: batch-coupled BatchTopK codes (as in training); eval mode: :meth:`encode`."""
        codes = self.train_forward_codes(x_nd) if self.training else self.encode(x_nd)
        return SAEOutput(self.decode(codes), codes)

    def config_extra(self) -> dict[str, Any]:
        return {"threshold": float(self.threshold) if self.calibrated else None}


@torch.no_grad()
def calibrate_threshold(sae: BatchTopKSAE, batches_bd: Iterable[torch.Tensor]) -> dict[str, float]:
    """Set ``sae.threshold`` so that the mean inference L0 on ``batches_bd`` equals K (paper App. E).

    Over ``N`` held-out tokens the threshold lies midway between the ``N·K``-th and ``(N·K+1)``-th largest
    positive pre-activation, so exactly ``N·K`` entries exceed it. The top values are kept in a bounded
    running buffer, so memory is ``O(N·K)`` whatever ``F``. Returns the threshold, the number of tokens
    and the inference L0 measured on the same tokens.
    """
    k = sae.k_per_token
    device = sae.W_enc.device
    batches = list(batches_bd)
    n_tokens = sum(int(x.shape[0]) for x in batches)
    keep = n_tokens * k + 1
    buf = torch.empty(0, device=device)
    floor = 0.0
    for x_bd in batches:
        pre = sae.pre_acts(x_bd.to(device=device, dtype=sae.W_enc.dtype))
        buf = torch.cat([buf, pre[pre > floor].float()])
        if buf.numel() > keep:
            kth = torch.kthvalue(buf, buf.numel() - keep + 1).values
            buf = buf[buf >= kth]
            floor = float(kth)
    if n_tokens == 0:
        raise ValueError("calibrate_threshold needs at least one held-out batch")
    keep = n_tokens * k
    top = torch.topk(buf, min(keep + 1, buf.numel())).values
    # With fewer positive pre-activations than N·K, every positive one is kept (threshold 0).
    threshold = 0.5 * float(top[keep - 1] + top[keep]) if top.numel() > keep else 0.0
    sae.threshold.fill_(threshold)
    return {"threshold": threshold, "n_tokens": float(n_tokens),
            "inference_l0": float(min(keep, top.numel())) / n_tokens}
