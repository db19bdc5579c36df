"""The two engines that minimise a probe's objective ``C · Σ_i logloss_i + ½‖W‖²``: scikit-learn's lbfgs and
torch (full-batch L-BFGS for multinomial probes, :func:`~visae.metrics.probes.newton.newton_binary` for
binary ones)."""

from __future__ import annotations

import numpy as np
import torch

from visae.metrics.probes.config import ProbeConfig
from visae.metrics.probes.newton import newton_binary


def fit_sklearn(xs: np.ndarray, y_idx: np.ndarray, config: ProbeConfig,
                warm: tuple[np.ndarray, np.ndarray] | None = None
                ) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """Fit with :class:`sklearn.linear_model.LogisticRegression` (lbfgs) on class indices ``y_idx``, from
    ``warm = (coef, intercept)`` if given; returns ``(coef, intercept, iterations, converged)`` in float64."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=config.C, solver="lbfgs", max_iter=config.max_iter, tol=config.tol,
                             class_weight=None,
                             warm_start=warm is not None)
    if warm is not None:  # sklearn's warm start reads these attributes
        clf.coef_, clf.intercept_ = warm
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(xs, y_idx)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return (clf.coef_.astype(np.float64), clf.intercept_.astype(np.float64),
            int(np.max(clf.n_iter_)), converged)


def fit_torch(xs: np.ndarray, y_idx: np.ndarray, n_classes: int, config: ProbeConfig,
              warm: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """Fit on ``config.device``: damped Newton for two classes (from zero), L-BFGS for more (from ``warm``
    if given); returns ``(coef, intercept, iterations, converged)`` in float64 as :func:`fit_sklearn`."""
    from visae.device import pick_device

    device = pick_device(config.device)
    x = torch.as_tensor(xs, device=device)
    y = torch.as_tensor(y_idx, device=device)
    if n_classes == 2:
        w, b, it, ok = newton_binary(x[None], y[None].float(), config.C, config.max_iter, config.tol)
        return w[0:1].double().cpu().numpy(), b[0:1].double().cpu().numpy(), it, ok
    return _lbfgs_multinomial(x, y, n_classes, config, warm)


def _lbfgs_multinomial(x: torch.Tensor, y: torch.Tensor, n_classes: int, config: ProbeConfig,
                       warm: tuple[np.ndarray,
                                   np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """Minimise (C·Σ CE + ½‖W‖²)/n — the sklearn objective divided by n, which leaves the minimiser
    unchanged."""
    n, d = x.shape
    w = torch.zeros(n_classes, d, device=x.device, dtype=torch.float32)
    b = torch.zeros(n_classes, device=x.device, dtype=torch.float32)
    if warm is not None:
        w.copy_(torch.as_tensor(warm[0], dtype=torch.float32))
        b.copy_(torch.as_tensor(warm[1], dtype=torch.float32))
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=config.max_iter, history_size=10,
                            tolerance_grad=config.tol, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")
    reg = 0.5 / (config.C * n)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w.T + b, y, reduction="mean") + reg * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    n_iter = int(opt.state[opt._params[0]].get("n_iter", 0))
    return (w.detach().double().cpu().numpy(), b.detach().double().cpu().numpy(), n_iter,
            n_iter < config.max_iter)
