"""Matryoshka BatchTopK SAE (Bussmann et al. 2025; Nabeshima 2024): nested dictionaries in one.

The features are ordered and cut into nested prefixes ``widths = [w_1 < w_2 < … < w_G = F]``. Selection is
BatchTopK over all ``F`` features; the loss sums the reconstruction error of every prefix, each decoded
from the selected codes of its first ``w_g`` features only (SAELens's ``MatryoshkaBatchTopKTrainingSAE``;
saev nests the same way but samples its cuts per batch and averages)::

    L = Σ_g mean_r ‖x_r − (b_dec + Σ_{f < w_g} z_rf W_dec[f])‖²

so early features must reconstruct on their own and the generic ones settle there. Inference is
BatchTopK's: a JumpReLU at one calibrated scalar threshold (paper App. E), stored in the ``threshold``
buffer. ``with_options(prefix=w)`` (``visae eval --set sae.prefix=w``) gives the SAE of the first ``w``
features, whose metrics are those of that nested dictionary.

The step runs on the sparse kernels of :mod:`visae.sae.sparse`: the prefix reconstructions are cumulative
sums of per-group sparse decodes, and an entry of group ``j`` receives the gradient of every prefix that
contains it, ``Σ_{g ≥ j} ∂L_g/∂x̂_g`` (a suffix sum over groups), so no ``[B, F]`` gradient is formed.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F

from visae.errors import ConfigError
from visae.sae.batchtopk import BatchTopKSAE
from visae.sae.sparse import (
    SparseCodes,
    StepResult,
    accumulate,
    accumulate_encoder_grads,
    encode_select,
    fired_features,
    row_offsets,
    sampled_dense_product,
)


def default_widths(d_sae: int, levels: int = 5) -> list[int]:
    """Prefix widths ``F/2^(levels-1), …, F/2, F`` (the smallest at least 1; duplicates dropped)."""
    return sorted({max(1, d_sae >> i) for i in range(levels)})


def check_widths(widths: list[int] | None, d_sae: int) -> list[int]:
    """Strictly increasing positive widths ending at ``d_sae`` (which is appended when missing, as SAELens
    does); ConfigError otherwise."""
    if widths is None:
        return default_widths(d_sae)
    try:
        ws = [int(w) for w in widths]
    except (TypeError, ValueError):
        raise ConfigError(f"matryoshka: widths {widths!r} must be a list of integers, e.g. "
                          f"[{d_sae // 8}, {d_sae // 2}, {d_sae}]") from None
    if ws and ws[-1] != d_sae:
        ws.append(d_sae)
    if not ws or any(w < 1 for w in ws) or any(b <= a for a, b in itertools.pairwise(ws)):
        raise ConfigError(f"matryoshka: widths {widths!r} must be positive and strictly increasing up to "
                          f"d_sae={d_sae}, e.g. [{d_sae // 8}, {d_sae // 2}, {d_sae}]")
    if ws[-1] > d_sae:
        raise ConfigError(f"matryoshka: widths {widths!r} exceed d_sae={d_sae}")
    return ws


@torch.no_grad()
def matryoshka_step(x_bd: torch.Tensor, W_enc: torch.nn.Parameter, b_enc: torch.nn.Parameter,
                    W_dec: torch.nn.Parameter, b_dec: torch.nn.Parameter, k: int, widths: list[int],
                    compute_dtype: torch.dtype = torch.float32, keep_residual: bool = False) -> StepResult:
    """One Matryoshka-BatchTopK step: loss ``Σ_g mean_r ‖x_r − x̂^{(g)}_r‖²``, gradients into ``.grad``.

    The reported ``mse``/``fvu`` are those of the full reconstruction; ``loss`` is the sum over prefixes.
    """
    n_rows = x_bd.shape[0]
    codes, xc_bd = encode_select(x_bd, W_enc, b_enc, b_dec, k, True, compute_dtype)
    n_groups = len(widths)
    bounds = torch.tensor(widths[:-1], dtype=codes.cols_n.dtype, device=codes.cols_n.device)
    group_n = torch.bucketize(codes.cols_n, bounds, right=True)
    # entries grouped by prefix group, rows still sorted within each group (a stable sort): group g is
    # the slice [starts[g], starts[g + 1]) of the permuted lists
    by_group = torch.argsort(group_n, stable=True)
    starts = [0, *torch.bincount(group_n, minlength=n_groups).cumsum(0).tolist()]
    rows_s, cols_s, vals_s = codes.rows_n[by_group], codes.cols_n[by_group], codes.vals_n[by_group]
    groups = [SparseCodes(rows_s[a:b], cols_s[a:b], vals_s[a:b], row_offsets(rows_s[a:b], n_rows), n_rows,
                          codes.n_cols, codes.cut) for a, b in itertools.pairwise(starts)]
    recon_bd = b_dec.detach().expand_as(x_bd)
    grads: list[torch.Tensor] = []
    sse: list[torch.Tensor] = []
    for sub in groups:
        part = F.embedding_bag(sub.cols_n, W_dec, sub.offsets_b, mode="sum",
                               per_sample_weights=sub.vals_n.to(W_dec.dtype))
        recon_bd = recon_bd + part
        diff = recon_bd - x_bd
        sse.append(diff.pow(2).sum())
        grads.append(diff.mul_(2.0 / n_rows))
    sse_g = torch.stack(sse).tolist()  # one host sync for all prefixes
    sse_total, sse_full = float(sum(sse_g)), float(sse_g[-1])
    residual = None
    if keep_residual:
        residual = grads[-1].mul(-n_rows / 2.0)
    # suffix sums: an entry of group j reconstructs every prefix g ≥ j
    for g in range(len(grads) - 2, -1, -1):
        grads[g].add_(grads[g + 1])
    g_all = grads[0]  # Σ over every prefix: the gradient reaching b_dec directly
    gval_s = torch.cat([sampled_dense_product(sub, grads[g], W_dec).to(vals_s.dtype) if sub.nnz
                        else vals_s[:0] for g, sub in enumerate(groups)])
    gval_n = torch.empty_like(codes.vals_n)
    gval_n[by_group] = gval_s
    # W_dec gradient: the groups are column ranges, so sorted by feature each group's entries are one
    # slice, scattered through its own gradient table
    order_n = torch.argsort(codes.cols_n, stable=True)
    offsets_f = row_offsets(codes.cols_n[order_n], codes.n_cols)
    rows_f = codes.rows_n[order_n]
    vals_f = codes.vals_n[order_n].to(W_dec.dtype)
    lows = [0, *widths[:-1]]
    edges = [*offsets_f[torch.tensor(lows, device=offsets_f.device)].tolist(), codes.nnz]  # one sync
    grad_W_dec = torch.empty_like(W_dec)
    for g, (lo, hi) in enumerate(zip(lows, widths, strict=True)):
        first, last = edges[g], edges[g + 1]
        grad_W_dec[lo:hi] = F.embedding_bag(rows_f[first:last], grads[g], offsets_f[lo:hi] - first,
                                            mode="sum", per_sample_weights=vals_f[first:last])
    accumulate(W_dec, grad_W_dec)
    accumulate_encoder_grads(codes, order_n, rows_f, offsets_f, xc_bd, gval_n, g_all.sum(0), W_enc, b_enc,
                             b_dec)
    total_var = float((x_bd - x_bd.mean(0)).pow(2).sum())
    return StepResult(loss=sse_total / n_rows, mse=sse_full / x_bd.numel(),
                      fvu=sse_full / max(total_var, 1e-12), l0=codes.nnz / n_rows,
                      fired_f=fired_features(codes),
                      cut=codes.cut, codes=codes, residual_bd=residual)


class MatryoshkaSAE(BatchTopKSAE):
    """BatchTopK selection, nested-prefix reconstruction loss; BatchTopK's calibrated threshold at
    inference (:meth:`inference_rule` and :meth:`calibrate` are BatchTopK's)."""

    family = "matryoshka"

    def __init__(self, d_in: int, d_sae: int, k: int | None = None, widths: list[int] | None = None,
                 threshold_momentum: float = 0.99, **hparams: Any) -> None:
        ws = check_widths(widths, d_sae)
        super().__init__(d_in, d_sae, k, threshold_momentum=threshold_momentum, widths=ws, **hparams)
        self.widths = ws

    def training_step(self, x_bd: torch.Tensor, compute_dtype: torch.dtype = torch.float32,
                      keep_residual: bool = False) -> StepResult:
        """Sparse Matryoshka step (:func:`matryoshka_step`); the threshold tracks the batch cut."""
        res = matryoshka_step(x_bd, self.W_enc, self.b_enc, self.W_dec, self.b_dec, self.k_per_token,
                              self.widths, compute_dtype=compute_dtype, keep_residual=keep_residual)
        self.track_cut(res.cut)
        return res

    def prefix_losses(self, x_bd: torch.Tensor) -> list[torch.Tensor]:
        """Per-prefix ``mean_r ‖x_r − x̂^{(g)}_r‖²`` of the training-mode (batch-coupled) codes, through
        autograd: the dense reference of :func:`matryoshka_step`."""
        codes = self.train_forward_codes(x_bd)
        return [(codes[:, :w] @ self.W_dec[:w] + self.b_dec - x_bd).pow(2).sum(1).mean() for w in self.widths]

    def with_options(self, **options: Any) -> MatryoshkaSAE:
        """``prefix=w``: the SAE of the first ``w`` features (``w`` one of the trained widths), with the
        same threshold and normalization."""
        unknown = sorted(set(options) - {"prefix"})
        if unknown:
            raise ConfigError(f"sae.{unknown[0]}: the matryoshka family's only evaluation option is "
                              f"'prefix' (one of the widths {self.widths})")
        if options.get("prefix") is None:
            return self
        prefix = options["prefix"]
        if isinstance(prefix, bool) or not isinstance(prefix, int) or prefix not in self.widths:
            raise ConfigError(f"sae.prefix={prefix!r}: must be one of the trained prefix widths "
                              f"{self.widths}")
        if prefix == self.d_sae:
            return self
        rest = {k: v for k, v in self.hparams.items() if k not in ("widths", "threshold_momentum")}
        sub = MatryoshkaSAE(self.d_in, prefix, self.k, widths=[w for w in self.widths if w <= prefix],
                            threshold_momentum=self.threshold_momentum, **rest)
        sub.hparams["prefix_of"] = self.d_sae
        sub.to(device=self.W_enc.device, dtype=self.W_enc.dtype)
        state = self.state_dict()
        state["W_enc"], state["b_enc"] = state["W_enc"][:, :prefix], state["b_enc"][:prefix]
        state["W_dec"] = state["W_dec"][:prefix]
        sub.load_state_dict(state)
        return sub.train(self.training)
