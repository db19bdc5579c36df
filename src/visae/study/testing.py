"""A study plugin for tests and quick trials: registers tiny random ViT backbones (``tiny-vit-a``,
``tiny-vit-b``: 32×32 input, 4×4 patch grid, width 32) that pair with each other as M5 evaluators.

Use it from a study YAML with ``plugins: [visae.study.testing]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from visae.backbones.base import Backbone
from visae.backbones.registry import register_backbone

TINY_BACKBONES = {"tiny-vit-a": (0, "tiny-vit-b"), "tiny-vit-b": (1, "tiny-vit-a")}


def _factory(name: str, seed: int) -> Any:
    def build(*, device: str | torch.device | None = "cpu", weights_path: str | Path | None = None,
              image_size: int | None = None, pretrained: bool = False,
              model_kwargs: Mapping[str, Any] | None = None) -> Backbone:
        from visae.cache.testing import TinyViTBackbone

        bb = TinyViTBackbone(seed=seed, device=str(device or "cpu"), img_size=image_size or 32)
        bb.name = name
        return bb

    return build


for _name, (_seed, _evaluator) in TINY_BACKBONES.items():
    register_backbone(_name, _factory(_name, _seed), family="tiny-random", evaluator=_evaluator,
                      description="tiny random timm ViT for tests (4×4 patch grid, width 32)", overwrite=True)
