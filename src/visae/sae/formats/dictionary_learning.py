"""dictionary_learning checkpoints (PyPI ``dictionary-learning``; the SAEs of "Sparse autoencoders learn
monosemantic features in vision-language models" use it): ``ae.pt`` (a state dict) + ``config.json``
(``{"trainer": {"dict_class": ..., "k": ...}}``), as its ``trainSAE`` writes them.

Each ``dict_class`` maps onto a visae family through :data:`DICT_CLASSES` (one entry per class), computing
what the class's own ``encode`` / ``decode`` compute by default:

- ``AutoEncoder``: ``ReLU(W(x − bias) + b)``; ``AutoEncoderNew``: ``ReLU(W x + b)``, decoder bias;
- ``AutoEncoderTopK``: per-sample top-k of ``ReLU(pre)`` (its default ``use_threshold=False``);
- ``BatchTopKSAE``: ``ReLU(pre) · 1[ReLU(pre) > threshold]`` (its default ``use_threshold=True``): our
  BatchTopK at that threshold (−1, never set, is plain ReLU);
- ``MatryoshkaBatchTopKSAE``: the same rule, as our Matryoshka family with prefix widths the cumulative
  sums of its ``group_sizes`` buffer;
- ``JumpReluAutoEncoder``: ``ReLU(pre · 1[pre > θ])`` on ``x`` (``apply_b_dec_to_input`` is False unless
  the config says otherwise);
- ``GatedAutoEncoder``: ``1[π_gate > 0] · ReLU(π_mag)`` on ``x − decoder_bias``: our Gated family
  (``gate_bias`` → ``b_enc``, ``mag_bias`` → ``b_mag``, ``r_mag``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from visae.errors import CheckpointError
from visae.sae.base import SAE
from visae.sae.formats import CheckpointFormat
from visae.sae.formats.common import build_sae, get_tensor, read_json_mapping, safe_torch_load, state_dict_of

WEIGHTS = "ae.pt"
CONFIG = "config.json"

Tensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, bool]
"""``(W_enc [d, F], b_enc [F], W_dec [F, d], b_dec [d], encodes_x)``."""


def _linear(state: dict[str, torch.Tensor], where: Path, b_dec_key: str | None) -> Tensors:
    """``encoder``/``decoder`` ``nn.Linear`` layouts (AutoEncoder, AutoEncoderTopK, AutoEncoderNew)."""
    W_enc = get_tensor(state, ("encoder.weight",), where).float().T
    b_enc = get_tensor(state, ("encoder.bias",), where).float()
    W_dec = get_tensor(state, ("decoder.weight",), where).float().T
    if b_dec_key is None:  # AutoEncoderNew: encoder sees x, the decoder has its own bias
        return W_enc, b_enc, W_dec, get_tensor(state, ("decoder.bias",), where).float(), True
    return W_enc, b_enc, W_dec, get_tensor(state, (b_dec_key,), where).float(), False


def _matrices(state: dict[str, torch.Tensor], where: Path, encodes_x: bool) -> Tensors:
    """``W_enc``/``b_enc``/``W_dec``/``b_dec`` layouts (BatchTopK, Matryoshka, JumpReLU)."""
    W_enc, b_enc, W_dec, b_dec = (get_tensor(state, (n,), where).float() for n in ("W_enc", "b_enc", "W_dec",
                                                                                   "b_dec"))
    return W_enc, b_enc, W_dec, b_dec, encodes_x


def _gated(state: dict[str, torch.Tensor], where: Path) -> Tensors:
    """GatedAutoEncoder: bias-free ``encoder``/``decoder`` linears, ``gate_bias``, ``decoder_bias``."""
    W_enc = get_tensor(state, ("encoder.weight",), where).float().T
    W_dec = get_tensor(state, ("decoder.weight",), where).float().T
    b_gate, b_dec = (get_tensor(state, (n,), where).float() for n in ("gate_bias", "decoder_bias"))
    return W_enc, b_gate, W_dec, b_dec, False


def _gated_magnitude(sae: SAE, state: dict[str, torch.Tensor], where: Path) -> None:
    for ours, theirs in (("r_mag", "r_mag"), ("b_mag", "mag_bias")):
        t = get_tensor(state, (theirs,), where).float()
        if t.shape != (sae.d_sae,):
            raise CheckpointError(f"{where}: tensor {theirs!r} has shape {tuple(t.shape)}, expected "
                                  f"({sae.d_sae},)")
        getattr(sae, ours).copy_(t)


def _matryoshka_widths(state: dict[str, torch.Tensor], where: Path, d_sae: int) -> dict[str, Any]:
    """``widths`` = cumulative sums of the ``group_sizes`` buffer (which must sum to ``d_sae``)."""
    sizes = [int(n) for n in get_tensor(state, ("group_sizes",), where).reshape(-1).tolist()]
    widths = list(itertools.accumulate(sizes))
    if not sizes or min(sizes) < 1 or widths[-1] != d_sae:
        raise CheckpointError(f"{where}: tensor 'group_sizes' = {sizes} must be positive and sum to the "
                              f"dictionary size {d_sae}")
    return {"widths": widths}


def _scalar_threshold(sae: SAE, state: dict[str, torch.Tensor], where: Path) -> None:
    t = get_tensor(state, ("threshold",), where).float().reshape(-1)
    sae.threshold.fill_(max(float(t[0]), 0.0))  # type: ignore[operator]


def _vector_threshold(sae: SAE, state: dict[str, torch.Tensor], where: Path) -> None:
    t = get_tensor(state, ("threshold",), where).float()
    sae.threshold.copy_(t.clamp_min(0.0))  # type: ignore[operator]  # ReLU after the jump


@dataclass(frozen=True)
class DictClass:
    """How one dictionary_learning ``dict_class`` maps onto a visae family."""

    family: str
    tensors: Callable[[dict[str, torch.Tensor], Path, dict[str, Any]], Tensors]
    needs_k: bool = False
    extra: Callable[[SAE, dict[str, torch.Tensor], Path], None] | None = None
    hparams: Callable[[dict[str, torch.Tensor], Path, int], dict[str, Any]] | None = None
    """The family's options read from the state dict (given ``d_sae``)."""


DICT_CLASSES: dict[str, DictClass] = {
    "AutoEncoder": DictClass("relu", lambda s, w, c: _linear(s, w, "bias")),
    "AutoEncoderNew": DictClass("relu", lambda s, w, c: _linear(s, w, None)),
    "AutoEncoderTopK": DictClass("topk", lambda s, w, c: _linear(s, w, "b_dec"), needs_k=True),
    "BatchTopKSAE": DictClass("batchtopk", lambda s, w, c: _linear(s, w, "b_dec"), needs_k=True,
                              extra=_scalar_threshold),
    "MatryoshkaBatchTopKSAE": DictClass("matryoshka", lambda s, w, c: _matrices(s, w, False), needs_k=True,
                                        extra=_scalar_threshold, hparams=_matryoshka_widths),
    "JumpReluAutoEncoder": DictClass(
        "jumprelu", lambda s, w, c: _matrices(s, w, not c.get("apply_b_dec_to_input", False)),
        extra=_vector_threshold),
    "GatedAutoEncoder": DictClass("gated", lambda s, w, c: _gated(s, w), extra=_gated_magnitude),
}
"""dictionary_learning class → visae family."""


def detect(path: Path) -> Path | None:
    """A folder holding ``ae.pt``, or that file itself."""
    if path.is_dir() and (path / WEIGHTS).is_file():
        return path / WEIGHTS
    return path if path.is_file() and path.name == WEIGHTS else None


def _dict_class(pt_path: Path, cfg: dict[str, Any], state: dict[str, torch.Tensor]) -> str:
    trainer = cfg.get("trainer") if isinstance(cfg.get("trainer"), dict) else {}
    name = trainer.get("dict_class") if isinstance(trainer, dict) else None
    if isinstance(name, str):
        return name
    # No config.json: the state dict's keys tell the layouts apart where they are unique.
    if "group_sizes" in state:
        return "MatryoshkaBatchTopKSAE"
    if "bias" in state and "encoder.weight" in state:
        return "AutoEncoder"
    raise CheckpointError(f"{pt_path.with_name(CONFIG)}: missing, or without field trainer.dict_class; it "
                          "says which dictionary class wrote ae.pt (AutoEncoder, AutoEncoderTopK, "
                          "BatchTopKSAE, …); put the trainSAE config.json beside ae.pt")


def load(pt_path: Path) -> SAE:
    """One of our families from ``ae.pt`` (+ ``config.json``)."""
    cfg_path = pt_path.with_name(CONFIG)
    cfg = read_json_mapping(cfg_path) if cfg_path.is_file() else {}
    state = state_dict_of(safe_torch_load(pt_path, pt_path), pt_path)
    name = _dict_class(pt_path, cfg, state)
    entry = DICT_CLASSES.get(name)
    if entry is None:
        raise CheckpointError(f"{cfg_path}: field trainer.dict_class = {name!r} has no visae family "
                              f"(supported: {', '.join(DICT_CLASSES)})")
    trainer = cfg.get("trainer") or {}
    W_enc, b_enc, W_dec, b_dec, encodes_x = entry.tensors(state, pt_path, trainer)
    d_in, d_sae = W_enc.shape
    if W_dec.shape != (d_sae, d_in) or b_enc.shape != (d_sae,) or b_dec.shape != (d_in,):
        raise CheckpointError(f"{pt_path}: decoder {tuple(W_dec.shape)}, encoder bias {tuple(b_enc.shape)}, "
                              f"decoder bias {tuple(b_dec.shape)} do not fit the encoder "
                              f"{tuple(W_enc.shape)}")
    k = None
    if entry.needs_k:
        k = trainer.get("k") if isinstance(trainer.get("k"), int) else None
        if k is None and "k" in state:
            k = int(state["k"])
        if k is None:
            raise CheckpointError(f"{pt_path}: no K (neither a 'k' buffer nor trainer.k in {CONFIG})")
    hparams = entry.hparams(state, pt_path, d_sae) if entry.hparams is not None else {}
    sae = build_sae(pt_path, entry.family, d_in, d_sae, k, hparams)
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.b_enc.copy_(b_enc + b_dec @ W_enc if encodes_x else b_enc)
        sae.W_dec.copy_(W_dec)
        sae.b_dec.copy_(b_dec)
        if entry.extra is not None:
            entry.extra(sae, state, pt_path)
    sae.hparams.update(source=f"dictionary_learning ({name})", normalization="identity (raw activations)")
    return sae


FORMAT = CheckpointFormat("dictionary_learning", (WEIGHTS,), detect, load,
                          "dictionary_learning (ae.pt + config.json)")
