"""What the checkpoint readers share: safe loading (safetensors, weights-only torch), tensor lookup,
building."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file

from visae.errors import CheckpointError, ConfigError
from visae.sae.base import SAE
from visae.sae.registry import make_sae


def read_json_mapping(path: Path) -> dict[str, Any]:
    """The object in a JSON file (a foreign library's config); CheckpointError naming the file otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read JSON: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """The mapping in a YAML file; CheckpointError naming the file otherwise."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise CheckpointError(f"{path}: cannot read YAML: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a mapping")
    return data


def build_sae(path: Path, family: str, d_in: Any, d_sae: Any, k: Any, hparams: dict[str, Any]) -> SAE:
    """A fresh SAE of ``family`` with the given sizes; CheckpointError naming ``path`` when it cannot be
    built."""
    try:
        return make_sae(family, int(d_in), d_sae=int(d_sae), k=None if k is None else int(k), **hparams)
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot build the SAE it describes: {e}") from e


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; CheckpointError naming the file when it cannot be read."""
    if path.is_file() and path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes), e.g. an interrupted copy or download; "
                              "copy the checkpoint again or retrain it")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types and OSError
        raise CheckpointError(f"{path}: not a readable safetensors file: {e}") from e


def safe_torch_load(data: bytes | Path, where: Path) -> Any:
    """``torch.load(weights_only=True)`` of a file or bytes; refuses pickled objects, naming ``where``."""
    try:
        src: Any = io.BytesIO(data) if isinstance(data, bytes) else str(data)
        return torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{where}: refused to unpickle: the file holds objects other than tensors "
                              "(loading it could run code). Only plain state dicts are accepted. "
                              f"({e})") from e
    except Exception as e:
        raise CheckpointError(f"{where}: not a readable torch state dict: {e}") from e


def state_dict_of(obj: Any, where: Path) -> dict[str, torch.Tensor]:
    """The tensors of a loaded state dict (also under ``state_dict``/``model``/``sae`` keys)."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "sae"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise CheckpointError(f"{where}: expected a state dict of tensors, got {type(obj).__name__}")


def get_tensor(state: dict[str, torch.Tensor], names: tuple[str, ...], where: Path) -> torch.Tensor:
    """The first of ``names`` in ``state`` (also with a ``module.``/``sae.`` prefix); CheckpointError if
    none."""
    for n in names:
        for key in (n, f"module.{n}", f"sae.{n}"):
            if key in state:
                return state[key]
    raise CheckpointError(f"{where}: missing tensor {names[0]!r} (found {sorted(state)[:8]})")
