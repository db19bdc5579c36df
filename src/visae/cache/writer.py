"""Building an activation cache: :func:`build_cache`, the entry point of ``visae cache``.

Protocol (docs/cache-protocol.md): shard ``k`` holds the readable images among source indices
``k·S … (k+1)·S − 1`` (``S`` = ``shard_images``). A shard is committed when the journal
``progress.json`` (rewritten atomically after the shard file is in place) lists it, together with its
labels, ids, skipped images and the running statistics. A rerun starts at the first shard not listed, so
every image is stored exactly once; batches never cross a shard boundary, so a resumed build is bitwise
equal to an uninterrupted one. ``manifest.json`` is written last; the journal stays, so a rerun on a
damaged complete cache rebuilds exactly what was lost (:mod:`visae.cache.repair`).

The parts: :mod:`visae.cache.naming` (content key, folder name, backbone/source resolution),
:mod:`visae.cache.lock` (one writer per folder), :mod:`visae.cache.build` (forward passes, shards,
journal), :mod:`visae.cache.repair` (what a rerun checks and rebuilds).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from visae.backbones.base import Backbone
from visae.cache.build import CacheBuild
from visae.cache.config import CacheConfig
from visae.cache.lock import writer_lock
from visae.cache.naming import cache_dir_for, cache_key, describe_preprocessing, resolve_inputs
from visae.cache.positions import check_tokens_per_image
from visae.cache.repair import find_damage, repair
from visae.config import build_config
from visae.datasets.base import ImageSource
from visae.errors import ConfigError
from visae.io import check_output_dir, remove_leftover_tmp

__all__ = ["build_cache", "cache_dir_for", "cache_key", "describe_preprocessing"]

_lock = writer_lock  # the name older code imports
log = logging.getLogger(__name__)


def _say(cfg: CacheConfig, msg: str) -> None:
    if cfg.progress:
        log.info(msg)


def build_cache(backbone: Backbone | str, source: ImageSource | str, layer: int, out_dir: Path | str,
                config: CacheConfig | None = None, **kwargs: Any) -> Path:
    """Cache the patch tokens of ``layer`` of ``backbone`` over ``source`` under ``out_dir``; return the
    folder.

    ``backbone`` is a registry/timm name or a :class:`Backbone`; ``source`` a spec or an
    :class:`ImageSource`. Other settings come from ``config`` or keyword arguments (fields of
    :class:`CacheConfig`). An existing complete cache is returned at once (after repairing any lost or
    damaged file); a partial one is resumed.
    """
    if config is not None and kwargs:
        raise ConfigError("build_cache: pass either config=… or keyword settings, not both")
    base = dict(config.to_dict() if config is not None else kwargs)
    base.update(backbone=backbone if isinstance(backbone, str) else backbone.name,
                source=source if isinstance(source, str) else source.spec, layer=layer, out=str(out_dir))
    cfg = build_config(CacheConfig, base, source="build_cache")
    check_output_dir(out_dir)
    bb, src = resolve_inputs(backbone, source, cfg)
    bb.check_layer(layer)
    check_tokens_per_image(cfg.tokens_per_image, bb.layout.n_patches)
    folder = cache_dir_for(Path(out_dir), bb, src, layer, cfg.keep_prefix, cfg.tokens_per_image,
                           cfg.position_seed)
    if folder.is_dir():
        damage = find_damage(CacheBuild(bb, src, layer, folder, cfg), cfg.verify)
        read_only = not os.access(folder, os.W_OK)
        if damage is not None and (not damage or (read_only and not damage.files and not damage.shards)):
            # (a read-only cache written before the journal: left as it is)
            _say(cfg, f"cache exists: {folder}")
            return folder
    folder.mkdir(parents=True, exist_ok=True)
    with writer_lock(folder):
        remove_leftover_tmp(folder)  # partial files of a killed run: never read, only reclaimed
        job = CacheBuild(bb, src, layer, folder, cfg)  # again: another writer may have finished meanwhile
        damage = find_damage(job, cfg.verify)
        if damage is None:
            job.run()
        elif damage:
            _say(cfg, f"cache {folder}: rebuilding {damage.describe(damage.journal['shards'])}")
            repair(job, damage)
    return folder
