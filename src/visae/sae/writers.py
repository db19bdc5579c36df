"""Writers for other libraries' checkpoint formats: ``visae export --format saelens|saev``.

A visae SAE works on normalized activations ``x = (a − mean) / std``; the other libraries take raw
activations. The statistics are folded into the weights exactly (:func:`raw_space_weights`):
``W_enc / std``, ``std · W_dec`` and one bias ``mean + std · b_dec`` that is both subtracted before the
encoder and added after the decoder, so that the written SAE maps raw activations to the same codes and the
same raw-space reconstructions as visae's normalize → encode → decode → de-normalize.

The fold leaves every encoder pre-activation unchanged: ``(a − b_dec') (W_enc / std) = (x − b_dec) W_enc``
with ``b_dec' = mean + std · b_dec``. A Gated SAE's two paths both read that one product, so its ``b_enc``
(the gate bias), ``r_mag`` and ``b_mag`` are written as they are.

Each family's mapping is one entry in :data:`SAELENS_ARCHITECTURES` / :data:`SAEV_ACTIVATIONS`.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from visae import __version__
from visae.errors import CheckpointError
from visae.io import atomic_write_text, atomic_write_with
from visae.sae.base import SAE

EXPORT_FORMATS = ("visae", "saelens", "saev")


@dataclass(frozen=True)
class RawWeights:
    """An SAE's weights in raw-activation space: ``codes = σ((a − b_dec) W_enc + b_enc)``,
    ``â = codes W_dec + b_dec``."""

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor


def raw_space_weights(sae: SAE) -> RawWeights:
    """The weights with the normalization statistics folded in (float32, CPU)."""
    std = float(sae.act_std)
    mean = sae.act_mean.detach().float().cpu()
    return RawWeights(W_enc=sae.W_enc.detach().float().cpu() / std, b_enc=sae.b_enc.detach().float().cpu(),
                      W_dec=sae.W_dec.detach().float().cpu() * std,
                      b_dec=mean + std * sae.b_dec.detach().float().cpu())


def _batchtopk_threshold(sae: SAE, where: str) -> float:
    t = float(sae.threshold)  # type: ignore[arg-type]
    if not math.isfinite(t):
        raise CheckpointError(f"{where}: the BatchTopK SAE has no inference threshold yet (calibrate it, "
                              "e.g. with 'visae train', before exporting); other libraries run BatchTopK as "
                              "a JumpReLU at that threshold")
    return max(t, 0.0)


def _gated_tensors(sae: SAE, where: str) -> dict[str, torch.Tensor]:
    """sae-lens ``gated``: ``b_gate`` (our ``b_enc``), ``r_mag``, ``b_mag``; the training-only ``l1_coeff``
    buffer is not written."""
    r_mag: torch.Tensor = sae.r_mag  # type: ignore[assignment]
    b_mag: torch.Tensor = sae.b_mag  # type: ignore[assignment]
    return {"b_gate": sae.b_enc.detach().float().cpu(), "r_mag": r_mag.detach().float().cpu(),
            "b_mag": b_mag.detach().float().cpu()}


def _jumprelu_thresholds(sae: SAE, where: str) -> torch.Tensor:
    threshold: torch.Tensor = sae.threshold  # type: ignore[assignment]
    t = threshold.detach().float().cpu()
    if bool((t < 0).any()):
        raise CheckpointError(f"{where}: {int((t < 0).sum())} JumpReLU thresholds are negative; sae-lens "
                              "applies ReLU before the jump, so they would not export exactly")
    return t


# --- SAELens ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SAELensArchitecture:
    """How one visae family is written for sae-lens: its ``architecture``, extra cfg fields and tensors."""

    architecture: str
    cfg: Callable[[SAE], dict[str, Any]]
    tensors: Callable[[SAE, str], dict[str, torch.Tensor]]
    """The family's own tensors (thresholds; Gated: ``b_gate``, ``b_mag``, ``r_mag``)."""
    encoder_bias: bool = True
    """Whether sae-lens's architecture has ``b_enc`` (``gated`` has not)."""


# As sae-lens itself saves BatchTopK for inference: JumpReLU with the threshold on every feature.
_SAELENS_BATCHTOPK = SAELensArchitecture("jumprelu", lambda s: {}, lambda s, w: {
    "threshold": torch.full((s.d_sae,), _batchtopk_threshold(s, w))})

_SAELENS_TOPK = SAELensArchitecture(
    "topk", lambda s: {"k": s.k_per_token, "rescale_acts_by_decoder_norm": False}, lambda s, w: {})

SAELENS_ARCHITECTURES: dict[str, SAELensArchitecture] = {
    "relu": SAELensArchitecture("standard", lambda s: {}, lambda s, w: {}),
    "topk": _SAELENS_TOPK,
    # RA-SAE infers as per-token TopK on its fused dictionary (the W_dec buffer): a TopK SAE elsewhere.
    "archetypal": _SAELENS_TOPK,
    "jumprelu": SAELensArchitecture("jumprelu", lambda s: {},
                                    lambda s, w: {"threshold": _jumprelu_thresholds(s, w)}),
    "batchtopk": _SAELENS_BATCHTOPK,
    # Matryoshka-BatchTopK infers as BatchTopK: sae-lens saves its own the same way.
    "matryoshka": _SAELENS_BATCHTOPK,
    "gated": SAELensArchitecture("gated", lambda s: {}, _gated_tensors, encoder_bias=False),
}
"""visae family → sae-lens architecture."""


def write_saelens(sae: SAE, dest: Path, metadata: dict[str, Any] | None = None) -> list[Path]:
    """``sae_weights.safetensors`` + ``cfg.json`` that ``sae_lens.SAE.load_from_disk`` loads."""
    arch = SAELENS_ARCHITECTURES.get(sae.family)
    if arch is None:
        raise CheckpointError(f"{dest}: a {sae.family} SAE has no SAELens architecture here (supported: "
                              f"{', '.join(SAELENS_ARCHITECTURES)})")
    w = raw_space_weights(sae)
    tensors = {"W_enc": w.W_enc, **({"b_enc": w.b_enc} if arch.encoder_bias else {}), "W_dec": w.W_dec,
               "b_dec": w.b_dec, **arch.tensors(sae, str(dest))}
    cfg = {"architecture": arch.architecture, "d_in": sae.d_in, "d_sae": sae.d_sae, "dtype": "float32",
           "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none",
           "reshape_activations": "none", **arch.cfg(sae),
           "metadata": {"exported_by": f"visae {__version__}", "visae_family": sae.family,
                        **(metadata or {})}}
    dest.mkdir(parents=True, exist_ok=True)
    weights = dest / "sae_weights.safetensors"
    state = {k: v.contiguous() for k, v in tensors.items()}
    atomic_write_with(weights, lambda p: save_file(state, str(p)))
    atomic_write_text(dest / "cfg.json", json.dumps(cfg, indent=2))
    return [weights, dest / "cfg.json"]


# --- saev ------------------------------------------------------------------------------------------------
SAEV_SCHEMA = 5


@dataclass(frozen=True)
class SaevActivation:
    """How one visae family is written for saev (schema 5): activation class, params, extra tensors."""

    cls: str
    params: Callable[[SAE], dict[str, Any]]
    tensors: Callable[[SAE, str], dict[str, torch.Tensor]]


# saev's eval-mode BatchTopK is a JumpReLU at its scalar threshold buffer (≤ 0: ReLU), like ours.
_SAEV_BATCHTOPK = SaevActivation("BatchTopK", lambda s: {"top_k": s.k_per_token}, lambda s, w: {
    "activation.threshold": torch.tensor(_batchtopk_threshold(s, w))})

SAEV_ACTIVATIONS: dict[str, SaevActivation] = {
    "relu": SaevActivation("Relu", lambda s: {}, lambda s, w: {}),
    "topk": SaevActivation("TopK", lambda s: {"top_k": s.k_per_token}, lambda s, w: {}),
    "archetypal": SaevActivation("TopK", lambda s: {"top_k": s.k_per_token}, lambda s, w: {}),
    "batchtopk": _SAEV_BATCHTOPK,
    # saev's Matryoshka is an objective, not an activation: it saves a BatchTopK SAE whose decoder rows are
    # ordered by prefix, which is what a visae Matryoshka SAE is.
    "matryoshka": _SAEV_BATCHTOPK,
}
"""visae family → saev activation (schema 5). saev has no per-feature JumpReLU, so JumpReLU is refused;
nor a gated encoder, so Gated is refused."""


def write_saev(sae: SAE, dest: Path, metadata: dict[str, Any] | None = None) -> list[Path]:
    """``sae.pt`` (a schema-5 JSON header line, then the state dict) that saev's ``nn.load`` loads.

    saev's encoder reads ``x`` (no ``b_dec`` subtraction): ``b_dec W_enc`` is folded out of ``b_enc``.
    """
    act = SAEV_ACTIVATIONS.get(sae.family)
    if act is None:
        raise CheckpointError(f"{dest}: a {sae.family} SAE has no saev activation (supported: "
                              f"{', '.join(SAEV_ACTIVATIONS)}; saev has no per-feature JumpReLU and no gated "
                              "encoder; export it with --format saelens or visae)")
    w = raw_space_weights(sae)
    state = {"W_dec": w.W_dec, "b_dec": w.b_dec, "W_enc": w.W_enc, "b_enc": w.b_enc - w.b_dec @ w.W_enc,
             **act.tensors(sae, str(dest))}
    header = {"schema": SAEV_SCHEMA,
              "cfg": {"d_model": sae.d_in, "d_sae": sae.d_sae,
                      "activation": {"cls": act.cls, "params": act.params(sae)},
                      "remove_parallel_grads": True, "normalize_w_dec": True},
              "commit": "unknown", "lib": f"visae {__version__}", **({"visae": metadata} if metadata else {})}
    buf = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in state.items()}, buf)
    data = json.dumps(header).encode("utf-8") + b"\n" + buf.getvalue()
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / "sae.pt"

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    atomic_write_with(path, write)
    return [path]


WRITERS: dict[str, Callable[[SAE, Path, dict[str, Any] | None], list[Path]]] = {
    "saelens": write_saelens, "saev": write_saev}


def check_export(original: SAE, exported: SAE, where: Path, n: int = 256, atol: float = 1e-4) -> None:
    """Raw-space codes and reconstructions of the written checkpoint (loaded back) equal the original's on
    random activations around its training statistics; CheckpointError otherwise."""
    g = torch.Generator().manual_seed(0)
    std = float(original.act_std)
    a = original.act_mean.detach().float().cpu() + std * torch.randn(n, original.d_in, generator=g)
    original, exported = original.float().cpu().eval(), exported.float().cpu().eval()
    with torch.no_grad():
        want = original(original.normalize(a))
        got = exported(exported.normalize(a))
        recon_want = want.recon_nd * original.act_std + original.act_mean
        recon_got = got.recon_nd * exported.act_std + exported.act_mean
    scale = max(1.0, float(recon_want.abs().max()))
    if not (torch.allclose(got.codes_nf, want.codes_nf, atol=atol * scale, rtol=1e-4)
            and torch.allclose(recon_got, recon_want, atol=atol * scale, rtol=1e-4)):
        raise CheckpointError(f"{where}: the exported checkpoint does not reproduce the SAE (max code "
                              f"difference {float((got.codes_nf - want.codes_nf).abs().max()):.3g}); "
                              "not exported")


__all__ = ["EXPORT_FORMATS", "SAELENS_ARCHITECTURES", "SAEV_ACTIVATIONS", "WRITERS", "RawWeights",
           "check_export", "raw_space_weights", "write_saelens", "write_saev"]
