"""The synthetic model seen through visae's two inputs: a :class:`SynthSource` (images that are scene
indices, labelled by class) and a :class:`SynthBackbone` (turns those images into patch tokens). With them
the ordinary cache writer (:func:`visae.cache.writer.build_cache`) builds the cache: content-addressed,
resumable, the same files as any other cache.

An image is a ``grid × grid`` RGB picture whose first pixel carries the scene index (24 bits) and whose
second pixel's red channel carries the split; the backbone reads them back and draws that scene's tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from visae.backbones.base import Backbone
from visae.backbones.layout import TokenLayout
from visae.datasets.base import ImageSource
from visae.errors import DataError
from visae.io import hash_json
from visae.synth.config import SynthConfig
from visae.synth.model import SPLIT_CODES, SyntheticModel

MAX_IMAGES = 1 << 24
_SPLITS = {code: name for name, code in SPLIT_CODES.items()}


def source_spec(cfg: SynthConfig) -> str:
    """The spec recorded in the cache manifest: ``synth:<preset>#<model hash>``."""
    return f"synth:{cfg.preset}#{hash_json(cfg.model_key())}"


class SynthSource(ImageSource):
    """``n_images`` scene indices of one split of a synthetic model, labelled by their class."""

    def __init__(self, model: SyntheticModel) -> None:
        cfg = model.cfg
        if cfg.n_images > MAX_IMAGES:
            raise DataError(f"synth: n_images {cfg.n_images} exceeds {MAX_IMAGES}")
        self.model = model
        self.spec = source_spec(cfg)
        self.split = cfg.split
        self.class_names = list(model.class_names)

    def __len__(self) -> int:
        return self.model.cfg.n_images

    def load(self, index: int) -> Image.Image:
        """A ``grid × grid`` picture carrying the scene index and split in its first two pixels."""
        g = self.model.cfg.grid
        arr = np.zeros((g, g, 3), dtype=np.uint8)
        arr[0, 0] = [(index >> 16) & 255, (index >> 8) & 255, index & 255]
        arr[0, 1, 0] = SPLIT_CODES[self.split]
        return Image.fromarray(arr, "RGB")

    def label(self, index: int) -> int:
        """Class of scene ``index``."""
        return self.model.label(index)

    def image_id(self, index: int) -> str:
        """``<split>-<index>``."""
        return f"{self.split}-{index:08d}"

    @property
    def labels(self) -> np.ndarray:
        """All labels as an int64 array."""
        return np.arange(len(self), dtype=np.int64) % self.model.cfg.n_classes


def decode_image(pixels_chw: torch.Tensor) -> tuple[int, str]:
    """Scene index and split carried by a picture of :meth:`SynthSource.load` (as a ``[3, H, W]`` tensor)."""
    r, g, b = (int(v) for v in pixels_chw[:, 0, 0])
    return (r << 16) | (g << 8) | b, _SPLITS[int(pixels_chw[0, 0, 1])]


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.int64).copy()).permute(2, 0, 1)


class SynthBackbone(Backbone):
    """One "block" whose output is the synthetic model's tokens for the scenes the pictures name."""

    embedding_kind = "mean of the patch tokens"
    n_blocks = 1

    def __init__(self, model: SyntheticModel, device: str | torch.device = "cpu") -> None:
        cfg = model.cfg
        self.model = model
        self.name = f"synth:{cfg.preset}"
        self.weights_id = f"synth-{hash_json(cfg.model_key())}"
        self.layout = TokenLayout((), cfg.grid, cfg.grid, 1)
        self.d_model = cfg.d
        self.device = torch.device(device)

    @property
    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """The picture as an integer tensor ``[3, H, W]`` (its pixels are the scene index, not colours)."""
        return _to_tensor

    def preprocessing_spec(self) -> dict[str, Any]:
        """The model's settings: they, not a transform, decide the tokens."""
        return {"synthetic": self.model.cfg.model_key()}

    def block_outputs(self, pixels_bchw: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """The tokens ``[B, P, D]`` of the scenes the pictures carry (layer 0 only)."""
        for layer in layers:
            self.check_layer(layer)
        pixels = pixels_bchw.cpu()
        decoded = [decode_image(pixels[b]) for b in range(pixels.shape[0])]
        splits = {s for _, s in decoded}
        out = torch.cat([self.model.batch_tokens([i for i, s in decoded if s == split], split)
                         for split in sorted(splits)]) if len(splits) > 1 else \
            self.model.batch_tokens([i for i, _ in decoded], decoded[0][1] if decoded else "train")
        if len(splits) > 1:  # keep the input order
            order = [j for split in sorted(splits) for j, (_, s) in enumerate(decoded) if s == split]
            out = out[torch.argsort(torch.as_tensor(order))]
        out = out.to(self.device)
        return {layer: out for layer in layers}

    def embed(self, pixels_bchw: torch.Tensor) -> torch.Tensor:
        """Mean patch token ``[B, D]``."""
        return self.block_outputs(pixels_bchw, [0])[0].mean(dim=1)
