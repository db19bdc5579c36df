"""SAE checkpoints: ours (``model.safetensors`` + ``config.yaml``), and the entry point that also reads
other libraries' layouts (the authors' release, SAELens, saev) through :mod:`visae.sae.formats`.

Weights are never unpickled as arbitrary objects: safetensors, or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from safetensors.torch import save_file

from visae import __version__
from visae.errors import CheckpointError, ConfigError
from visae.io import atomic_write_text, atomic_write_with
from visae.sae.base import SAE
from visae.sae.formats.common import build_sae, load_safetensors, read_yaml_mapping
from visae.sae.registry import SAE_FAMILIES, canonical_family

if TYPE_CHECKING:
    from visae.sae.hub import SAERef

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


@dataclass(frozen=True)
class ResolvedSAE:
    """An SAE argument made concrete: the model, the id results record for it, where its files came from."""

    model: SAE
    sae_id: str
    """The path or hub reference as given, or the model's :func:`sae_fingerprint`."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """Repo, subfolder, commit and file hashes (only with ``with_provenance``; empty for a model)."""


def resolve_sae(sae: SAE | Path | str, with_provenance: bool = False) -> ResolvedSAE:
    """Load a checkpoint reference (path or ``repo[:subfolder][@revision]``), or take a model as it is."""
    if not isinstance(sae, (str, Path)):
        check_finite(sae, f"SAE {type(sae).__name__}")
        return ResolvedSAE(sae, sae_fingerprint(sae))
    if with_provenance:
        model, provenance = load_sae_with_provenance(sae)
        return ResolvedSAE(model, str(sae), provenance)
    return ResolvedSAE(load_sae(sae), str(sae))


def check_finite(sae: SAE, where: str | Path) -> None:
    """CheckpointError naming the first tensor (weights, thresholds, normalization statistics) that holds NaN
    or ±Inf, or a normalization std that is not positive: such an SAE evaluates to silently wrong numbers."""
    for name, t in sae.state_dict().items():
        if not t.is_floating_point():
            continue
        bad = ~torch.isfinite(t.detach())
        if bool(bad.any()):
            n, total = int(bad.sum()), t.numel()
            kinds = "/".join(k for k, m in (("NaN", torch.isnan(t)), ("Inf", torch.isinf(t)))
                             if bool(m.any()))
            raise CheckpointError(f"{where}: tensor {name!r} holds {n} of {total} non-finite value(s) "
                                  f"({kinds}); the checkpoint is damaged or its training diverged: "
                                  "retrain it, or load another checkpoint")
    std = float(sae.act_std)
    if not std > 0:
        raise CheckpointError(f"{where}: normalization std act_std = {std} is not positive; the training "
                              "cache's statistics are broken: retrain the SAE on a cache whose activations "
                              "vary")


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
                                  f"{tuple(own[name].shape)} for {sae.family} d_in={sae.d_in} "
                                  f"d_sae={sae.d_sae}")
    sae.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def _load_ours(dir_path: Path) -> SAE:
    cfg_path = dir_path / CONFIG_FILE
    cfg = read_yaml_mapping(cfg_path)
    for key in ("family", "d_in", "d_sae"):
        if key not in cfg:
            raise CheckpointError(f"{cfg_path}: missing field {key!r}")
    try:
        family = canonical_family(str(cfg["family"]))
    except ConfigError as e:
        raise CheckpointError(f"{cfg_path}: field 'family': {e}") from e
    sae = build_sae(cfg_path, family, cfg["d_in"], cfg["d_sae"], cfg.get("k"), dict(cfg.get("hparams") or {}))
    state = load_safetensors(dir_path / WEIGHTS_FILE)
    _load_state(dir_path / WEIGHTS_FILE, sae, state)
    scalar = getattr(sae, "threshold", None)
    given = cfg.get("threshold")
    if isinstance(scalar, torch.Tensor) and scalar.ndim == 0 and isinstance(given, int | float):
        stored = float(scalar)  # BatchTopK's and Matryoshka's calibrated threshold
        if not math.isclose(stored, float(cfg["threshold"]), rel_tol=1e-5, abs_tol=1e-7):
            raise CheckpointError(f"{cfg_path}: field 'threshold' = {cfg['threshold']} disagrees with the "
                                  f"weights' threshold buffer {stored}; the files are from different runs")
    return sae


# --- entry point ------------------------------------------------------------------------------------------
def load_sae(path_or_hub_id: Path | str, subfolder: str | None = None,
             device: str | torch.device | None = None,
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
    """Ours first (a folder with both files, or its weights file), then the registered foreign formats; every
    tensor of the result must be finite (:func:`check_finite`)."""
    sae = _dispatch_format(path)
    check_finite(sae, path)
    return sae


def _dispatch_format(path: Path) -> SAE:
    if path.is_file() and path.name == WEIGHTS_FILE:
        return _load_ours(path.parent)
    if path.is_dir() and (path / WEIGHTS_FILE).is_file() and (path / CONFIG_FILE).is_file():
        return _load_ours(path)
    from visae.sae.formats import CHECKPOINT_FORMATS, detect_format

    found = detect_format(path)
    if found is not None:
        fmt, target = found
        return fmt.load(target)
    if path.is_file():
        raise CheckpointError(f"{path}: unknown checkpoint file (expected a folder, {WEIGHTS_FILE} "
                              "or sae.pt)")
    looked_for = [f"{WEIGHTS_FILE}+{CONFIG_FILE}", *("+".join(f.files) for f in CHECKPOINT_FORMATS.values())]
    from visae.sae.hub import describe_grid

    grid = describe_grid(path)
    if grid:
        raise CheckpointError(f"{path}: no SAE checkpoint in the folder itself; it is {grid}")
    raise CheckpointError(f"{path}: no SAE checkpoint found (looked for "
                          f"{', '.join(dict.fromkeys(looked_for))})")


def load_sae_with_provenance(ref: SAERef | str | Path, subfolder: str | None = None,
                             revision: str | None = None,
                             device: str | None = None) -> tuple[SAE, dict[str, Any]]:
    """``(SAE, provenance)``: :func:`load_sae` plus where the files came from and their hashes
    (:func:`visae.sae.hub.locate_sae`)."""
    from visae.sae.hub import locate_sae, read_reference

    located = locate_sae(ref, subfolder, revision)
    sae = load_sae(located.path, device=device)
    pointer = read_reference(located.path) if located.path.is_dir() else None
    if pointer is not None:  # a study's reference folder: the provenance of what it points at
        return sae, {**pointer.get("provenance", {}), "reference": str(located.path)}
    return sae, located.provenance


__all__ = ["SAE_FAMILIES", "ResolvedSAE", "check_finite", "load_sae", "load_sae_with_provenance",
           "resolve_sae",
           "sae_config",
           "sae_fingerprint", "save_sae"]
