"""What every trainable family adds to :class:`visae.sae.base.SAE`: a training step and its bookkeeping."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from visae.sae.base import SAE
from visae.sae.sparse import StepResult


class TrainableSAE(SAE):
    """An SAE family: ``encode`` (inference, batch independent) plus :meth:`training_step`.

    :meth:`training_step` computes the family's loss on one normalized batch and leaves the gradients in
    ``.grad``; :meth:`after_step` restores the constraints (unit-norm decoder rows) after the optimizer
    step. :meth:`config_extra` lists the family-specific values written to ``config.yaml``.
    """

    def training_step(self, x_bd: torch.Tensor, compute_dtype: torch.dtype = torch.float32,
                      keep_residual: bool = False) -> StepResult:
        """Loss and gradients for one batch (gradients accumulate into ``.grad``)."""
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self) -> None:
        """Project decoder rows back to unit norm."""
        self.normalize_decoder()

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Drop the part of ``W_dec.grad`` parallel to each row (it is undone by the renormalisation)."""
        if self.W_dec.grad is not None:
            dot_f = (self.W_dec.grad * self.W_dec).sum(1, keepdim=True)
            self.W_dec.grad.sub_(dot_f * self.W_dec)

    def optimizer_groups(self, lr: float) -> list[dict[str, Any]]:
        """Adam's parameter groups at base rate ``lr``: one group of every parameter (a family whose
        parameters need their own rates, e.g. Archetypal's ``W``, overrides this)."""
        return [{"params": list(self.parameters())}]

    def decoder_atoms(self) -> torch.Tensor:
        """The decoder rows as a differentiable function of the parameters (for decoder penalties)."""
        return self.W_dec

    def config_extra(self) -> dict[str, Any]:
        """Family-specific entries of ``config.yaml`` (thresholds …)."""
        return {}

    def calibrate(self, batches_bd: list[torch.Tensor]) -> dict[str, float] | None:
        """Post-training calibration on held-out normalized tokens (BatchTopK's inference threshold);
        returns what it measured for the provenance, or None for a family that needs none."""
        return None

    target_l0: ClassVar[bool] = False
    """True when ``k`` is a target the training steers L0 towards (JumpReLU, Gated) rather than the sparsity
    rule itself: such configurations can miss it, and the cross-family analysis filters them (App. Q)."""

    foreign_keys: ClassVar[dict[str, str]] = {}
    """Other libraries' names of this family's tensors → ours (e.g. SAELens's ``b_gate`` → ``b_enc``)."""

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], k: int | None = None,
                     **hparams: Any) -> TrainableSAE:
        """An SAE of this family holding ``tensors`` (a plain state dict, our names or the ones in
        :attr:`foreign_keys`); ``d_in``/``d_sae`` come from ``W_enc``. Missing buffers keep their defaults
        (normalization: identity); a missing parameter or a shape mismatch is a ConfigError."""
        from visae.errors import ConfigError

        state = {cls.foreign_keys.get(name, name): t for name, t in tensors.items()}
        if "W_enc" not in state or state["W_enc"].ndim != 2:
            raise ConfigError(f"{cls.family}: from_tensors needs a 2-D 'W_enc' [d_in, d_sae]; got keys "
                              f"{sorted(tensors)}")
        d_in, d_sae = (int(n) for n in state["W_enc"].shape)
        sae = cls(d_in, d_sae, k, **hparams)
        if state["W_enc"].is_floating_point():
            sae.to(state["W_enc"].dtype)
        own = sae.state_dict()
        params = {name for name, _ in sae.named_parameters()}
        missing = sorted(params - set(state))
        unknown = sorted(set(state) - set(own))
        if missing or unknown:
            raise ConfigError(f"{cls.family}: from_tensors: missing {missing or 'none'}, unknown "
                              f"{unknown or 'none'} (known: {sorted(own)})")
        for name, t in state.items():
            if tuple(t.shape) != tuple(own[name].shape):
                raise ConfigError(f"{cls.family}: tensor {name!r} has shape {tuple(t.shape)}, expected "
                                  f"{tuple(own[name].shape)} for d_in={d_in} d_sae={d_sae}")
        sae.load_state_dict({**own, **{n: t.to(own[n].dtype) for n, t in state.items()}})
        return sae

    def inference_l0(self, x_bd: torch.Tensor) -> float:
        """Mean number of active features per token under :meth:`encode`."""
        with torch.no_grad():
            return float((self.encode(x_bd) > 0).sum(1).float().mean())


def dense_stats(x_bd: torch.Tensor, recon_bd: torch.Tensor, codes_bf: torch.Tensor, loss: torch.Tensor,
                cut: float = 0.0) -> StepResult:
    """A :class:`StepResult` from dense tensors (families trained through autograd)."""
    with torch.no_grad():
        sse = float((recon_bd - x_bd).pow(2).sum())
        total_var = float((x_bd - x_bd.mean(0)).pow(2).sum())
        active = codes_bf > 0
        return StepResult(loss=float(loss), mse=sse / x_bd.numel(), fvu=sse / max(total_var, 1e-12),
                          l0=float(torch.count_nonzero(active)) / x_bd.shape[0], fired_f=active.any(0),
                          cut=cut, residual_bd=(x_bd - recon_bd).float())


COEFF_RANGE = (1e-6, 1e6)
"""Bounds of a steered sparsity coefficient. Unbounded, a target L0 the thresholds cannot reach yet grows λ
geometrically (×1.07 a step at rate 0.05 and L0 = 4 × target): past ~1e16 Adam's second moment of the
JumpReLU threshold gradient (λ/ε per token) overflows float32 and the thresholds stop moving, and past 3e38
λ itself is inf and the thresholds turn NaN. The equilibrium λ of inputs normalized to ‖x‖² ≈ d lies
decades inside these bounds."""


@torch.no_grad()
def steer_toward_l0(coeff: torch.Tensor, l0: float, target: int | None, rate: float) -> None:
    """Multiply a sparsity coefficient by ``(l0 / target) ** rate`` (clamped to [0.5, 2]; an L0 of 0 halves
    it) so a penalty-based family's L0 approaches ``target``: JumpReLU's and Gated's controllers. The
    coefficient stays within :data:`COEFF_RANGE`. Nothing when no target is set."""
    if target and rate > 0:
        factor = math.exp(rate * math.log(l0 / target)) if l0 > 0 else 0.0
        coeff.mul_(min(max(factor, 0.5), 2.0)).clamp_(*COEFF_RANGE)
