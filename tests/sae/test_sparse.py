"""The sparse TopK/BatchTopK step equals autograd through the dense reference (float64)."""

from __future__ import annotations

import pytest
import torch

from visae.sae.sparse import select_batch_topk, select_topk, topk_step


def _params(d: int, f: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(*s, generator=g, dtype=torch.float64) * 0.3)
            for s in [(d, f), (f,), (f, d), (d,)]]


@pytest.mark.parametrize("batch", [True, False])
def test_topk_step_matches_autograd(batch: bool) -> None:
    B, D, F, K = 64, 12, 80, 4
    x = torch.randn(B, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    P = _params(D, F)
    res = topk_step(x, *P, K, batch=batch)
    fast = [p.grad.clone() for p in P]
    for p in P:
        p.grad = None
    pre = (x - P[3]) @ P[0] + P[1]
    if batch:
        flat = torch.relu(pre).flatten()
        mask = torch.zeros_like(flat, dtype=torch.bool)
        mask[torch.topk(flat, B * K).indices] = True
        mask = mask.view(B, F)
    else:
        mask = torch.zeros_like(pre, dtype=torch.bool).scatter(1, torch.topk(pre, K, dim=1).indices, True)
        mask &= pre > 0
    assert torch.equal(res.codes.to_dense() != 0, mask)
    loss = ((pre * mask) @ P[2] + P[3] - x).pow(2).sum(1).mean()
    loss.backward()
    assert res.loss == pytest.approx(float(loss.detach()), rel=1e-12)
    for a, p in zip(fast, P, strict=True):
        torch.testing.assert_close(a, p.grad, rtol=1e-10, atol=1e-12)


def test_batch_topk_selection_exact_on_large_batch() -> None:
    pre = torch.randn(512, 700, generator=torch.Generator().manual_seed(2))
    codes = select_batch_topk(pre, 7)
    assert codes.nnz == 512 * 7
    assert float(codes.vals_n.min()) == pytest.approx(float(torch.topk(pre.flatten(), 512 * 7).values.min()))


def test_topk_drops_non_positive() -> None:
    pre = -torch.ones(3, 5)
    pre[0, 2] = 1.0
    codes = select_topk(pre, 2)
    assert codes.nnz == 1 and int(codes.rows_n[0]) == 0 and int(codes.cols_n[0]) == 2
