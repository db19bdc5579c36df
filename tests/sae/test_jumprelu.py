"""JumpReLU: the straight-through pseudo-gradients against their closed forms (App. Q)."""

from __future__ import annotations

import pytest
import torch

from visae.sae.family import COEFF_RANGE, steer_toward_l0
from visae.sae.jumprelu import JumpReLUFn, StepFn, kernel, kernel_cdf
from visae.sae.registry import make_sae
from visae.sae.train import TrainConfig, train_on_batches


@pytest.mark.parametrize("kern", ["rectangle", "silverman"])
def test_kernel_cdf_derivative_is_kernel(kern: str) -> None:
    u = torch.linspace(-3, 3, 41, dtype=torch.float64)
    u = u[(u.abs() - 0.5).abs() > 1e-3].clone().requires_grad_()  # avoid the rectangle's kinks
    assert torch.autograd.gradcheck(lambda v: kernel_cdf(v, kern), (u,))
    (d,) = torch.autograd.grad(kernel_cdf(u, kern).sum(), u)
    torch.testing.assert_close(d, kernel(u.detach(), kern))


@pytest.mark.parametrize("kern", ["rectangle", "silverman"])
def test_ste_threshold_gradient_closed_form(kern: str) -> None:
    eps = 1e-3
    g = torch.Generator().manual_seed(0)
    theta = (torch.rand(6, dtype=torch.float64, generator=g) * 0.1 + 0.05).requires_grad_()
    pre = (theta.detach() + (torch.rand(20, 6, dtype=torch.float64, generator=g) - 0.5) * 4 * eps)
    pre.requires_grad_()
    w = torch.randn(20, 6, dtype=torch.float64, generator=g)
    # Step: the pseudo-gradient is exactly the derivative of the smoothed step CDF((pre − θ)/ε).
    (g_step,) = torch.autograd.grad((StepFn.apply(pre, theta, eps, kern) * w).sum(), theta)
    th = theta.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: (kernel_cdf((pre.detach() - t) / eps, kern) * w).sum(), (th,))
    (g_ref,) = torch.autograd.grad((kernel_cdf((pre.detach() - th) / eps, kern) * w).sum(), th)
    torch.testing.assert_close(g_step, g_ref)
    # JumpReLU: −(θ/ε) K((pre − θ)/ε), i.e. θ × the step's pseudo-gradient; exact H(pre − θ) for pre.
    out = JumpReLUFn.apply(pre, theta, eps, kern)
    g_theta, g_pre = torch.autograd.grad((out * w).sum(), (theta, pre))
    torch.testing.assert_close(g_theta, theta.detach() * g_ref)
    torch.testing.assert_close(g_pre, w * (pre.detach() > theta.detach()))


def test_jumprelu_gradcheck_wrt_pre_away_from_threshold() -> None:
    theta = torch.full((5,), 0.5, dtype=torch.float64)
    pre = torch.tensor([[0.1, 0.9, 1.5, -0.3, 0.7]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: JumpReLUFn.apply(p, theta, 1e-3, "silverman"), (pre,))


def test_controller_steers_l0_down() -> None:
    torch.manual_seed(0)
    sae = make_sae("jumprelu", 16, expansion=4, k=4, sparsity_coeff=1e-3, controller_rate=0.5)
    x = torch.randn(256, 16)
    lam0 = float(sae.sparsity_coeff)
    sae.training_step(x)
    assert float(sae.sparsity_coeff) > lam0  # L0 far above the target 4 → λ grows


def test_controller_keeps_the_coefficient_bounded() -> None:
    lam = torch.tensor(1e-3)
    for _ in range(2000):  # L0 4 × the target for ever: unbounded, λ overflows float32 (×2 a step)
        steer_toward_l0(lam, 4.0, 1, 0.5)
    assert float(lam) == pytest.approx(COEFF_RANGE[1])
    steer_toward_l0(lam, 0.0, 1, 0.05)  # a silent SAE: the penalty halves (it used to stay put)
    assert float(lam) == pytest.approx(COEFF_RANGE[1] / 2)
    for _ in range(2000):
        steer_toward_l0(lam, 0.25, 1, 0.5)
    assert float(lam) == pytest.approx(COEFF_RANGE[0])


def test_thresholds_stay_finite_while_l0_is_far_above_target() -> None:
    # the thresholds climb at most ~lr a step, so L0 stays above the target 1 for the whole run while the
    # controller raises λ; unbounded, λ reached inf after ~140 steps and the thresholds turned NaN
    torch.manual_seed(0)
    sae = make_sae("jumprelu", 8, d_sae=16, k=1, controller_rate=0.5)
    x = torch.randn(300 * 64, 8) * 3
    train_on_batches([("j", sae)], (x[i:i + 64] for i in range(0, len(x), 64)),
                     TrainConfig(lr=1e-3, batch_size=64, progress=False))
    assert torch.isfinite(sae.threshold).all() and torch.isfinite(sae.sparsity_coeff)
    assert float(sae.sparsity_coeff) <= COEFF_RANGE[1]
    assert float(sae.threshold.min()) > 1e-3  # the thresholds moved up, towards the target
