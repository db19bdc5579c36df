"""The paper authors' release: overcomplete ``BatchTopKSAE`` state dicts.

One Hub repo per backbone, one subfolder per configuration (``batchtopk_16x_k128``) with ``sae.pt`` (the
state dict plus ``_running_threshold``) and ``config.yaml`` (``threshold``). Overcomplete's ``top_k`` counts
the whole batch, so ``k = top_k / batch_size`` when both are given, else ``k`` comes from the folder name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from visae.errors import CheckpointError
from visae.sae.base import SAE
from visae.sae.formats import CheckpointFormat, first_byte, pt_file
from visae.sae.formats.common import build_sae, get_tensor, read_yaml_mapping, safe_torch_load, state_dict_of


def detect(path: Path) -> Path | None:
    """``sae.pt`` (or another ``.pt`` beside a ``config.yaml``) that is a plain torch file, not saev's
    JSON-headed one."""
    pt_path = pt_file(path)
    if pt_path is None or first_byte(pt_path) == b"{":
        return None
    return pt_path if pt_path.name == "sae.pt" or pt_path.with_name("config.yaml").is_file() else None


def load(pt_path: Path) -> SAE:
    """A BatchTopK SAE from an overcomplete state dict (and the ``config.yaml`` beside it)."""
    cfg_path = pt_path.with_name("config.yaml")
    cfg = read_yaml_mapping(cfg_path) if cfg_path.is_file() else {}
    state = state_dict_of(safe_torch_load(pt_path, pt_path), pt_path)
    w_fd = get_tensor(state, ("encoder.final_block.0.weight",), pt_path).float()
    b_f = get_tensor(state, ("encoder.final_block.0.bias",), pt_path).float()
    dic_fd = get_tensor(state, ("dictionary._weights",), pt_path).float()
    mult = state.get("dictionary.multiplier", torch.tensor(0.0)).float()
    d_sae, d_in = dic_fd.shape
    if w_fd.shape != (d_sae, d_in) or b_f.shape != (d_sae,):
        raise CheckpointError(f"{pt_path}: encoder weight {tuple(w_fd.shape)} / bias {tuple(b_f.shape)} do "
                              f"not match the dictionary {tuple(dic_fd.shape)}")
    k = _authors_k(pt_path, cfg, d_sae)
    threshold = cfg.get("threshold")
    if "_running_threshold" in state:
        threshold = float(state["_running_threshold"].reshape(-1)[0])
    if threshold is None:
        raise CheckpointError(f"{pt_path}: no inference threshold (neither '_running_threshold' in the state "
                              f"dict nor 'threshold' in {cfg_path.name}); BatchTopK inference needs one")
    sae = build_sae(pt_path, "batchtopk", d_in, d_sae, k, {})
    # overcomplete: pre = x Wᵀ + b (no pre-encoder bias); decode z · (D/‖D‖ · e^mult), no decoder bias.
    dictionary = dic_fd / (dic_fd.norm(dim=1, keepdim=True) + 1e-8) * torch.exp(mult)
    with torch.no_grad():
        sae.W_enc.copy_(w_fd.T)
        sae.b_enc.copy_(b_f)
        sae.W_dec.copy_(dictionary)
        sae.b_dec.zero_()
        sae.threshold.fill_(float(threshold))  # type: ignore[operator]
    sae.hparams.update(source="overcomplete", normalization="use the cache's statistics")
    return sae


def _authors_k(pt_path: Path, cfg: dict[str, Any], d_sae: int) -> int:
    top_k, batch = cfg.get("top_k"), cfg.get("batch_size")
    if isinstance(top_k, int) and isinstance(batch, int) and batch > 0:
        if top_k % batch:
            raise CheckpointError(f"{pt_path.with_name('config.yaml')}: top_k={top_k} is not a multiple of "
                                  f"batch_size={batch}; cannot convert to a per-token k")
        return top_k // batch
    for key in ("k", "k_per_token"):
        if isinstance(cfg.get(key), int):
            return int(cfg[key])
    m = re.search(r"_k(\d+)", pt_path.parent.name)
    if m:
        return int(m.group(1))
    raise CheckpointError(f"{pt_path}: cannot tell the per-token k: config.yaml lacks top_k with batch_size "
                          f"and the folder name {pt_path.parent.name!r} has no '_k<number>'")


FORMAT = CheckpointFormat("authors", ("sae.pt",), detect, load,
                          "the paper authors' release (overcomplete BatchTopKSAE sae.pt + config.yaml)")
