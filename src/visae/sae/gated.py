"""Gated SAE (Rajamanoharan et al. 2024, "Improving dictionary learning with gated sparse autoencoders").

Two paths share the encoder matrix: a gate decides which features fire, a magnitude path how strongly::

    π_gate = (x − b_dec) W_enc + b_gate
    f = 1[π_gate > 0] · ReLU((x − b_dec) (W_enc ⊙ e^{r_mag}) + b_mag)

``b_enc`` of the base class is the gate bias (SAELens's ``b_gate``); ``r_mag`` and ``b_mag`` are ``[F]``.
Inference equals SAELens's ``GatedSAE.encode`` on the same weights (:attr:`foreign_keys` maps its names).

Training loss (the paper's eq. 6, as SAELens's ``GatedTrainingSAE`` computes it)::

    ‖x − x̂‖² + λ · Σ_f ReLU(π_gate)_f ‖W_dec[f]‖ + ‖x − (ReLU(π_gate) Ŵ_dec + b̂_dec)‖²

summed over ``d`` and averaged over tokens. The auxiliary reconstruction uses frozen copies ``Ŵ_dec``,
``b̂_dec`` of the decoder, as the paper defines it (``detach_aux_decoder=True``); SAELens 6 lets its
gradient reach the decoder (``detach_aux_decoder=False`` reproduces that). The Heaviside gate gives the
reconstruction term no gradient into the gate path, which learns through the L1 and auxiliary terms only.

Every term after the shared encoder matmul lives on the open gates alone (codes, ``ReLU(π_gate)`` and all
their gradients are zero elsewhere). Once at most :data:`SPARSE_DENSITY` of the gates are open — the
regime a run spends its time in, with L0 near its target — :func:`gated_sparse_step` computes the step on
those entries through the sparse TopK kernels: one dense matmul per step instead of seven. While more are
open (the first steps from a random initialisation) the dense path runs: :class:`GatedCodesFn` computes
both paths' codes and their gradients in one pass each way (gradchecked against autograd through the
plain expressions) and autograd does the rest. Both paths give the same loss and gradients. With ``k``
given, λ is steered to an L0 target by the same multiplicative controller as JumpReLU's.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from visae.sae.family import TrainableSAE, dense_stats, steer_toward_l0
from visae.sae.sparse import (
    SparseCodes,
    StepResult,
    accumulate,
    accumulate_encoder_grads,
    row_offsets,
    sampled_dense_product,
    scatter_by_feature,
    sparse_decode,
)

SPARSE_DENSITY = 1 / 16
"""The sparse step runs when at most this share of the ``B·F`` gates is open (the kernels' cost grows with
the open entries, the dense matmuls' does not; the crossover on a CPU lies above 1/8)."""


def fold_decoder_bias(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SAELens gated tensors saved with ``apply_b_dec_to_input: false`` (the encoder sees ``x``, not
    ``x − b_dec``) → the same function in visae's form, which always subtracts ``b_dec``:
    ``b_gate += b_dec W_enc`` and ``b_mag += (b_dec W_enc) ⊙ e^{r_mag}``."""
    shift = tensors["b_dec"] @ tensors["W_enc"]
    return {**tensors, "b_gate": tensors["b_gate"] + shift,
            "b_mag": tensors["b_mag"] + shift * tensors["r_mag"].exp()}


class GatedCodesFn(torch.autograd.Function):
    """``(codes, ReLU(π_gate))`` from the shared matmul ``s = (x − b_dec) W_enc``, in one pass each way.

    ``π_gate = s + b_gate``, ``π_mag = s·e^{r_mag} + b_mag``, ``codes = 1[π_gate > 0]·ReLU(π_mag)``. The
    backward is autograd's through those expressions (the Heaviside gate passes no gradient), written out
    so that the ``[B, F]`` intermediates are recomputed from ``s`` rather than stored: with ``o = 1[π_gate >
    0]`` and ``g = ∂L/∂codes · o · 1[π_mag > 0]``, ``∂L/∂s = g·e^{r_mag} + ∂L/∂ReLU(π_gate) · o``,
    ``∂L/∂b_mag = Σ_r g``, ``∂L/∂r_mag = e^{r_mag} Σ_r g·s``, ``∂L/∂b_gate = Σ_r ∂L/∂ReLU(π_gate) · o``.
    """

    @staticmethod
    def forward(ctx: Any, shared: torch.Tensor, b_gate: torch.Tensor, r_mag: torch.Tensor,
                b_mag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = r_mag.exp()
        gate = shared + b_gate
        mag = torch.addcmul(b_mag, shared, scale)
        codes = torch.where((gate > 0) & (mag > 0), mag, 0.0)
        ctx.save_for_backward(shared, b_gate, scale, b_mag)
        return codes, gate.clamp_(min=0.0)

    @staticmethod
    def backward(ctx: Any, grad_codes: torch.Tensor, grad_gate_act: torch.Tensor) -> Any:
        shared, b_gate, scale, b_mag = ctx.saved_tensors
        open_ = (shared + b_gate) > 0
        g = torch.where(open_ & (torch.addcmul(b_mag, shared, scale) > 0), grad_codes, 0.0)
        gg = torch.where(open_, grad_gate_act, 0.0)
        grad_shared = torch.addcmul(gg, g, scale)
        return grad_shared, gg.sum(0), scale * (g * shared).sum(0), g.sum(0)


class GatedSAE(TrainableSAE):
    """Gated encoder (gate and magnitude paths sharing ``W_enc``), linear decoder."""

    family = "gated"
    target_l0 = True
    foreign_keys: ClassVar[dict[str, str]] = {"b_gate": "b_enc"}
    l1_coeff: torch.Tensor

    def __init__(self, d_in: int, d_sae: int, k: int | None = None, l1_coeff: float = 1.0,
                 controller_rate: float = 0.01, detach_aux_decoder: bool = True, **hparams: Any) -> None:
        super().__init__(d_in, d_sae, k, controller_rate=controller_rate,
                         detach_aux_decoder=detach_aux_decoder, **hparams)
        self.controller_rate = controller_rate
        self.detach_aux_decoder = detach_aux_decoder
        self.r_mag = torch.nn.Parameter(torch.zeros(d_sae))
        self.b_mag = torch.nn.Parameter(torch.zeros(d_sae))
        self.register_buffer("l1_coeff", torch.tensor(float(l1_coeff)))

    def gated_pre(self, x_nd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gate and magnitude pre-activations ``(π_gate, π_mag)``.

        The magnitude path scales the gate's matmul by ``e^{r_mag}`` column-wise (one matmul for both);
        that equals SAELens's ``x (W_enc ⊙ e^{r_mag})`` up to float rounding.
        """
        shared = (x_nd - self.b_dec) @ self.W_enc
        return shared + self.b_enc, shared * self.r_mag.exp() + self.b_mag

    def encode(self, x_nd: torch.Tensor) -> torch.Tensor:
        """``1[π_gate > 0] · ReLU(π_mag)``."""
        gate, mag = self.gated_pre(x_nd)
        return (gate > 0).to(mag.dtype) * torch.relu(mag)

    def training_step(self, x_bd: torch.Tensor, compute_dtype: torch.dtype = torch.float32,
                      keep_residual: bool = False) -> StepResult:
        """Reconstruction + λ·L1 of the gate + auxiliary gate reconstruction, through autograd."""
        with torch.autocast(x_bd.device.type, dtype=compute_dtype, enabled=compute_dtype != torch.float32):
            shared = (x_bd - self.b_dec) @ self.W_enc
        shared = shared.to(self.W_enc.dtype)  # back from bf16 under mixed precision
        open_bf = (shared + self.b_enc) > 0  # the same expression as GatedCodesFn's gate
        if int(torch.count_nonzero(open_bf)) <= SPARSE_DENSITY * open_bf.numel():  # sum() widens: 25x slower
            res = gated_sparse_step(self, x_bd, shared, open_bf, keep_residual)
            self._control(res.l0)
            return res
        del open_bf
        codes, gate_act = GatedCodesFn.apply(shared, self.b_enc, self.r_mag, self.b_mag)
        recon = self.decode(codes)
        l1 = (gate_act @ self.W_dec.norm(dim=1)).mean()
        frozen = self.detach_aux_decoder
        W, b = (self.W_dec.detach(), self.b_dec.detach()) if frozen else (self.W_dec, self.b_dec)
        aux = (gate_act @ W + b - x_bd).pow(2).sum(1).mean()
        loss = (recon - x_bd).pow(2).sum(1).mean() + self.l1_coeff * l1 + aux
        loss.backward()
        res = dense_stats(x_bd, recon.detach(), codes.detach(), loss.detach())
        self._control(res.l0)
        return res

    def _control(self, l0: float) -> None:
        steer_toward_l0(self.l1_coeff, l0, self.k, self.controller_rate)

    def config_extra(self) -> dict[str, Any]:
        return {"l1_coeff": float(self.l1_coeff)}


@torch.no_grad()
def gated_sparse_step(sae: GatedSAE, x_bd: torch.Tensor, shared_bf: torch.Tensor, open_bf: torch.Tensor,
                      keep_residual: bool = False) -> StepResult:
    """The gated loss and its gradients (into ``.grad``) on the open gates only.

    ``shared_bf`` is ``(x − b_dec) W_enc`` and ``open_bf`` its open gates ``π_gate > 0``. With ``s``, ``π``
    and ``m`` the shared, gate and magnitude values of each open entry, ``v = ReLU(m)`` the code and
    ``a = π`` the gate activation, the reconstruction and auxiliary terms are sparse decodes, their value
    gradients sampled products with the residuals, and every weight gradient a scatter over the entries;
    nothing ``[B, F]`` is formed after the mask. Equals the dense path's autograd (tested in float64).
    """
    n_rows, n_cols = open_bf.shape
    rows_n, cols_n = open_bf.nonzero().unbind(1)
    offsets_b = row_offsets(rows_n, n_rows)
    s_n = shared_bf[rows_n, cols_n]  # a gather; a boolean mask would search the [B, F] mask again
    gate_n = s_n + sae.b_enc[cols_n]
    scale_f = sae.r_mag.exp()
    mag_n = torch.addcmul(sae.b_mag[cols_n], s_n, scale_f[cols_n])
    code_n = mag_n.clamp(min=0.0)
    codes = SparseCodes(rows_n, cols_n, code_n, offsets_b, n_rows, n_cols, 0.0)
    gates = SparseCodes(rows_n, cols_n, gate_n, offsets_b, n_rows, n_cols, 0.0)
    W, lam = sae.W_dec, float(sae.l1_coeff)
    recon_bd = sparse_decode(codes, W, sae.b_dec)
    aux_bd = sparse_decode(gates, W, sae.b_dec)
    norms_f = W.norm(dim=1)
    diff_bd, aux_diff_bd = recon_bd - x_bd, aux_bd - x_bd
    sse, aux_sse = float(diff_bd.pow(2).sum()), float(aux_diff_bd.pow(2).sum())
    l1 = float(gate_n @ norms_f[cols_n]) / n_rows
    g_bd, ga_bd = diff_bd.mul_(2.0 / n_rows), aux_diff_bd.mul_(2.0 / n_rows)
    g_code_n = torch.where(mag_n > 0, sampled_dense_product(codes, g_bd, W), 0.0)
    g_gate_n = sampled_dense_product(gates, ga_bd, W).add_(norms_f[cols_n], alpha=lam / n_rows)
    g_shared_n = torch.addcmul(g_gate_n, g_code_n, scale_f[cols_n])
    order_n = torch.argsort(cols_n, stable=True)
    rows_sorted_n = rows_n[order_n]
    offsets_f = row_offsets(cols_n[order_n], n_cols)
    grad_W_dec = scatter_by_feature(order_n, rows_sorted_n, offsets_f, g_bd, code_n)
    grad_b_dec = g_bd.sum(0)
    if not sae.detach_aux_decoder:
        grad_W_dec += scatter_by_feature(order_n, rows_sorted_n, offsets_f, ga_bd, gate_n)
        grad_b_dec += ga_bd.sum(0)
    l1_f = torch.bincount(cols_n, weights=gate_n, minlength=n_cols).to(W.dtype)
    grad_W_dec.addcmul_((lam / n_rows) * l1_f.unsqueeze(1), W / norms_f.clamp_min(1e-30).unsqueeze(1))
    accumulate(W, grad_W_dec)
    accumulate_encoder_grads(codes, order_n, rows_sorted_n, offsets_f, x_bd - sae.b_dec, g_shared_n,
                             grad_b_dec, sae.W_enc, sae.b_enc, sae.b_dec, b_enc_grad_n=g_gate_n)
    accumulate(sae.b_mag, _per_feature(cols_n, g_code_n, n_cols))
    accumulate(sae.r_mag, scale_f * _per_feature(cols_n, g_code_n * s_n, n_cols))
    active_n = code_n > 0
    fired_f = torch.zeros(n_cols, dtype=torch.bool, device=x_bd.device)
    fired_f[cols_n[active_n]] = True
    total_var = float((x_bd - x_bd.mean(0)).pow(2).sum())
    loss = (sse + aux_sse) / n_rows + lam * l1
    return StepResult(loss=loss, mse=sse / x_bd.numel(), fvu=sse / max(total_var, 1e-12),
                      l0=float(active_n.sum()) / n_rows, fired_f=fired_f, cut=0.0,
                      residual_bd=g_bd.mul(-n_rows / 2.0) if keep_residual else None)


def _per_feature(cols_n: torch.Tensor, values_n: torch.Tensor, n_cols: int) -> torch.Tensor:
    return torch.bincount(cols_n, weights=values_n, minlength=n_cols).to(values_n.dtype)
