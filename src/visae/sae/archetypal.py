"""Relaxed archetypal SAE (RA-SAE; Fel et al. 2025, "Archetypal SAE", overcomplete's ``RATopKSAE``).

The decoder atoms are not free: each is a convex combination of data centroids ``C`` plus a small
relaxation, times one positive scale::

    D = (W C + Λ) · e^{m}      W ≥ 0, rows of W sum to 1, ‖Λ_f‖ ≤ δ

``C`` (``[n_centroids, d_in]``, a buffer) holds k-means centroids of the first training batch (computed
on the first step); ``W`` (``[d_sae, n_centroids]``), ``Λ`` (``relax``, ``[d_sae, d_in]``) and ``m``
(``multiplier``) are trained. After every optimizer step ``W`` is projected back to row-stochastic
(ReLU then row normalization) and each ``Λ_f`` onto the ball of radius δ — overcomplete's
``RelaxedArchetypalDictionary`` does the same at the start of each training forward pass. The atoms stay
in (a δ-neighbourhood of) the conical hull of the data, which makes dictionaries agree across runs.

``W_dec`` is a buffer holding the fused dictionary ``D`` (refreshed at each step and on ``eval()``), so
inference, evaluation, checkpoints and exporters see a plain decoder (overcomplete's fused eval-mode
dictionary).
Codes are per-token TopK of ``ReLU(pre)`` as in ``RATopKSAE``; the sparse TopK kernels compute the
gradient with respect to ``D``, which is taken by hand into ``W``, ``Λ`` and ``m`` (one ``W C`` product
each way per step). The first batch's least-squares scale starts ``m`` and Adam updates ``W`` at
``lr / √n_centroids`` (:meth:`ArchetypalSAE.optimizer_groups`), so the first steps do not blow up. Unlike
visae's other families the atoms are not unit-norm; ``b_dec`` (overcomplete has none) is kept as the
pre-encoder bias and is zero on overcomplete weights.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from visae.errors import ConfigError
from visae.sae.sparse import StepResult, topk_step
from visae.sae.topk import TopKSAE


@torch.no_grad()
def kmeans(x_nd: torch.Tensor, n_clusters: int, iters: int = 10,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Lloyd's k-means centroids ``[n_clusters, d]`` of the rows of ``x_nd``, initialised at random rows
    (with replacement when there are fewer rows than clusters); an empty cluster keeps its centroid."""
    n = x_nd.shape[0]
    if n == 0:
        raise ConfigError("archetypal: k-means needs at least one token")
    if n >= n_clusters:
        idx = torch.randperm(n, generator=generator)[:n_clusters]
    else:
        idx = torch.randint(n, (n_clusters,), generator=generator)
    cent = x_nd[idx.to(x_nd.device)].clone()
    x_sq = x_nd.pow(2).sum(1, keepdim=True)
    for _ in range(iters):
        dist = x_sq - 2 * x_nd @ cent.T + cent.pow(2).sum(1)
        assign = dist.argmin(1)
        sums = torch.zeros_like(cent).index_add_(0, assign, x_nd)
        counts = torch.bincount(assign, minlength=n_clusters).to(x_nd.dtype)
        filled = counts > 0
        cent[filled] = sums[filled] / counts[filled].unsqueeze(1)
    return cent


class ArchetypalSAE(TopKSAE):
    """Per-token TopK codes, relaxed archetypal decoder ``D = (W C + Λ) e^m`` (W row-stochastic)."""

    family = "archetypal"
    C: torch.Tensor
    W_dec: torch.Tensor  # type: ignore[assignment]  # a buffer here: the fused dictionary
    centroids_ready: torch.Tensor

    def __init__(self, d_in: int, d_sae: int, k: int | None = None, n_centroids: int | None = None,
                 delta: float = 1.0, use_multiplier: bool = True, kmeans_iters: int = 10,
                 **hparams: Any) -> None:
        n_c = int(n_centroids) if n_centroids is not None else d_sae
        if n_c < 1:
            raise ConfigError(f"archetypal: n_centroids must be ≥ 1, got {n_centroids}")
        if delta < 0:
            raise ConfigError(f"archetypal: delta (relaxation radius) must be ≥ 0, got {delta}")
        super().__init__(d_in, d_sae, k, n_centroids=n_c, delta=delta, use_multiplier=use_multiplier,
                         kmeans_iters=kmeans_iters, **hparams)
        self.delta, self.use_multiplier, self.kmeans_iters = float(delta), bool(use_multiplier), kmeans_iters
        w_dec = self.W_dec.detach().clone()
        del self.W_dec
        self.register_buffer("W_dec", w_dec)
        self.register_buffer("C", torch.zeros(n_c, d_in))
        self.register_buffer("centroids_ready", torch.tensor(False))
        init = torch.zeros(d_sae, n_c)
        init[torch.arange(d_sae), torch.arange(d_sae) % n_c] = 1.0  # overcomplete: eye(F, n_c)
        self.W = torch.nn.Parameter(init)
        self.relax = torch.nn.Parameter(torch.zeros(d_sae, d_in))
        self.multiplier = torch.nn.Parameter(torch.zeros(()), requires_grad=self.use_multiplier)

    foreign_keys: ClassVar[dict[str, str]] = {
        "dictionary.C": "C", "dictionary.W": "W", "dictionary.Relax": "relax",
        "dictionary.multiplier": "multiplier"}
    """overcomplete's ``RelaxedArchetypalDictionary`` names (its encoder weight is ``W_encᵀ``)."""

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], k: int | None = None,
                     **hparams: Any) -> ArchetypalSAE:
        """As :meth:`TrainableSAE.from_tensors`; ``n_centroids`` is read from ``C``, and given centroids
        count as computed (no k-means on the next step). ``W_dec`` is the fused dictionary of the
        (projected) ``W``, ``Λ``, ``m`` unless given."""
        state = {cls.foreign_keys.get(n, n): t for n, t in tensors.items()}
        if "C" in state:
            hparams.setdefault("n_centroids", int(state["C"].shape[0]))
            state.setdefault("centroids_ready", torch.tensor(True))
        sae = super().from_tensors(state, k, **hparams)
        assert isinstance(sae, ArchetypalSAE)
        if "W_dec" not in state:
            sae.project()
        return sae

    def dictionary(self) -> torch.Tensor:
        """``D = (W C + Λ) · e^m`` (differentiable in ``W``, ``Λ``, ``m``)."""
        return (self.W @ self.C + self.relax) * torch.exp(self.multiplier)

    @torch.no_grad()
    def project(self, refresh: bool = True) -> None:
        """``W`` row-stochastic, each ``Λ_f`` inside the δ-ball; then (``refresh``) the fused ``W_dec``."""
        w = self.W.clamp_(min=0.0)  # in place: the [F, n_centroids] matrix is the largest parameter
        w.div_(w.sum(1, keepdim=True).add_(1e-8))
        norm = self.relax.norm(dim=1, keepdim=True)
        self.relax.mul_(torch.clamp(self.delta / norm, max=1.0).nan_to_num(1.0))
        if refresh:
            self.W_dec.copy_(self.dictionary())

    def train(self, mode: bool = True) -> ArchetypalSAE:
        """Switching to eval mode fuses the dictionary into ``W_dec`` (as overcomplete does): during
        training it is refreshed at the start of each step, not after it."""
        if not mode:
            with torch.no_grad():
                self.W_dec.copy_(self.dictionary())
        return super().train(mode)

    @torch.no_grad()
    def init_centroids(self, x_bd: torch.Tensor) -> None:
        """``C`` ← k-means centroids of ``x_bd``; the encoder starts at the normalized atoms' transpose,
        scaled so that this batch's reconstruction has the least-squares scale (:meth:`_scale_encoder`)."""
        self.C.copy_(kmeans(x_bd.to(self.C.dtype), self.C.shape[0], self.kmeans_iters))
        self.centroids_ready.fill_(True)
        self.project()
        atoms = self.W_dec / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.W_enc.copy_(atoms.T)
        self._scale_encoder(x_bd.to(self.W_enc.dtype))

    @torch.no_grad()
    def _scale_encoder(self, x_bd: torch.Tensor) -> None:
        """Scale the reconstruction by ``α = ⟨x − b_dec, x̂⟩ / ‖x̂‖²`` (x̂ the bias-free reconstruction).

        The atoms are data centroids, not unit vectors, and the top-k inputs sum k of them: unscaled, the
        first reconstruction is tens to thousands of times too large (FVU ~10⁴ on DINOv2 tokens), which a
        short run never trains away. TopK codes are positively homogeneous in the encoder's scale (the
        selected set does not change), so α rescales them to the least-squares fit. α goes into the
        dictionary's multiplier (``m += log α``: the atoms' scale is what ``m`` is for); only without a
        multiplier does it scale ``W_enc`` and ``b_enc``. An encoder scaled by α ≈ 10⁻³ had entries far
        below Adam's first steps (≈ lr per coordinate): the first steps multiplied the codes and the
        training FVU jumped from 0.19 to 10 on the demo cache."""
        xc = x_bd - self.b_dec
        recon = self.encode(x_bd) @ self.W_dec
        alpha = float((xc * recon).sum() / (recon * recon).sum().clamp_min(1e-12))
        if alpha <= 0:
            return
        if self.use_multiplier:
            self.multiplier.add_(math.log(alpha))
            self.W_dec.copy_(self.dictionary())
        else:
            self.W_enc.mul_(alpha)
            self.b_enc.mul_(alpha)

    def optimizer_groups(self, lr: float) -> list[dict[str, Any]]:
        """Adam's learning rate for ``W`` is ``lr / √n_centroids``, every other parameter's ``lr``.

        Adam's first steps move each coordinate by about its rate; a row of ``W`` lies on the simplex of
        ``n_centroids`` coordinates, so at the full rate one step moves up to ``lr · n_centroids`` of its
        unit mass onto other centroids (a quarter of it for 512), blurring every atom towards the data mean.
        At ``lr / √n_centroids`` a row's ℓ2 change per step is at most ``lr``, like the relative change of
        ``Λ`` and ``e^m``. Measured (34 steps on the demo cache, 512 centroids; the synthetic ``easy``
        preset, 64): the full rate spikes the FVU to 0.33 and ends at 0.30; ``lr / n_centroids`` ends at
        0.171 but leaves ``W`` nearly frozen (``easy``: MCC 0.76, F1 0.47); ``lr / √n_centroids`` stays
        within 0.197 of the first 0.185, ends at 0.179, and recovers ``easy`` best (MCC 0.84, F1 0.67).

        Both groups use torch's fused Adam on CPU and CUDA: ``W`` (``[F, n_centroids]``) is by far the
        largest parameter, and the single-tensor loop torch otherwise picks on CPU took a fifth of the step
        (d 384, F 3072, 2048 centroids: ~50 ms of ~300; fused ~5 ms)."""
        fused = self.W.device.type in ("cpu", "cuda") and self.W.is_floating_point()
        rest = [p for name, p in self.named_parameters() if name != "W"]
        return [{"params": rest, "fused": fused},
                {"params": [self.W], "lr": lr / math.sqrt(self.C.shape[0]), "fused": fused}]

    def training_step(self, x_bd: torch.Tensor, compute_dtype: torch.dtype = torch.float32,
                      keep_residual: bool = False) -> StepResult:
        """Sparse TopK step against the fused dictionary, then its gradient by hand into ``W``, ``Λ``, ``m``.

        One ``W C`` product forward (written straight into ``W_dec``) and one backward (``∂L/∂W =
        (∂L/∂D · e^m) Cᵀ``); ``∂L/∂Λ = ∂L/∂D · e^m`` and ``∂L/∂m = ⟨∂L/∂D, D⟩``; no autograd graph."""
        if not bool(self.centroids_ready):
            self.init_centroids(x_bd)
        with torch.no_grad():
            scale = torch.exp(self.multiplier)
            d_fd = torch.mm(self.W, self.C, out=self.W_dec)  # the fused dictionary of the current parameters
            d_fd.add_(self.relax).mul_(scale)
            res = topk_step(x_bd, self.W_enc, self.b_enc, d_fd, self.b_dec, self.k_per_token,  # type: ignore[arg-type]
                            batch=False, compute_dtype=compute_dtype, keep_residual=keep_residual)
            g_fd, d_fd.grad = d_fd.grad, None
            if g_fd is not None:
                if self.multiplier.requires_grad:
                    _add_grad(self.multiplier, (g_fd * d_fd).sum())
                g_fd.mul_(scale)
                _add_grad(self.W, g_fd @ self.C.T)
                _add_grad(self.relax, g_fd)
        self._fused_at = self._versions()
        return res

    def _versions(self) -> tuple[int, ...]:
        """Storage and in-place version of ``W``, ``Λ``, ``m``, ``C`` and ``W_dec`` (an optimizer step, a
        projection, a load or a move changes one of them)."""
        return tuple(v for t in (self.W, self.relax, self.multiplier, self.C, self.W_dec)
                     for v in (t.data_ptr(), t._version))

    def decoder_atoms(self) -> torch.Tensor:
        """The dictionary ``D`` through autograd (``W_dec`` is its detached copy). Right after a training
        step (nothing changed since) it reuses the step's ``W C`` product: a decoder penalty then costs
        one dictionary product (its gradient), not two."""
        if getattr(self, "_fused_at", None) == self._versions():
            return _FusedDictionary.apply(self.W, self.relax, self.multiplier, self.C, self.W_dec)
        return self.dictionary()

    def remove_parallel_grad(self) -> None:
        """Nothing to do: the atoms are not unit-norm and ``W_dec`` is no parameter."""

    @torch.no_grad()
    def after_step(self) -> None:
        """Overcomplete's projections (:meth:`project`) instead of unit-norm rows; ``W_dec`` follows at the
        next step or on :meth:`eval`."""
        self.project(refresh=False)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """The atoms keep their norms (the dictionary is constrained by :meth:`project`)."""


class _FusedDictionary(torch.autograd.Function):
    """``D = (W C + Λ) e^m`` given its current value (forward: a copy); backward by hand like the step's."""

    @staticmethod
    def forward(ctx: Any, W: torch.Tensor, relax: torch.Tensor, multiplier: torch.Tensor,
                C: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(C, fused, multiplier)
        return fused.clone()

    @staticmethod
    def backward(ctx: Any, g_fd: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        C, fused, multiplier = ctx.saved_tensors
        g_m = (g_fd * fused).sum() if ctx.needs_input_grad[2] else None
        g_relax = g_fd * torch.exp(multiplier)
        g_w = g_relax @ C.T if ctx.needs_input_grad[0] else None
        return g_w, g_relax, g_m, None, None


def _add_grad(param: torch.nn.Parameter, grad: torch.Tensor) -> None:
    """``param.grad += grad`` (or ``= grad``)."""
    if param.grad is None:
        param.grad = grad
    else:
        param.grad.add_(grad)
