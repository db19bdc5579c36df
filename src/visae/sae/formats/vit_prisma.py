"""ViT-Prisma SAEs: ``config.json`` (``VisionModelSAERunnerConfig.save_config``) beside a ``.pt`` written by
``SparseAutoencoder.save_model`` (``n_images_<N>.pt``: ``{"cfg": <config object>, "state_dict": ...}``) or
holding the state dict alone (``weights.pt``, as on the hub).

The pickled config object is never executed: the file is read with ``torch.load(weights_only=True)``,
the config's class allowed only as an inert placeholder (its fields are read from ``config.json``).
ViT-Prisma's standard SAE is ``act((x − b_dec) W_enc + b_enc)``, decoded ``codes W_dec + b_dec``: ours.
Activations map through :data:`ACTIVATIONS` (``relu``; ``topk``: ReLU of the top k). ``architecture: gated``
with ``relu`` is visae's Gated family: ``1[x' W_enc + b_gate > 0] · ReLU(x' (W_enc ⊙ e^{r_mag}) + b_mag)``
on ``x' = x − b_dec`` (``b_gate`` → our ``b_enc``; its own ``b_enc`` parameter is unused by its gated
forward and is not read). Refused: per-token ``normalize_activations`` (``layer_norm``, ViT-Prisma's
default, and ``constant_norm_rescale``), a gated SAE with ``topk`` magnitudes, jumprelu, transcoders,
``tanh-relu``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from visae.errors import CheckpointError
from visae.sae.base import SAE
from visae.sae.formats import CheckpointFormat
from visae.sae.formats.common import build_sae, get_tensor, read_json_mapping

CONFIG = "config.json"
CONFIG_CLASS = "vit_prisma.sae.config.VisionModelSAERunnerConfig"
ACTIVATIONS = {"relu": "relu", "topk": "topk"}
"""ViT-Prisma ``activation_fn_str`` → visae family."""
ARCHITECTURES = {"standard", "gated"}
"""ViT-Prisma ``architecture`` values read."""


def _is_prisma_config(path: Path) -> bool:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "activation_fn_str" in cfg and "expansion_factor" in cfg


def _weights_in(folder: Path) -> Path | None:
    """The checkpoint among a folder's ``.pt`` files: ``weights.pt``, else the latest ``n_images_<N>.pt``."""
    if (folder / "weights.pt").is_file():
        return folder / "weights.pt"
    found = [(int(m.group(1)), p) for p in folder.glob("n_images_*.pt")
             if (m := re.fullmatch(r"n_images_(\d+)\.pt", p.name))]
    return max(found)[1] if found else None


def detect(path: Path) -> Path | None:
    """A ``.pt`` beside a ViT-Prisma ``config.json``, or a folder holding both."""
    if path.is_file():
        return path if path.suffix == ".pt" and _is_prisma_config(path.with_name(CONFIG)) else None
    if path.is_dir() and (path / CONFIG).is_file() and _is_prisma_config(path / CONFIG):
        return _weights_in(path)
    return None


class _InertConfig:
    """Stands in for the pickled config object: keeps its state, runs nothing."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _state_dict(pt_path: Path) -> dict[str, torch.Tensor]:
    try:
        with torch.serialization.safe_globals([(_InertConfig, CONFIG_CLASS)]):
            obj = torch.load(str(pt_path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{pt_path}: not a readable ViT-Prisma checkpoint (refused to unpickle "
                              f"anything but tensors and its config): {e}") from e
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{pt_path}: expected a state dict of tensors (or {{'cfg', 'state_dict'}})")
    return state


def load(pt_path: Path) -> SAE:
    """One of our families from a ViT-Prisma checkpoint."""
    cfg_path = pt_path.with_name(CONFIG)
    cfg = read_json_mapping(cfg_path)
    arch = cfg.get("architecture", "standard")
    if cfg.get("is_transcoder"):
        raise CheckpointError(f"{cfg_path}: field 'is_transcoder' = true: a transcoder predicts another "
                              "layer's output; not loadable as an SAE")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{cfg_path}: field 'architecture' = {arch!r} has no visae mapping (supported: "
                              f"{', '.join(sorted(ARCHITECTURES))})")
    act = cfg.get("activation_fn_str", "relu")
    family = ACTIVATIONS.get(act)
    if family is None:
        raise CheckpointError(f"{cfg_path}: field 'activation_fn_str' = {act!r} has no visae family "
                              f"(supported: {', '.join(ACTIVATIONS)})")
    if arch == "gated":
        if act != "relu":
            raise CheckpointError(f"{cfg_path}: field 'activation_fn_str' = {act!r} with architecture "
                                  "'gated' (a top-k of the magnitude path) has no visae family; only 'relu' "
                                  "loads")
        family = "gated"
    norm = cfg.get("normalize_activations") or "none"
    if norm != "none":
        raise CheckpointError(f"{cfg_path}: field 'normalize_activations' = {norm!r} normalizes each "
                              "token by its own statistics, which no fixed affine map reproduces; only "
                              "'none' loads")
    kwargs = cfg.get("activation_fn_kwargs") or {}
    k = kwargs.get("k") if family == "topk" else None
    if family == "topk" and not isinstance(k, int):
        raise CheckpointError(f"{cfg_path}: field activation_fn_kwargs.k is missing for activation 'topk'")
    state = _state_dict(pt_path)
    names = ("W_enc", "b_gate" if family == "gated" else "b_enc", "W_dec", "b_dec")
    W_enc, b_enc, W_dec, b_dec = (get_tensor(state, (n,), pt_path).float() for n in names)
    d_in, d_sae = W_enc.shape
    if "d_in" in cfg and int(cfg["d_in"]) != d_in:
        raise CheckpointError(f"{pt_path}: W_enc gives d_in={d_in} but {CONFIG} says d_in={cfg['d_in']}")
    if W_dec.shape != (d_sae, d_in) or b_enc.shape != (d_sae,) or b_dec.shape != (d_in,):
        raise CheckpointError(f"{pt_path}: W_dec {tuple(W_dec.shape)}, b_enc {tuple(b_enc.shape)}, b_dec "
                              f"{tuple(b_dec.shape)} do not fit W_enc {tuple(W_enc.shape)}")
    sae = build_sae(pt_path, family, d_in, d_sae, k, {})
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.b_enc.copy_(b_enc)
        sae.W_dec.copy_(W_dec)
        sae.b_dec.copy_(b_dec)
        if family == "gated":
            for name in ("r_mag", "b_mag"):
                t = get_tensor(state, (name,), pt_path).float()
                if t.shape != (d_sae,):
                    raise CheckpointError(f"{pt_path}: tensor {name!r} has shape {tuple(t.shape)}, expected "
                                          f"({d_sae},)")
                getattr(sae, name).copy_(t)
    sae.hparams.update(source=f"vit_prisma ({pt_path.name})", normalization="identity (raw activations)")
    return sae


FORMAT = CheckpointFormat("vit_prisma", ("weights.pt", CONFIG), detect, load,
                          "ViT-Prisma (config.json + n_images_<N>.pt or weights.pt)")
