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

    def final_norm(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The backbone's final normalization of tokens (None: it has none); used by
        :meth:`patch_mean_embed`."""
        return None

    def patch_mean_embed(self, pixels_bchw: torch.Tensor, layer: int) -> torch.Tensor:
        """Mean over patches of block ``layer``'s patch tokens after the final norm, ``[B, D]``: the M5
        evaluator embedding of the authors' ``visaebench`` (``get_intermediate_layers(norm=True)``, then a
        patch mean). A layer past the last block is clamped to it."""
        layer = min(int(layer), self.n_blocks - 1)
        with torch.inference_mode():
            tokens_bpd = self.patch_tokens(pixels_bchw, layer)
            norm = self.final_norm()
            if norm is not None:
                tokens_bpd = norm(tokens_bpd)
            return tokens_bpd.mean(dim=1)

    def patch_mean_kind(self, layer: int) -> str:
        """What :meth:`patch_mean_embed` returns, in words."""
        layer = min(int(layer), self.n_blocks - 1)
        normed = " after the final norm" if self.final_norm() is not None else ""
        return f"mean of block-{layer} patch tokens{normed}"

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
