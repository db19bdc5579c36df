"""JumpReLU: the straight-through pseudo-gradients against their closed forms (App. Q)."""

from __future__ import annotations

import pytest
import torch

from visae.sae.jumprelu import JumpReLUFn, StepFn, kernel, kernel_cdf
from visae.sae.registry import make_sae


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
