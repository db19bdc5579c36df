"""A study plugin for tests and quick trials: registers tiny random ViT backbones (``tiny-vit-a``,
``tiny-vit-b``: 32×32 input, 4×4 patch grid, width 32) that pair with each other as M5 evaluators.

Use it from a study YAML with ``plugins: [visae.study.testing]``. :data:`TINY_STUDY` is a whole study on
them (the one the end-to-end tests and ``scripts/check_study_equal.py`` run: a few minutes on a CPU).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from visae.backbones.base import Backbone
from visae.backbones.registry import register_backbone

TINY_BACKBONES = {"tiny-vit-a": (0, "tiny-vit-b"), "tiny-vit-b": (1, "tiny-vit-a")}

TINY_STUDY: dict[str, Any] = {
    "name": "tiny", "out_dir": "out", "device": "cpu", "plugins": ["visae.study.testing"],
    "backbones": [{"name": "tiny-vit-a"}, {"name": "tiny-vit-b"}],
    "layers": [1],
    "saes": [{"name": "main", "family": "batchtopk", "expansions": [2], "ks": [4, 8]},
             {"name": "layer-ablation", "family": "batchtopk", "expansions": [2], "ks": [4], "layers": [0],
              "backbones": ["tiny-vit-a"]}],
    "data": {"train": {"spec": "offline:digits", "split": "train", "max_images": 80},
             "eval": {"spec": "offline:digits", "split": "test", "max_images": 60},
             "ood": {"faces": {"spec": "offline:faces", "split": "all", "max_images": 40}}},
    "cache": {"batch_size": 32, "num_workers": 0},
    "train": {"batch_size": 64, "heldout_batches": 2, "log_every": 5},
    "metrics": ["m1", "m2", "m3", "m4", "m5", "m6"],
    "metric_configs": {"m1": {"min_valid_images": 5}, "m5": {"n_baseline_groups": 50}},
    "tasks": [{"name": "retrieval", "kind": "retrieval"}],
    "browser_features": 4,
}
"""A whole study on the tiny backbones (as a YAML mapping; ``out_dir`` relative to the YAML file)."""


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
