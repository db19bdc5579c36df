"""JumpReLU SAE (Rajamanoharan et al. 2024; paper App. Q): per-feature learned thresholds.

``codes = pre · H(pre − θ)``. The step function has no useful gradient, so θ is trained with the
straight-through pseudo-gradient of a kernel density estimate of bandwidth ε (App. Q: Silverman kernel,
ε = 1e-3):

* ``∂ JumpReLU/∂θ ≈ −(θ/ε) K((pre − θ)/ε)`` and ``∂ H(pre − θ)/∂θ ≈ −(1/ε) K((pre − θ)/ε)``;
* ``∂ JumpReLU/∂pre = H(pre − θ)``; the step contributes no gradient to ``pre``.

The loss is ``mean_r ‖x_r − x̂_r‖² + λ · mean_r L0_r``; λ (``sparsity_coeff``, a buffer) is steered to a
target L0 by a multiplicative controller ``λ ← λ · (L0/target)^rate`` after every step. Inference uses
the learned thresholds as they are.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

from visae.sae.base import InferenceRule
from visae.sae.family import TrainableSAE, dense_stats, steer_toward_l0
from visae.sae.sparse import StepResult

Kernel = Literal["rectangle", "silverman"]
_SQRT2 = math.sqrt(2.0)


def kernel(u: torch.Tensor, name: Kernel) -> torch.Tensor:
    """A unit-mass density kernel: rectangle ``1[|u| ≤ ½]`` or Silverman ``½ e^{−|u|/√2} sin(|u|/√2 +
    π/4)``."""
    if name == "rectangle":
        return (u.abs() <= 0.5).to(u.dtype)
    if name == "silverman":
        a = u.abs() / _SQRT2
        return 0.5 * torch.exp(-a) * torch.sin(a + math.pi / 4)
    raise ValueError(f"unknown kernel {name!r}; use 'rectangle' or 'silverman'")


def kernel_cdf(u: torch.Tensor, name: Kernel) -> torch.Tensor:
    """∫_{−∞}^u K: the smoothed step whose exact derivative is the kernel (for gradient checks)."""
    if name == "rectangle":
        return (u + 0.5).clamp(0.0, 1.0)
    if name == "silverman":
        a = u.abs() / _SQRT2
        tail = 0.5 * torch.exp(-a) * torch.cos(a)
        return torch.where(u >= 0, 1.0 - tail, tail)
    raise ValueError(f"unknown kernel {name!r}; use 'rectangle' or 'silverman'")


class JumpReLUFn(torch.autograd.Function):
    """``pre · H(pre − θ)`` with the straight-through threshold gradient."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, theta: torch.Tensor, bandwidth: float,
                kern: str) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth, ctx.kern = bandwidth, kern
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> Any:
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad_out * (pre > theta)
        grad_theta = -(theta / eps) * kernel((pre - theta) / eps, ctx.kern) * grad_out
        return grad_pre, grad_theta.reshape(-1, theta.shape[-1]).sum(0), None, None


class StepFn(torch.autograd.Function):
    """``H(pre − θ)`` with the straight-through threshold gradient (no gradient to ``pre``)."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, theta: torch.Tensor, bandwidth: float,
                kern: str) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth, ctx.kern = bandwidth, kern
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> Any:
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_theta = -(1.0 / eps) * kernel((pre - theta) / eps, ctx.kern) * grad_out
        return None, grad_theta.reshape(-1, theta.shape[-1]).sum(0), None, None


class JumpReLUSAE(TrainableSAE):
    """JumpReLU codes with learned per-feature thresholds (``threshold`` parameter, ``[d_sae]``)."""

    family = "jumprelu"
    target_l0 = True
    sparsity_coeff: torch.Tensor

    def __init__(self, d_in: int, d_sae: int, k: int | None = None, bandwidth: float = 1e-3,
                 kernel: Kernel = "silverman", init_threshold: float = 1e-3, sparsity_coeff: float = 1e-3,
                 controller_rate: float = 0.05, **hparams: Any) -> None:
        super().__init__(d_in, d_sae, k, bandwidth=bandwidth, kernel=kernel, init_threshold=init_threshold,
                         controller_rate=controller_rate, **hparams)
        self.bandwidth, self.kernel = bandwidth, kernel
        self.controller_rate = controller_rate
        self.threshold = torch.nn.Parameter(torch.full((d_sae,), float(init_threshold)))
        self.register_buffer("sparsity_coeff", torch.tensor(float(sparsity_coeff)))

    def encode(self, x_nd: torch.Tensor) -> torch.Tensor:
        """JumpReLU at the learned thresholds."""
        pre = self.pre_acts(x_nd)
        return pre * (pre > self.threshold.to(pre.dtype))

    def inference_rule(self) -> InferenceRule:
        """The learned per-feature thresholds."""
        return InferenceRule(threshold=self.threshold.detach().to(self.W_enc.dtype))

    def training_step(self, x_bd: torch.Tensor, compute_dtype: torch.dtype = torch.float32,
                      keep_residual: bool = False) -> StepResult:
        """Reconstruction + λ·L0 through the STE pseudo-gradients; then one controller update of λ."""
        with torch.autocast(x_bd.device.type, dtype=compute_dtype, enabled=compute_dtype != torch.float32):
            pre = self.pre_acts(x_bd)
        pre = pre.float() if pre.dtype != self.threshold.dtype else pre
        codes = JumpReLUFn.apply(pre, self.threshold, self.bandwidth, self.kernel)
        recon = self.decode(codes)
        l0 = StepFn.apply(pre, self.threshold, self.bandwidth, self.kernel).sum(1).mean()
        mse = (recon - x_bd).pow(2).sum(1).mean()
        loss = mse + self.sparsity_coeff * l0
        loss.backward()
        res = dense_stats(x_bd, recon.detach(), codes.detach(), loss.detach())
        self._control(res.l0)
        return res

    def _control(self, l0: float) -> None:
        steer_toward_l0(self.sparsity_coeff, l0, self.k, self.controller_rate)

    @torch.no_grad()
    def after_step(self) -> None:
        """Unit-norm decoder rows and non-negative thresholds."""
        super().after_step()
        self.threshold.clamp_(min=0.0)

    def config_extra(self) -> dict[str, Any]:
        return {"threshold": "per-feature (model.safetensors: threshold)",
                "sparsity_coeff": float(self.sparsity_coeff)}
