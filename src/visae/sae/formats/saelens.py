"""SAELens checkpoints: ``sae_weights.safetensors`` + ``cfg.json`` (sae-lens ``save_model`` and
``save_inference_model``; tested against sae-lens 6.54).

Each ``architecture`` maps onto one visae family through :data:`ARCHITECTURES`; the weights are folded so
that visae's ``(x − b_dec) W_enc + b_enc`` computes what sae-lens computes:

- ``apply_b_dec_to_input: false``: sae-lens encodes ``x``: ``b_dec W_enc`` is added to ``b_enc``;
- TopK with ``rescale_acts_by_decoder_norm``: sae-lens multiplies the pre-activations by ‖W_dec row‖ and
  divides the codes by it before decoding: ``W_enc``, ``b_enc`` are scaled up and ``W_dec`` down (as
  sae-lens's own fold does);
- JumpReLU: sae-lens keeps ``ReLU(pre)`` where ``pre > threshold``, so a negative threshold acts as 0;
- ``normalize_activations``: ``none`` and ``expected_average_only_in`` are the identity at inference in
  sae-lens (the factor is folded before saving); per-token modes (``layer_norm``,
  ``constant_norm_rescale``) and an unfolded ``covariance_whitening`` are refused.

sae-lens saves BatchTopK and Matryoshka-BatchTopK training SAEs for inference as ``jumprelu`` with a
per-feature threshold, so they load as JumpReLU; their training saves (``save_model``: ``batchtopk``,
``matryoshka_batchtopk``) load as BatchTopK and Matryoshka (with ``matryoshka_widths``) at their
``topk_threshold``. ``gated`` loads as visae's Gated family (``b_gate`` is our
``b_enc``; ``r_mag``, ``b_mag`` are copied; with ``apply_b_dec_to_input: false`` both paths' biases absorb
``b_dec W_enc`` through :func:`visae.sae.gated.fold_decoder_bias`). Another family is one entry in
:data:`ARCHITECTURES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from visae.errors import CheckpointError
from visae.sae.base import SAE
from visae.sae.formats import CheckpointFormat
from visae.sae.formats.common import build_sae, get_tensor, load_safetensors, read_json_mapping
from visae.sae.gated import fold_decoder_bias

WEIGHTS = "sae_weights.safetensors"
CONFIG = "cfg.json"


def detect(path: Path) -> Path | None:
    """A folder holding both files."""
    return path if path.is_dir() and (path / WEIGHTS).is_file() and (path / CONFIG).is_file() else None


def _threshold_vector(sae: SAE, state: dict[str, torch.Tensor], where: Path) -> None:
    t = get_tensor(state, ("threshold",), where).float()
    if t.shape != (sae.d_sae,):
        raise CheckpointError(f"{where}: tensor 'threshold' has shape {tuple(t.shape)}, expected "
                              f"({sae.d_sae},)")
    sae.threshold.copy_(t.clamp_min(0.0))  # type: ignore[operator]  # ReLU first in sae-lens


def _threshold_scalar(sae: SAE, state: dict[str, torch.Tensor], where: Path) -> None:
    t = state.get("topk_threshold", state.get("threshold"))
    if t is None:
        raise CheckpointError(f"{where}: batchtopk SAE without a 'topk_threshold' tensor")
    sae.threshold.fill_(float(t.reshape(-1)[0]))  # type: ignore[operator]


def _matryoshka_widths(cfg: dict[str, Any], cfg_path: Path) -> dict[str, Any]:
    widths = cfg.get("matryoshka_widths")
    if not isinstance(widths, list) or not widths or not all(isinstance(w, int) for w in widths):
        raise CheckpointError(f"{cfg_path}: field 'matryoshka_widths' = {widths!r} must be a list of "
                              "integers (the nested prefix widths)")
    return {"widths": widths}


def _gated(sae: SAE, state: dict[str, torch.Tensor], where: Path) -> None:
    """sae-lens ``b_gate`` → our ``b_enc`` (the gate bias); ``r_mag``, ``b_mag`` as they are."""
    for ours, theirs in (("b_enc", "b_gate"), ("r_mag", "r_mag"), ("b_mag", "b_mag")):
        t = get_tensor(state, (theirs,), where).float()
        if t.shape != (sae.d_sae,):
            raise CheckpointError(f"{where}: tensor {theirs!r} has shape {tuple(t.shape)}, expected "
                                  f"({sae.d_sae},)")
        getattr(sae, ours).copy_(t)


@dataclass(frozen=True)
class Architecture:
    """How one sae-lens ``architecture`` maps onto a visae family."""

    family: str
    k_field: str | None = None
    """The cfg field holding K (TopK kinds)."""
    extra: Callable[[SAE, dict[str, torch.Tensor], Path], None] | None = None
    """Copies the family's own tensors (thresholds; a Gated SAE's ``b_gate``, ``b_mag``, ``r_mag``) into
    the built SAE, after the shared ones."""
    hparams: dict[str, Any] = field(default_factory=dict)
    encoder_bias: str | None = "b_enc"
    """The tensor copied into ``b_enc`` (None: the architecture has none, e.g. ``gated``; ``extra`` sets
    the family's biases)."""
    cfg_hparams: Callable[[dict[str, Any], Path], dict[str, Any]] | None = None
    """The family's options read from ``cfg.json`` (Matryoshka: its widths)."""
    fold_input_bias: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
    """With ``apply_b_dec_to_input: false``: rewrites the tensors so that an encoder on ``x − b_dec``
    computes what theirs computes on ``x`` (None: ``b_enc += b_dec W_enc``)."""


ARCHITECTURES: dict[str, Architecture] = {
    "standard": Architecture("relu"),
    "topk": Architecture("topk", k_field="k"),
    "jumprelu": Architecture("jumprelu", extra=_threshold_vector),
    "batchtopk": Architecture("batchtopk", k_field="k", extra=_threshold_scalar),
    "matryoshka_batchtopk": Architecture("matryoshka", k_field="k", extra=_threshold_scalar,
                                         cfg_hparams=_matryoshka_widths),
    "gated": Architecture("gated", extra=_gated, encoder_bias=None, fold_input_bias=fold_decoder_bias),
}
"""sae-lens architecture → visae family."""

IDENTITY_NORMALIZATIONS = ("none", "expected_average_only_in")


def read_config(dir_path: Path) -> dict[str, Any]:
    """``cfg.json`` as a mapping; CheckpointError naming it otherwise."""
    return read_json_mapping(dir_path / CONFIG)


def load(dir_path: Path) -> SAE:
    """One of our families from a SAELens folder, computing what sae-lens computes."""
    cfg_path = dir_path / CONFIG
    cfg = read_config(dir_path)
    arch_name = str(cfg.get("architecture", "standard")).lower()
    arch = ARCHITECTURES.get(arch_name)
    if arch is None:
        raise CheckpointError(f"{cfg_path}: field 'architecture' = {arch_name!r} has no visae family "
                              f"(supported: {', '.join(ARCHITECTURES)})")
    norm = cfg.get("normalize_activations", "none") or "none"
    if norm not in IDENTITY_NORMALIZATIONS:
        raise CheckpointError(f"{cfg_path}: field 'normalize_activations' = {norm!r} rescales each token (or "
                              "is an unfolded whitening) and has no exact equivalent here; only "
                              f"{' or '.join(IDENTITY_NORMALIZATIONS)} load")
    if (cfg.get("reshape_activations") or "none") != "none":
        raise CheckpointError(f"{cfg_path}: field 'reshape_activations' = {cfg['reshape_activations']!r}: "
                              "attention-head SAEs are not ViT patch-token SAEs")
    w_path = dir_path / WEIGHTS
    state = load_safetensors(w_path)
    W_enc, W_dec = (get_tensor(state, (n,), w_path).float() for n in ("W_enc", "W_dec"))
    b_dec = get_tensor(state, ("b_dec",), w_path).float()
    d_in, d_sae = W_enc.shape
    b_enc = (get_tensor(state, (arch.encoder_bias,), w_path).float() if arch.encoder_bias is not None
             else torch.zeros(d_sae))
    for key, have in (("d_in", d_in), ("d_sae", d_sae)):
        if key in cfg and int(cfg[key]) != have:
            raise CheckpointError(f"{w_path}: W_enc gives {key}={have} but {CONFIG} says {key}={cfg[key]}")
    if W_dec.shape != (d_sae, d_in) or b_enc.shape != (d_sae,) or b_dec.shape != (d_in,):
        raise CheckpointError(f"{w_path}: W_dec {tuple(W_dec.shape)}, b_enc {tuple(b_enc.shape)}, b_dec "
                              f"{tuple(b_dec.shape)} do not fit W_enc {tuple(W_enc.shape)}")
    k = None
    if arch.k_field is not None:
        k = cfg.get(arch.k_field) or (cfg.get("activation_fn_kwargs") or {}).get("k")
        if not isinstance(k, int):
            raise CheckpointError(f"{cfg_path}: field {arch.k_field!r} (K) is missing for {arch_name}")
    hparams = {**arch.hparams, **(arch.cfg_hparams(cfg, cfg_path) if arch.cfg_hparams is not None else {})}
    sae = build_sae(w_path, arch.family, d_in, d_sae, k, hparams)
    if not cfg.get("apply_b_dec_to_input", True):  # their encoder sees x, ours x − b_dec: fold b_dec in
        if arch.fold_input_bias is not None:
            try:
                state = arch.fold_input_bias({**state, "W_enc": W_enc, "b_dec": b_dec})
            except KeyError as e:
                raise CheckpointError(f"{w_path}: missing tensor {e} (found {sorted(state)})") from e
            except RuntimeError as e:  # a bias whose shape does not fit W_enc
                raise CheckpointError(f"{w_path}: the {arch_name} biases do not fit W_enc "
                                      f"{tuple(W_enc.shape)}: {e}") from e
        else:
            b_enc = b_enc + b_dec @ W_enc
    if cfg.get("rescale_acts_by_decoder_norm"):
        norm_f = W_dec.norm(dim=1)
        W_enc, b_enc, W_dec = W_enc * norm_f, b_enc * norm_f, W_dec / norm_f[:, None]
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.b_enc.copy_(b_enc)
        sae.W_dec.copy_(W_dec)
        sae.b_dec.copy_(b_dec)
        if arch.extra is not None:
            arch.extra(sae, state, w_path)
    sae.hparams.update(source=f"saelens ({arch_name})", normalization="identity (raw activations)")
    return sae


FORMAT = CheckpointFormat("saelens", (WEIGHTS, CONFIG), detect, load,
                          "SAELens (sae_weights.safetensors + cfg.json)")
