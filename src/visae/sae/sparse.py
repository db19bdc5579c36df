"""Sparse kernels for TopK-style SAE training: selection, sparse decode and hand-written gradients.

A TopK or BatchTopK SAE keeps ``B·K`` of the ``B·F`` encoder pre-activations of a batch. Only the encoder
matmul is dense; everything after it touches the selected entries alone:

* decode ``x̂ = b_dec + Σ_sel v·W_dec[c]`` — an ``embedding_bag`` over the ``K`` rows of each token;
* ``∂L/∂v = g_r · W_dec[c]`` at the selected entries only — a sampled dense-dense product (SDDMM);
* ``∂L/∂W_dec[c] = Σ v·g_r`` and ``∂L/∂W_enc[:, c] = Σ (∂L/∂v)·(x_r − b_dec)`` — scatters through the
  selected columns, computed as ``embedding_bag`` over the entries sorted by feature.

No ``[B, F]`` gradient is ever formed. :func:`topk_step` fills ``.grad`` of the four parameters; its
result equals autograd through the dense reference (tested in float64).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Fraction of extra candidates kept above the sampled threshold before the exact cut.
_CANDIDATE_MARGIN = 1.15
_SAMPLE_SIZE = 1 << 18


@dataclass
class SparseCodes:
    """Selected entries of a ``[B, F]`` code matrix in row-major (token-sorted) COO form."""

    rows_n: torch.Tensor
    """int64 token index of each entry, non-decreasing."""
    cols_n: torch.Tensor
    """int64 feature index of each entry."""
    vals_n: torch.Tensor
    """float32 code value (the pre-activation, > 0)."""
    offsets_b: torch.Tensor
    """int64 start of each token's entries (``[B]``)."""
    n_rows: int
    n_cols: int
    cut: float
    """The smallest kept value (the batch threshold for BatchTopK; 0 for per-token TopK)."""

    @property
    def nnz(self) -> int:
        return int(self.rows_n.numel())

    def to_dense(self) -> torch.Tensor:
        """The ``[B, F]`` code matrix (for small problems and tests)."""
        out = torch.zeros(self.n_rows, self.n_cols, dtype=self.vals_n.dtype, device=self.vals_n.device)
        out[self.rows_n, self.cols_n] = self.vals_n
        return out


def _wide(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def row_offsets(rows_n: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Start of each row's entries in a row-sorted COO list (``[n_rows]`` int64)."""
    counts = torch.bincount(rows_n, minlength=n_rows)
    offsets = torch.zeros(n_rows, dtype=torch.int64, device=rows_n.device)
    if n_rows > 1:
        offsets[1:] = counts.cumsum(0)[:-1]
    return offsets


def _coprime_stride(numel: int, n_sample: int, n_cols: int) -> int:
    stride = max(1, numel // n_sample)
    while math.gcd(stride, n_cols) != 1:
        stride += 1
    return stride


def _sampled_cut(flat: torch.Tensor, n_keep: int, n_cols: int, margin: float = _CANDIDATE_MARGIN) -> float:
    """A value slightly below the ``n_keep``-th largest of ``flat``, from a strided subsample."""
    numel = flat.numel()
    stride = _coprime_stride(numel, _SAMPLE_SIZE, n_cols)
    sample = flat[::stride]
    frac = n_keep / numel
    sd = math.sqrt(frac * (1 - frac) / sample.numel())
    want = min(1.0, frac * margin + 6 * sd)
    n_above = min(sample.numel(), max(1, math.ceil(want * sample.numel())))
    if n_above >= sample.numel():
        return -math.inf
    return float(torch.kthvalue(sample.float(), sample.numel() - n_above).values)


def select_batch_topk(pre_bf: torch.Tensor, k: int) -> SparseCodes:
    """Keep the ``B·k`` largest positive entries of the whole batch (BatchTopK, Bussmann et al. 2024)."""
    return _finish_batch(*_candidates(pre_bf, 0, _sampled_cut(pre_bf.reshape(-1), pre_bf.shape[0] * k,
                                                              pre_bf.shape[1])),
                         n_rows=pre_bf.shape[0], n_cols=pre_bf.shape[1], k=k,
                         redo=lambda: _candidates(pre_bf, 0, 0.0))


def _candidates(pre_bf: torch.Tensor, row0: int, cut: float) -> tuple[torch.Tensor, torch.Tensor,
                                                                      torch.Tensor]:
    nz = (pre_bf > max(cut, 0.0)).nonzero()
    rows, cols = nz[:, 0], nz[:, 1]
    return rows + row0, cols, pre_bf[rows, cols]  # a gather: a boolean mask would search it again


def _finish_batch(rows_n: torch.Tensor, cols_n: torch.Tensor, vals_n: torch.Tensor, *, n_rows: int,
                  n_cols: int, k: int,
                  redo: Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> SparseCodes:
    """Cut the candidate entries (all above some value) down to exactly the batch's top ``B·k``."""
    n_keep = min(n_rows * k, n_rows * n_cols)
    if vals_n.numel() < n_keep:  # the sampled cut overshot: take every positive entry instead
        rows_n, cols_n, vals_n = redo()
    vals_n = _wide(vals_n)
    cut = 0.0
    if vals_n.numel() > n_keep:
        kth = torch.kthvalue(vals_n, vals_n.numel() - n_keep + 1).values
        keep = vals_n >= kth
        rows_n, cols_n, vals_n = rows_n[keep], cols_n[keep], vals_n[keep]
        cut = float(kth)
    elif vals_n.numel():
        cut = float(vals_n.min())
    return SparseCodes(rows_n.contiguous(), cols_n.contiguous(), vals_n.contiguous(),
                       row_offsets(rows_n, n_rows), n_rows, n_cols, cut)


def select_topk(pre_bf: torch.Tensor, k: int) -> SparseCodes:
    """Keep each token's ``k`` largest positive entries (TopK, Gao et al. 2024)."""
    n_rows, n_cols = pre_bf.shape
    vals_bk, idx_bk = torch.topk(pre_bf, min(k, n_cols), dim=1, sorted=False)
    keep = vals_bk > 0
    rows_n = torch.arange(n_rows, device=pre_bf.device).unsqueeze(1).expand_as(idx_bk)[keep]
    cols_n, vals_n = idx_bk[keep], vals_bk[keep]
    return SparseCodes(rows_n.contiguous(), cols_n.contiguous(), _wide(vals_n).contiguous(),
                       row_offsets(rows_n, n_rows), n_rows, n_cols, 0.0)


def sparse_decode(codes: SparseCodes, W_dec: torch.Tensor, b_dec: torch.Tensor) -> torch.Tensor:
    """``b_dec + codes @ W_dec`` through the selected rows of ``W_dec`` only."""
    out = F.embedding_bag(codes.cols_n, W_dec, codes.offsets_b, mode="sum",
                          per_sample_weights=codes.vals_n.to(W_dec.dtype))
    return out + b_dec


def sampled_dense_product(codes: SparseCodes, g_bd: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """``(g_bd @ W_decᵀ)[rows, cols]`` without forming the dense product."""
    try:
        crow = torch.cat([codes.offsets_b, codes.offsets_b.new_tensor([codes.nnz])])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pattern = torch.sparse_csr_tensor(crow, codes.cols_n, torch.ones_like(codes.vals_n),
                                              (codes.n_rows, codes.n_cols))
            out = torch.sparse.sampled_addmm(pattern, g_bd, W_dec.T, beta=0.0)
        return out.values()
    except (RuntimeError, NotImplementedError):
        out = torch.empty_like(codes.vals_n)
        chunk = 8192
        for i in range(0, codes.nnz, chunk):
            r, c = codes.rows_n[i:i + chunk], codes.cols_n[i:i + chunk]
            out[i:i + chunk] = (g_bd[r] * W_dec[c]).sum(1)
        return out


def scatter_by_feature(order_n: torch.Tensor, rows_sorted_n: torch.Tensor, offsets_f: torch.Tensor,
                        table_bd: torch.Tensor, weights_n: torch.Tensor) -> torch.Tensor:
    """``out[c] = Σ_{entries n of feature c} weights[n] · table[row[n]]`` → ``[F, D]``."""
    return F.embedding_bag(rows_sorted_n, table_bd, offsets_f, mode="sum",
                           per_sample_weights=weights_n[order_n])


@dataclass
class StepResult:
    """What one training step reports (all floats are batch means)."""

    loss: float
    mse: float
    fvu: float
    l0: float
    fired_f: torch.Tensor
    """bool ``[F]``: features active at least once in the batch."""
    cut: float
    codes: SparseCodes | None = None
    residual_bd: torch.Tensor | None = None
    """``x − x̂`` (only when asked for, e.g. for the AuxK loss)."""


def encoder_pre(x_bd: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, b_dec: torch.Tensor,
                compute_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x − b_dec) W_enc + b_enc`` (in ``compute_dtype``) and the centred input ``x − b_dec``."""
    xc_bd = x_bd - b_dec
    if compute_dtype == torch.float32:
        return torch.addmm(b_enc, xc_bd, W_enc), xc_bd
    pre = torch.addmm(b_enc.to(compute_dtype), xc_bd.to(compute_dtype), W_enc.to(compute_dtype))
    return pre, xc_bd


def encode_select(x_bd: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, b_dec: torch.Tensor,
                  k: int, batch: bool, compute_dtype: torch.dtype = torch.float32,
                  chunk_rows: int = 1024) -> tuple[SparseCodes, torch.Tensor]:
    """Encoder matmul fused with the TopK/BatchTopK selection, in row chunks; never holds ``[B, F]``.

    BatchTopK keeps the entries above a cut sampled from the first chunk (with margin), then cuts the
    candidates exactly to the batch's top ``B·k``. Returns the codes and the centred input ``x − b_dec``.
    """
    n_rows, n_cols = x_bd.shape[0], W_enc.shape[1]
    xc_bd = x_bd - b_dec
    if compute_dtype not in (torch.float16, torch.bfloat16):
        compute_dtype = W_enc.dtype
    W = W_enc if compute_dtype == W_enc.dtype else W_enc.to(compute_dtype)
    b = b_enc if compute_dtype == b_enc.dtype else b_enc.to(compute_dtype)
    xs = xc_bd if compute_dtype == xc_bd.dtype else xc_bd.to(compute_dtype)
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    cut: float | None = None
    # one buffer for every chunk (a fresh [chunk, F] block each time is page-faulted in again), except
    # under autograd (the dense references of the tests differentiate through the codes)
    differentiable = torch.is_grad_enabled() and any(t.requires_grad for t in (xs, W, b))
    buf_cf = None if differentiable else torch.empty(min(chunk_rows, n_rows), n_cols, dtype=compute_dtype,
                                                     device=x_bd.device)
    for row0 in range(0, n_rows, chunk_rows):
        rows_c = xs[row0:row0 + chunk_rows]
        pre_cf = (torch.addmm(b, rows_c, W) if buf_cf is None
                  else torch.addmm(b, rows_c, W, out=buf_cf[:rows_c.shape[0]]))
        if batch:
            if cut is None:
                cut = _sampled_cut(pre_cf.reshape(-1), pre_cf.shape[0] * k, n_cols, margin=1.3)
            parts.append(_candidates(pre_cf, row0, cut))
        else:
            c = select_topk(pre_cf, k)
            parts.append((c.rows_n + row0, c.cols_n, c.vals_n))
    rows_n, cols_n, vals_n = (torch.cat([p[i] for p in parts]) for i in range(3))
    if not batch:
        return SparseCodes(rows_n, cols_n, _wide(vals_n), row_offsets(rows_n, n_rows), n_rows,
                           n_cols, 0.0), xc_bd

    def redo() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        again = [_candidates(torch.addmm(b, xs[r:r + chunk_rows], W), r, 0.0)
                 for r in range(0, n_rows, chunk_rows)]
        return tuple(torch.cat([p[i] for p in again]) for i in range(3))  # type: ignore[return-value]

    return _finish_batch(rows_n, cols_n, vals_n, n_rows=n_rows, n_cols=n_cols, k=k, redo=redo), xc_bd


@torch.no_grad()
def topk_step(x_bd: torch.Tensor, W_enc: torch.nn.Parameter, b_enc: torch.nn.Parameter,
              W_dec: torch.nn.Parameter, b_dec: torch.nn.Parameter, k: int, batch: bool,
              compute_dtype: torch.dtype = torch.float32, keep_residual: bool = False) -> StepResult:
    """One TopK/BatchTopK step: loss ``mean_r ‖x_r − x̂_r‖²``; gradients written into ``.grad``.

    ``batch`` selects BatchTopK (top ``B·k`` of the batch) rather than per-token TopK. The encoder matmul
    runs in ``compute_dtype`` (bf16 for mixed precision); selection, decode and gradients run in float32.
    """
    n_rows = x_bd.shape[0]
    codes, xc_bd = encode_select(x_bd, W_enc, b_enc, b_dec, k, batch, compute_dtype)
    recon_bd = sparse_decode(codes, W_dec, b_dec)
    diff_bd = recon_bd - x_bd
    sse = float(diff_bd.pow(2).sum())
    g_bd = diff_bd.mul_(2.0 / n_rows)
    gval_n = sampled_dense_product(codes, g_bd, W_dec)
    order_n = torch.argsort(codes.cols_n, stable=True)
    rows_sorted_n = codes.rows_n[order_n]
    offsets_f = row_offsets(codes.cols_n[order_n], codes.n_cols)
    grad_W_dec = scatter_by_feature(order_n, rows_sorted_n, offsets_f, g_bd, codes.vals_n)
    accumulate(W_dec, grad_W_dec)
    accumulate_encoder_grads(codes, order_n, rows_sorted_n, offsets_f, xc_bd, gval_n, g_bd.sum(0),
                             W_enc, b_enc, b_dec)
    total_var = float((x_bd - x_bd.mean(0)).pow(2).sum())
    return StepResult(loss=sse / n_rows, mse=sse / x_bd.numel(), fvu=sse / max(total_var, 1e-12),
                      l0=codes.nnz / n_rows, fired_f=fired_features(codes), cut=codes.cut, codes=codes,
                      residual_bd=g_bd.mul(-n_rows / 2.0) if keep_residual else None)


def accumulate_encoder_grads(codes: SparseCodes, order_n: torch.Tensor, rows_sorted_n: torch.Tensor,
                             offsets_f: torch.Tensor, xc_bd: torch.Tensor, gval_n: torch.Tensor,
                             g_sum_d: torch.Tensor, W_enc: torch.nn.Parameter, b_enc: torch.nn.Parameter,
                             b_dec: torch.nn.Parameter, b_enc_grad_n: torch.Tensor | None = None) -> None:
    """Gradients of ``W_enc``, ``b_enc`` and ``b_dec`` from the pre-activations' gradients ``gval_n``
    (entries sorted by feature through ``order_n``/``offsets_f``) and ``g_sum_d``, the summed gradient
    reaching the reconstruction directly; added into ``.grad`` (``b_dec`` also enters through ``x − b_dec``).
    ``b_enc_grad_n`` replaces ``gval_n`` for ``b_enc`` when that bias enters only part of the path (Gated's
    gate bias: the gate path, not the magnitude path sharing the matmul)."""
    grad_W_enc_t = scatter_by_feature(order_n, rows_sorted_n, offsets_f, xc_bd, gval_n)
    grad_pre_f = torch.bincount(codes.cols_n, weights=gval_n, minlength=codes.n_cols).to(b_enc.dtype)
    accumulate(W_enc, grad_W_enc_t.T)
    accumulate(b_enc, grad_pre_f if b_enc_grad_n is None else
               torch.bincount(codes.cols_n, weights=b_enc_grad_n, minlength=codes.n_cols).to(b_enc.dtype))
    accumulate(b_dec, g_sum_d - W_enc @ grad_pre_f)


def fired_features(codes: SparseCodes) -> torch.Tensor:
    """``[F]`` bool: which features hold at least one entry of ``codes``."""
    fired_f = torch.zeros(codes.n_cols, dtype=torch.bool, device=codes.cols_n.device)
    fired_f[codes.cols_n] = True
    return fired_f


def accumulate(param: torch.nn.Parameter, grad: torch.Tensor) -> None:
    grad = grad.to(param.dtype)
    if param.grad is None:
        param.grad = grad.contiguous()
    else:
        param.grad.add_(grad)
