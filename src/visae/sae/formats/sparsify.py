"""EleutherAI sparsify checkpoints (PyPI ``eai-sparsify``): ``sae.safetensors`` + ``cfg.json``, as
``SparseCoder.save_to_disk`` writes them (one folder per hookpoint).

sparsify encodes ``top-k(ReLU(W (x − b_dec) + b))`` and decodes ``codes W_dec + b_dec``: our TopK, exactly.
Refused: ``activation: groupmax`` (no family here), ``transcode`` (a transcoder predicts another layer)
and ``skip_connection`` (an extra linear path from input to output).
"""

from __future__ import annotations

from pathlib import Path

import torch

from visae.errors import CheckpointError
from visae.sae.base import SAE
from visae.sae.formats import CheckpointFormat
from visae.sae.formats.common import build_sae, get_tensor, load_safetensors, read_json_mapping

WEIGHTS = "sae.safetensors"
CONFIG = "cfg.json"


def detect(path: Path) -> Path | None:
    """A folder holding both files."""
    return path if path.is_dir() and (path / WEIGHTS).is_file() and (path / CONFIG).is_file() else None


def load(dir_path: Path) -> SAE:
    """Our TopK from a sparsify folder."""
    cfg_path = dir_path / CONFIG
    cfg = read_json_mapping(cfg_path)
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise CheckpointError(f"{cfg_path}: field 'activation' = {activation!r} has no visae family (only "
                              "'topk' loads)")
    for flag, why in (("transcode", "a transcoder predicts another layer's output"),
                      ("skip_connection", "the skip connection adds a linear path no SAE family has")):
        if cfg.get(flag):
            raise CheckpointError(f"{cfg_path}: field {flag!r} = true: {why}; not loadable as an SAE")
    w_path = dir_path / WEIGHTS
    state = load_safetensors(w_path)
    W_enc = get_tensor(state, ("encoder.weight",), w_path).float().T
    b_enc = get_tensor(state, ("encoder.bias",), w_path).float()
    W_dec = get_tensor(state, ("W_dec",), w_path).float()
    b_dec = get_tensor(state, ("b_dec",), w_path).float()
    d_in, d_sae = W_enc.shape
    if "d_in" in cfg and int(cfg["d_in"]) != d_in:
        raise CheckpointError(f"{w_path}: encoder.weight gives d_in={d_in} but {CONFIG} says "
                              f"d_in={cfg['d_in']}")
    if W_dec.shape != (d_sae, d_in) or b_dec.shape != (d_in,):
        raise CheckpointError(f"{w_path}: W_dec {tuple(W_dec.shape)} / b_dec {tuple(b_dec.shape)} do not fit "
                              f"encoder.weight {tuple(W_enc.T.shape)}")
    k = cfg.get("k")
    if not isinstance(k, int):
        raise CheckpointError(f"{cfg_path}: field 'k' is missing or not an integer")
    sae = build_sae(w_path, "topk", d_in, d_sae, k, {})
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.b_enc.copy_(b_enc)
        sae.W_dec.copy_(W_dec)
        sae.b_dec.copy_(b_dec)
    sae.hparams.update(source="sparsify", normalization="identity (raw activations)")
    return sae


FORMAT = CheckpointFormat("sparsify", (WEIGHTS, CONFIG), detect, load,
                          "EleutherAI sparsify (sae.safetensors + cfg.json)")
