"""What names a cache: its content key, the folder it lives in, and the backbone and source it is built
from."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from visae.backbones.base import Backbone
from visae.cache.config import CacheConfig
from visae.cache.manifest import SCHEMA_VERSION
from visae.cache.positions import SUBSAMPLED_SCHEMA_VERSION
from visae.datasets.base import ImageSource
from visae.errors import ConfigError
from visae.io import hash_json


def _slug(text: str, max_len: int = 40) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return s[-max_len:].strip("-.") or "x"


def describe_preprocessing(backbone: Backbone) -> dict[str, Any]:
    """What the backbone's transform does, for the cache hash (``Backbone.preprocessing_spec()``)."""
    from visae.backbones.base import preprocessing_of

    return {"image_size": list(backbone.layout.image_size), **preprocessing_of(backbone)}


def cache_key(backbone: Backbone, source: ImageSource, layer: int, keep_prefix: bool,
              tokens_per_image: int | None = None, position_seed: int = 42) -> dict[str, Any]:
    """Everything that determines a cache's content; its hash names the folder."""
    key = {"backbone": backbone.name, "weights_id": backbone.weights_id, "layer": layer,
           "source": source.fingerprint(), "preprocessing": describe_preprocessing(backbone),
           "dtype": "float16", "keep_prefix": keep_prefix, "schema_version": SCHEMA_VERSION}
    if tokens_per_image is not None:  # full caches keep the key they always had
        key.update(tokens_per_image=tokens_per_image, position_seed=position_seed,
                   schema_version=SUBSAMPLED_SCHEMA_VERSION)
    return key


def cache_dir_for(out_dir: Path, backbone: Backbone, source: ImageSource, layer: int,
                  keep_prefix: bool = False, tokens_per_image: int | None = None,
                  position_seed: int = 42) -> Path:
    """``<out_dir>/<backbone>-L<layer>-<source>-<split>-<n images>[-t<T>]-<hash16>``, e.g.
    ``caches/dinov2-s14-offline-L11-fashion-mnist-train-2000-…``: readable, and unique by its hash."""
    h = hash_json(cache_key(backbone, source, layer, keep_prefix, tokens_per_image, position_seed))
    name = _slug(source.spec.split("#", 1)[0])
    tag = "" if tokens_per_image is None else f"-t{tokens_per_image}"
    split = _slug(source.split, 12)
    return Path(out_dir) / f"{_slug(backbone.name)}-L{layer}-{name}-{split}-{len(source)}{tag}-{h}"


def resolve_inputs(backbone: Backbone | str, source: ImageSource | str,
                   cfg: CacheConfig) -> tuple[Backbone, ImageSource]:
    """The backbone and image source named by strings (or given as objects), the subset applied."""
    if isinstance(backbone, str):
        from visae.backbones.registry import load_backbone

        bb = load_backbone(backbone, device=cfg.device, weights_path=cfg.weights_path,
                           image_size=cfg.image_size)
    else:
        bb = backbone
        _check_backbone_object(bb, cfg)
    if isinstance(source, str):
        from visae.datasets.registry import open_source

        src = open_source(source, split=cfg.split, max_images=cfg.max_images, seed=cfg.subset_seed,
                          stratified=cfg.stratified)
    else:
        from visae.datasets.subset import take_subset

        src = take_subset(source, cfg.max_images, seed=cfg.subset_seed, stratified=cfg.stratified)
    return bb, src


def _check_backbone_object(bb: Backbone, cfg: CacheConfig) -> None:
    """Settings that build a backbone cannot change one already built: refuse them unless they agree."""
    import torch

    from visae.device import pick_device

    problems = []
    if cfg.weights_path is not None:
        problems.append(f"weights_path={cfg.weights_path!r} (its weights are {bb.weights_id})")
    if cfg.image_size is not None and (cfg.image_size, cfg.image_size) != tuple(bb.layout.image_size):
        problems.append(f"image_size={cfg.image_size} (it runs at "
                        f"{bb.layout.image_size[0]}×{bb.layout.image_size[1]})")
    if cfg.device not in ("", "auto"):
        want, have = pick_device(cfg.device), torch.device(bb.device)
        if want.type != have.type or (want.index or 0) != (have.index or 0):
            problems.append(f"device={cfg.device!r} (it is on {have})")
    if problems:
        raise ConfigError(f"build_cache: {', '.join(problems)} cannot be applied to the Backbone object "
                          f"{bb.name!r}, which is already built; build it with load_backbone({bb.name!r}, …) "
                          "with those settings, or pass the backbone's name instead of the object")
