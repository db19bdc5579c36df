"""A batched damped-Newton solver for binary L2-regularized logistic regression (torch, any device)."""

from __future__ import annotations

import torch


@torch.no_grad()
def newton_binary(x_bnd: torch.Tensor, y_bn: torch.Tensor, C: float = 1.0, max_iter: int = 100,
                  tol: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
    """Batched binary logistic regression by damped Newton: B independent problems ``C·Σ logloss + ½‖w‖²``.

    ``x_bnd`` float32 ``[B, N, D]``, ``y_bn`` in {0, 1}. Returns ``(w [B, D], b [B], iterations, converged)``.
    """
    bsz, n, d = x_bnd.shape
    dev = x_bnd.device
    xa = torch.cat([x_bnd, torch.ones(bsz, n, 1, device=dev, dtype=x_bnd.dtype)], dim=2)  # bias column
    theta = torch.zeros(bsz, d + 1, device=dev, dtype=torch.float64)
    reg = torch.ones(d + 1, device=dev, dtype=torch.float64)
    reg[-1] = 0.0
    y = y_bn.to(torch.float64)

    def objective(th: torch.Tensor) -> torch.Tensor:
        z = torch.einsum("bnd,bd->bn", xa, th.float()).double()
        loss = torch.nn.functional.softplus(z) - y * z
        return C * loss.sum(dim=1) + 0.5 * (reg * th * th).sum(dim=1)

    obj = objective(theta)
    active = torch.ones(bsz, dtype=torch.bool, device=dev)
    n_iter = 0
    for step_i in range(1, max_iter + 1):
        n_iter = step_i
        z = torch.einsum("bnd,bd->bn", xa, theta.float()).double()
        p = torch.sigmoid(z)
        grad = C * torch.einsum("bnd,bn->bd", xa, (p - y).float()).double() + reg * theta
        gnorm = grad.abs().amax(dim=1) / n  # gradient of the mean-scaled objective, as sklearn's tol
        active &= gnorm > tol
        if not bool(active.any()):
            break
        s = (p * (1 - p)).float()
        hess = C * ((xa * s[:, :, None]).transpose(1,
                                                   2) @ xa).double() + torch.diag_embed(reg.expand(bsz, -1))
        hess = hess + 1e-10 * torch.eye(d + 1, device=dev, dtype=torch.float64)
        step = torch.linalg.solve(hess, grad.unsqueeze(-1)).squeeze(-1)
        step = torch.where(active[:, None], step, torch.zeros_like(step))
        t = torch.ones(bsz, device=dev, dtype=torch.float64)
        accepted = torch.zeros(bsz, dtype=torch.bool, device=dev)
        new_obj = obj.clone()
        for _ in range(30):  # backtracking: halve the step where the objective did not decrease
            cand = objective(theta - t[:, None] * step)
            ok = (cand <= obj + 1e-12 * obj.abs()) & ~accepted
            new_obj = torch.where(ok, cand, new_obj)
            theta_new = theta - t[:, None] * step
            theta = torch.where(ok[:, None], theta_new, theta)
            accepted |= ok
            if bool(accepted.all()):
                break
            t = torch.where(accepted, t, t * 0.5)
        obj = new_obj
        if bool((~accepted & active).all()):
            break  # no progress possible at machine precision
    w, b = theta[:, :d], theta[:, d]
    return w.float(), b.float(), n_iter, not bool(active.any())
