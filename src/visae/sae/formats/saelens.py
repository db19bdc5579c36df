"""SAELens checkpoints: ``sae_weights.safetensors`` + ``cfg.json``."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from visae.errors import CheckpointError
from visae.sae.base import SAE
from visae.sae.formats import CheckpointFormat
from visae.sae.formats.common import build_sae, get_tensor, load_safetensors

WEIGHTS = "sae_weights.safetensors"
CONFIG = "cfg.json"


def detect(path: Path) -> Path | None:
    """A folder holding both files."""
    return path if path.is_dir() and (path / WEIGHTS).is_file() and (path / CONFIG).is_file() else None


_SAELENS_FAMILY = {"standard": "relu", "relu": "relu", "jumprelu": "jumprelu", "topk": "topk",
                   "batchtopk": "batchtopk"}


def load(dir_path: Path) -> SAE:
    """One of our families from a SAELens folder (b_dec folded into b_enc when SAELens does not subtract
    it)."""
    cfg_path = dir_path / CONFIG
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfg_path}: cannot read JSON: {e}") from e
    arch = str(cfg.get("architecture", "standard")).lower()
    if arch not in _SAELENS_FAMILY:
        raise CheckpointError(f"{cfg_path}: field 'architecture' = {arch!r} is not supported "
                              f"(supported: {', '.join(_SAELENS_FAMILY)})")
    norm = cfg.get("normalize_activations", "none") or "none"
    if norm not in ("none", "expected_average_only_in"):
        raise CheckpointError(f"{cfg_path}: field 'normalize_activations' = {norm!r} rescales each token and "
                              f"has no equivalent here; only 'none' is supported")
    w_path = dir_path / WEIGHTS
    state = load_safetensors(w_path)
    W_enc, W_dec = get_tensor(state, ("W_enc",), w_path).float(), get_tensor(state, ("W_dec",),
                                                                             w_path).float()
    b_enc, b_dec = get_tensor(state, ("b_enc",), w_path).float(), get_tensor(state, ("b_dec",),
                                                                             w_path).float()
    d_in, d_sae = W_enc.shape
    if "d_in" in cfg and int(cfg["d_in"]) != d_in:
        raise CheckpointError(f"{w_path}: W_enc has d_in={d_in} but {cfg_path.name} says d_in={cfg['d_in']}")
    if W_dec.shape != (d_sae, d_in):
        raise CheckpointError(f"{w_path}: W_dec has shape {tuple(W_dec.shape)}, expected {(d_sae, d_in)}")
    family = _SAELENS_FAMILY[arch]
    k_per_token = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    sae = build_sae(w_path, family, d_in, d_sae, k_per_token, {})
    if not cfg.get("apply_b_dec_to_input", True):
        b_enc = b_enc + b_dec @ W_enc  # their encoder sees x, ours sees x − b_dec: fold b_dec in exactly
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.b_enc.copy_(b_enc)
        sae.W_dec.copy_(W_dec)
        sae.b_dec.copy_(b_dec)
        if family == "jumprelu":
            sae.threshold.copy_(get_tensor(state, ("threshold",), w_path).float())  # type: ignore[operator]
        if family == "batchtopk":
            threshold = state.get("threshold", state.get("topk_threshold"))
            if threshold is None:
                raise CheckpointError(f"{w_path}: batchtopk SAE without a 'threshold' tensor")
            sae.threshold.fill_(float(threshold.reshape(-1)[0]))  # type: ignore[operator]
    sae.hparams.update(source="saelens", normalization="identity (raw activations)")
    return sae


FORMAT = CheckpointFormat("saelens", (WEIGHTS, CONFIG), detect, load,
                          "SAELens (sae_weights.safetensors + cfg.json)")
