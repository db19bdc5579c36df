"""saev checkpoints: ``sae.pt`` holding one JSON header line, then a ``torch.save``'d state dict."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from visae.errors import CheckpointError
from visae.sae.base import SAE
from visae.sae.formats import CheckpointFormat, first_byte, pt_file
from visae.sae.formats.common import build_sae, get_tensor, safe_torch_load, state_dict_of


def detect(path: Path) -> Path | None:
    """``sae.pt`` (or another ``.pt``) whose first byte opens a JSON header."""
    pt_path = pt_file(path)
    return pt_path if pt_path is not None and first_byte(pt_path) == b"{" else None


def load(pt_path: Path) -> SAE:
    """One of our families from a saev file (saev encodes x, not x − b_dec: b_dec is folded into b_enc)."""
    raw = pt_path.read_bytes()
    newline = raw.find(b"\n")
    try:
        header = json.loads(raw[:newline].decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{pt_path}: the first line is not a saev JSON header: {e}") from e
    cfg = header.get("cfg", header) if isinstance(header, dict) else {}
    state = state_dict_of(safe_torch_load(raw[newline + 1:], pt_path), pt_path)
    W_enc, W_dec = get_tensor(state, ("W_enc",), pt_path).float(), get_tensor(state, ("W_dec",),
                                                                              pt_path).float()
    b_enc, b_dec = get_tensor(state, ("b_enc",), pt_path).float(), get_tensor(state, ("b_dec",),
                                                                              pt_path).float()
    d_in, d_sae = W_enc.shape
    d_cfg = cfg.get("d_vit", cfg.get("d_model"))
    if d_cfg is not None and int(d_cfg) != d_in:
        raise CheckpointError(f"{pt_path}: W_enc has d_in={d_in} but the header's cfg says d_vit={d_cfg}")
    act = cfg.get("activation") or {}
    cls = str(act.get("cls", "Relu")) if isinstance(act, dict) else "Relu"
    params = act.get("params", {}) if isinstance(act, dict) else {}
    # saev's "BatchTopK" selects per sample, i.e. our TopK.
    family = {"Relu": "relu", "TopK": "topk", "BatchTopK": "topk"}.get(cls)
    if family is None:
        raise CheckpointError(f"{pt_path}: header field cfg.activation.cls = {cls!r} is not supported")
    sae = build_sae(pt_path, family, d_in, d_sae, params.get("top_k"), {})
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.b_enc.copy_(b_enc + b_dec @ W_enc)  # saev encodes x, not x − b_dec
        sae.W_dec.copy_(W_dec)
        sae.b_dec.copy_(b_dec)
    sae.hparams.update(source=f"saev schema {header.get('schema', 0)}",
                       normalization="identity (raw activations)")
    return sae


FORMAT = CheckpointFormat("saev", ("sae.pt",), detect, load, "saev (sae.pt with a JSON header line)")
