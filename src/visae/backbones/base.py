"""The Backbone interface every registered model implements."""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image

from visae.backbones.layout import TokenLayout


class Backbone(ABC):
    """A frozen ViT with a residual-stream tap after any block and a pooled image embedding."""

    name: str
    """Registry name (e.g. ``dinov2-b14``) or timm name."""
    weights_id: str
    """What identifies the weights for cache hashing: a timm pretrained tag or a file's sha256."""
    layout: TokenLayout
    """Token layout at the input resolution this backbone runs at."""
    d_model: int
    """Residual-stream width D."""
    n_blocks: int
    """Number of transformer blocks; valid layers are 0 … n_blocks-1."""
    embedding_kind: str
    """What :meth:`embed` returns, in words (e.g. "CLS token after the final LayerNorm")."""
    device: torch.device
    control: str | None = None
    """What a control backbone controls for, in words (e.g. the spatial null); None for a real backbone."""

    @property
    @abstractmethod
    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """The backbone's own pretrained preprocessing: an RGB PIL image to a float tensor [3, H, W]."""

    @abstractmethod
    def block_outputs(self, pixels_bchw: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Residual stream after each requested block (0-based): ``{layer: [B, n_tokens, D]}``."""

    @abstractmethod
    def embed(self, pixels_bchw: torch.Tensor) -> torch.Tensor:
        """Pooled image representation ``[B, D_embed]`` (used as the M5 evaluator embedding)."""

    def preprocessing_spec(self) -> dict[str, Any]:
        """JSON-compatible description of :attr:`transform` (part of an activation cache's hash).

        Subclasses return their exact settings (size, crop, interpolation, mean, std).
        """
        return {"transform": repr(self.transform)}

    def patch_tokens(self, pixels_bchw: torch.Tensor, layer: int) -> torch.Tensor:
        """Patch tokens only, row-major over the grid: ``[B, P, D]``."""
        self.check_layer(layer)
        tokens_btd = self.block_outputs(pixels_bchw, [layer])[layer]
        return tokens_btd[:, self.layout.n_prefix :, :]

    def check_layer(self, layer: int) -> None:
        """Raise a clear error for a layer outside 0 … n_blocks-1."""
        if not 0 <= layer < self.n_blocks:
            from visae.errors import ConfigError

            raise ConfigError(f"layer: {self.name} has blocks 0..{self.n_blocks - 1}, got {layer}")


def preprocessing_of(backbone: Backbone) -> dict[str, Any]:
    """``backbone.preprocessing_spec()`` as JSON values, object addresses (``<function f at 0x7f…>``) removed,
    so that the cache and embedding-store hashes built from it are the same in every process."""
    text = json.dumps(backbone.preprocessing_spec(), sort_keys=True, default=str)
    loaded: dict[str, Any] = json.loads(re.sub(r" at 0x[0-9a-fA-F]+", "", text))
    return loaded
