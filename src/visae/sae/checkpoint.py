"""SAE checkpoints: ours (``model.safetensors`` + ``config.yaml``) and readers for other layouts.

Readers (all produce one of our families, numerically identical at inference):

* the paper authors' release — one Hub repo per backbone, one subfolder per configuration
  (``batchtopk_16x_k128``) with ``sae.pt`` (an overcomplete ``BatchTopKSAE`` state dict plus
  ``_running_threshold``) and ``config.yaml`` (``threshold``). Overcomplete's ``top_k`` counts the whole
  batch, so ``k = top_k / batch_size`` when both are given, else ``k`` comes from the folder name;
* SAELens — ``sae_weights.safetensors`` + ``cfg.json``;
* saev — ``sae.pt``: one JSON header line, then a ``torch.save``'d state dict.

Weights are never unpickled as arbitrary objects: safetensors, or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import pickle
import re
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from visae import __version__
from visae.errors import CheckpointError, ConfigError
from visae.io import atomic_write_text, atomic_write_with
from visae.sae.base import SAE
from visae.sae.registry import SAE_FAMILIES, canonical_family, make_sae

FORMAT = "visae-sae"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"


# --- ours --------------------------------------------------------------------------------------------
def sae_config(sae: SAE, provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``config.yaml`` mapping of an SAE."""
    extra_fn = getattr(type(sae), "config_extra", None)
    extra: dict[str, Any] = extra_fn(sae) if callable(extra_fn) else {}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "family": sae.family,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "expansion": sae.d_sae / sae.d_in,
        "k": sae.k,
        "hparams": dict(sae.hparams),
        **extra,
        "normalization": {"mean": [float(v) for v in sae.act_mean.detach().cpu()],
                          "std": float(sae.act_std)},
        "provenance": {"library": "visae", "library_version": __version__, **(provenance or {})},
    }


def save_sae(sae: SAE, dir: Path | str, provenance: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.yaml`` into ``dir`` (atomically); return ``dir``."""
    dir_path = Path(dir)
    dir_path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in sae.state_dict().items()}
    atomic_write_with(dir_path / WEIGHTS_FILE,
                      lambda p: save_file(state, str(p), metadata={"format": FORMAT, "family": sae.family}))
    atomic_write_text(dir_path / CONFIG_FILE, yaml.safe_dump(sae_config(sae, provenance), sort_keys=False))
    return dir_path


def sae_fingerprint(sae: SAE) -> str:
    """Short content hash of an SAE: family, shapes, hyper-parameters and every tensor's bytes."""
    h = hashlib.sha256()
    head = {"family": sae.family, "d_in": sae.d_in, "d_sae": sae.d_sae, "k": sae.k, "hparams": sae.hparams}
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    for name, t in sorted(sae.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def resolve_sae(sae: SAE | Path | str) -> tuple[SAE, str]:
    """An SAE and the id results record for it: a loaded checkpoint and its path, or a model and its
    :func:`sae_fingerprint`."""
    if isinstance(sae, (str, Path)):
        return load_sae(sae), str(sae)
    return sae, sae_fingerprint(sae)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise CheckpointError(f"{path}: cannot read YAML: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a mapping")
    return data


def _build(path: Path, family: str, d_in: Any, d_sae: Any, k: Any, hparams: dict[str, Any]) -> SAE:
    try:
        return make_sae(family, int(d_in), d_sae=int(d_sae), k=None if k is None else int(k), **hparams)
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot build the SAE it describes: {e}") from e


def _load_state(path: Path, sae: SAE, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into ``sae``; CheckpointError names the file and the first bad tensor."""
    own = sae.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{path}: tensors do not match the {sae.family} SAE: "
                              f"missing {missing or 'none'}, unexpected {unexpected or 'none'}")
    for name, t in state.items():
        if tuple(t.shape) != tuple(own[name].shape):
            raise CheckpointError(f"{path}: tensor {name!r} has shape {tuple(t.shape)}, expected "
                                  f"{tuple(own[name].shape)} for {sae.family} d_in={sae.d_in} d_sae={sae.d_sae}")
    sae.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def _load_ours(dir_path: Path) -> SAE:
    cfg_path = dir_path / CONFIG_FILE
    cfg = _read_yaml(cfg_path)
    for field in ("family", "d_in", "d_sae"):
        if field not in cfg:
            raise CheckpointError(f"{cfg_path}: missing field {field!r}")
    try:
        family = canonical_family(str(cfg["family"]))
    except ConfigError as e:
        raise CheckpointError(f"{cfg_path}: field 'family': {e}") from e
    sae = _build(cfg_path, family, cfg["d_in"], cfg["d_sae"], cfg.get("k"), dict(cfg.get("hparams") or {}))
    try:
        state = load_file(str(dir_path / WEIGHTS_FILE))
    except Exception as e:
        raise CheckpointError(f"{dir_path / WEIGHTS_FILE}: not a readable safetensors file: {e}") from e
    _load_state(dir_path / WEIGHTS_FILE, sae, state)
    if family == "batchtopk" and isinstance(cfg.get("threshold"), int | float):
        stored = float(sae.threshold)  # type: ignore[arg-type]
        if not math.isclose(stored, float(cfg["threshold"]), rel_tol=1e-5, abs_tol=1e-7):
            raise CheckpointError(f"{cfg_path}: field 'threshold' = {cfg['threshold']} disagrees with the "
                                  f"weights' threshold buffer {stored}; the files are from different runs")
    return sae


# --- safe torch.load -----------------------------------------------------------------------------------
def _safe_torch_load(data: bytes | Path, where: Path) -> Any:
    try:
        src: Any = io.BytesIO(data) if isinstance(data, bytes) else str(data)
        return torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{where}: refused to unpickle: the file holds objects other than tensors "
                              f"(loading it could run code). Only plain state dicts are accepted. ({e})") from e
    except Exception as e:
        raise CheckpointError(f"{where}: not a readable torch state dict: {e}") from e


def _state_dict_of(obj: Any, where: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "sae"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise CheckpointError(f"{where}: expected a state dict of tensors, got {type(obj).__name__}")


def _get(state: dict[str, torch.Tensor], names: tuple[str, ...], where: Path) -> torch.Tensor:
    for n in names:
        for key in (n, f"module.{n}", f"sae.{n}"):
            if key in state:
                return state[key]
    raise CheckpointError(f"{where}: missing tensor {names[0]!r} (found {sorted(state)[:8]})")


# --- the paper authors' release (overcomplete BatchTopKSAE) ---------------------------------------------
def _load_overcomplete(pt_path: Path) -> SAE:
    cfg_path = pt_path.with_name("config.yaml")
    cfg = _read_yaml(cfg_path) if cfg_path.is_file() else {}
    state = _state_dict_of(_safe_torch_load(pt_path, pt_path), pt_path)
    w_fd = _get(state, ("encoder.final_block.0.weight",), pt_path).float()
    b_f = _get(state, ("encoder.final_block.0.bias",), pt_path).float()
    dic_fd = _get(state, ("dictionary._weights",), pt_path).float()
    mult = state.get("dictionary.multiplier", torch.tensor(0.0)).float()
    d_sae, d_in = dic_fd.shape
    if w_fd.shape != (d_sae, d_in) or b_f.shape != (d_sae,):
        raise CheckpointError(f"{pt_path}: encoder weight {tuple(w_fd.shape)} / bias {tuple(b_f.shape)} do not "
                              f"match the dictionary {tuple(dic_fd.shape)}")
    k = _authors_k(pt_path, cfg, d_sae)
    threshold = cfg.get("threshold")
    if "_running_threshold" in state:
        threshold = float(state["_running_threshold"].reshape(-1)[0])
    if threshold is None:
        raise CheckpointError(f"{pt_path}: no inference threshold (neither '_running_threshold' in the state "
                              f"dict nor 'threshold' in {cfg_path.name}); BatchTopK inference needs one")
    sae = _build(pt_path, "batchtopk", d_in, d_sae, k, {})
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


# --- SAELens ----------------------------------------------------------------------------------------------
_SAELENS_FAMILY = {"standard": "relu", "relu": "relu", "jumprelu": "jumprelu", "topk": "topk",
                   "batchtopk": "batchtopk"}


def _load_saelens(dir_path: Path) -> SAE:
    cfg_path = dir_path / "cfg.json"
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
    w_path = dir_path / "sae_weights.safetensors"
    try:
        state = load_file(str(w_path))
    except Exception as e:
        raise CheckpointError(f"{w_path}: not a readable safetensors file: {e}") from e
    W_enc, W_dec = _get(state, ("W_enc",), w_path).float(), _get(state, ("W_dec",), w_path).float()
    b_enc, b_dec = _get(state, ("b_enc",), w_path).float(), _get(state, ("b_dec",), w_path).float()
    d_in, d_sae = W_enc.shape
    if "d_in" in cfg and int(cfg["d_in"]) != d_in:
        raise CheckpointError(f"{w_path}: W_enc has d_in={d_in} but {cfg_path.name} says d_in={cfg['d_in']}")
    if W_dec.shape != (d_sae, d_in):
        raise CheckpointError(f"{w_path}: W_dec has shape {tuple(W_dec.shape)}, expected {(d_sae, d_in)}")
    family = _SAELENS_FAMILY[arch]
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    sae = _build(w_path, family, d_in, d_sae, k, {})
    if not cfg.get("apply_b_dec_to_input", True):
        b_enc = b_enc + b_dec @ W_enc  # their encoder sees x, ours sees x − b_dec: fold b_dec in exactly
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.b_enc.copy_(b_enc)
        sae.W_dec.copy_(W_dec)
        sae.b_dec.copy_(b_dec)
        if family == "jumprelu":
            sae.threshold.copy_(_get(state, ("threshold",), w_path).float())  # type: ignore[operator]
        if family == "batchtopk":
            t = state.get("threshold", state.get("topk_threshold"))
            if t is None:
                raise CheckpointError(f"{w_path}: batchtopk SAE without a 'threshold' tensor")
            sae.threshold.fill_(float(t.reshape(-1)[0]))  # type: ignore[operator]
    sae.hparams.update(source="saelens", normalization="identity (raw activations)")
    return sae


# --- saev --------------------------------------------------------------------------------------------------
def _load_saev(pt_path: Path) -> SAE:
    raw = pt_path.read_bytes()
    newline = raw.find(b"\n")
    try:
        header = json.loads(raw[:newline].decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{pt_path}: the first line is not a saev JSON header: {e}") from e
    cfg = header.get("cfg", header) if isinstance(header, dict) else {}
    state = _state_dict_of(_safe_torch_load(raw[newline + 1:], pt_path), pt_path)
    W_enc, W_dec = _get(state, ("W_enc",), pt_path).float(), _get(state, ("W_dec",), pt_path).float()
    b_enc, b_dec = _get(state, ("b_enc",), pt_path).float(), _get(state, ("b_dec",), pt_path).float()
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
    sae = _build(pt_path, family, d_in, d_sae, params.get("top_k"), {})
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.b_enc.copy_(b_enc + b_dec @ W_enc)  # saev encodes x, not x − b_dec
        sae.W_dec.copy_(W_dec)
        sae.b_dec.copy_(b_dec)
    sae.hparams.update(source=f"saev schema {header.get('schema', 0)}", normalization="identity (raw activations)")
    return sae


# --- entry point ------------------------------------------------------------------------------------------
def load_sae(path_or_hub_id: Path | str, subfolder: str | None = None, device: str | torch.device | None = None,
             revision: str | None = None) -> SAE:
    """Load an SAE from a folder/file (ours, the authors' release, SAELens, saev) or a Hub repo.

    Hub repos: ``"org/name"`` with ``subfolder``/``revision``, or ``"org/name:subfolder@revision"``; see
    :func:`visae.sae.hub.parse_sae_ref`. Offline (``HF_HUB_OFFLINE=1``) the local hub cache is read.
    """
    from visae.sae.hub import locate_sae

    sae = _dispatch(locate_sae(path_or_hub_id, subfolder=subfolder, revision=revision, hash_files=False).path)
    sae.eval()
    if device is not None:
        sae.to(torch.device(device))
    return sae


def _dispatch(path: Path) -> SAE:
    if path.is_file():
        if path.name == WEIGHTS_FILE:
            return _load_ours(path.parent)
        if path.suffix == ".pt":
            return _load_pt(path)
        raise CheckpointError(f"{path}: unknown checkpoint file (expected a folder, {WEIGHTS_FILE} or sae.pt)")
    if (path / WEIGHTS_FILE).is_file() and (path / CONFIG_FILE).is_file():
        return _load_ours(path)
    if (path / "sae_weights.safetensors").is_file() and (path / "cfg.json").is_file():
        return _load_saelens(path)
    if (path / "sae.pt").is_file():
        return _load_pt(path / "sae.pt")
    raise CheckpointError(f"{path}: no SAE checkpoint found (looked for {WEIGHTS_FILE}+{CONFIG_FILE}, "
                          f"sae_weights.safetensors+cfg.json, sae.pt)")


def _load_pt(pt_path: Path) -> SAE:
    with open(pt_path, "rb") as f:
        first = f.read(1)
    return _load_saev(pt_path) if first == b"{" else _load_overcomplete(pt_path)


__all__ = ["SAE_FAMILIES", "load_sae", "resolve_sae", "sae_config", "sae_fingerprint", "save_sae"]
