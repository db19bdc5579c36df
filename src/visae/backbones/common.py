"""Helpers shared by the backbone implementations: device resolution, input checks, weight files."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from visae.device import pick_device
from visae.errors import CheckpointError, ConfigError, DataError


def packaged_file(module: str, relative: tuple[str, ...], backbone: str, distribution: str,
                  install_hint: str, reinstall: str) -> Path:
    """Path of ``relative`` inside the installed package ``module``, found without importing it.

    ConfigError naming ``backbone`` when the package (``distribution`` on PyPI) is missing (with
    ``install_hint``) or lacks the file (with the ``reinstall`` command).
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"backbone {backbone}: the package {distribution} is not installed; {install_hint}")
    for folder in spec.submodule_search_locations:
        path = Path(folder).joinpath(*relative)
        if path.is_file():
            return path
    raise ConfigError(f"backbone {backbone}: {module} has no {'/'.join(relative)}; reinstall it: {reinstall}")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """A ``torch.device`` from ``"auto"``/None (best available), a device string, or a device."""
    if isinstance(device, torch.device):
        return device
    return pick_device(device)


class RGBTransform:
    """Convert a PIL image to RGB, then apply ``inner`` (picklable, so DataLoader workers can use it)."""

    def __init__(self, inner: Callable[[Image.Image], torch.Tensor]) -> None:
        self.inner = inner

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """An RGB PIL image (any mode is converted) to the backbone's input tensor ``[3, H, W]``."""
        return self.inner(image if image.mode == "RGB" else image.convert("RGB"))

    def __repr__(self) -> str:
        return f"RGBTransform({self.inner!r})"


def requested_layers(layers: Sequence[int], n_blocks: int, name: str) -> list[int]:
    """Sorted unique layers, each checked to lie in ``0 … n_blocks-1`` (ConfigError otherwise)."""
    out = sorted({int(layer) for layer in layers})
    bad = [layer for layer in out if not 0 <= layer < n_blocks]
    if bad:
        raise ConfigError(f"layer: {name} has blocks 0..{n_blocks - 1}, got {bad}; pick layers in that range")
    return out


def check_pixels(pixels_bchw: torch.Tensor, image_hw: tuple[int, int], name: str) -> None:
    """Raise DataError unless ``pixels_bchw`` is ``[B, 3, H, W]`` at the backbone's input size."""
    if pixels_bchw.ndim != 4 or pixels_bchw.shape[1] != 3 or tuple(pixels_bchw.shape[-2:]) != image_hw:
        raise DataError(
            f"{name}: pixels must be [B, 3, {image_hw[0]}, {image_hw[1]}], got {list(pixels_bchw.shape)}; "
            "preprocess images with the backbone's own .transform")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file safely: safetensors, or a torch file with ``weights_only=True``.

    A torch file holding ``{"state_dict": …}`` or ``{"model": …}`` is unwrapped. Never unpickles objects.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights_path {path}: no such file; give the path of a .safetensors or .pt "
                              "state dict")
    if path.stat().st_size == 0:
        raise CheckpointError(f"weights_path {path}: the file is empty (0 bytes), e.g. an interrupted "
                              "download; download or copy it again")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"weights_path {path}: cannot read it as safetensors or a weights-only torch file ({e}); "
            "convert it to a plain state dict of tensors") from e
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"weights_path {path}: expected a dict of name → tensor, got "
                              f"{type(state).__name__}")
    return {str(k): v for k, v in state.items()}
