"""Settings of ``visae cache`` / :func:`visae.build_cache`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from visae.config import FrozenConfig
from visae.device import check_device_string


class CacheConfig(FrozenConfig):
    """What to cache (backbone, layer, images) and how (batching, sharding, bad images)."""

    backbone: str = Field("dinov2-s14-offline", description="registry or timm name of the backbone")
    source: str = Field("offline:digits", description="image source spec, e.g. folder:/data/imagenet, "
                                                      "hf:name[:split], fashion-mnist, offline:digits")
    layer: int = Field(0, ge=0, description="0-based block whose output (residual stream) is cached")
    out: Path = Field(Path("caches"),
                      description="root folder; the cache goes in a sub-folder named by its hash")
    split: Literal["train", "val", "test", "all"] = Field("train", description="split of the image source")
    max_images: int | None = Field(None, ge=1, description="keep a seeded subset of at most this many images")
    subset_seed: int = Field(42, description="seed of the --max-images subset")
    stratified: bool = Field(True, description="draw the --max-images subset stratified by class")
    batch_size: int = Field(64, ge=1, description="images per forward pass")
    device: str = Field("auto",
                        description="torch device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:1 …")
    shard_images: int = Field(256, ge=1, description="images per shard file (and per resume unit)")
    on_bad_image: Literal["skip", "fail"] = Field(
        "skip",
        description="a corrupt or unreadable image is skipped and listed in skipped.json, or is fatal")
    num_workers: int | None = Field(None, ge=0, description="image-decoding worker processes "
                                                            "(None: min(8, CPUs − 1); 0 decodes in the "
                                                            "main process)")
    keep_prefix: bool = Field(False,
                              description="also store the prefix tokens (CLS, registers) in prefix_*.npy")
    weights_path: str | None = Field(None,
                                     description="local weights file for the backbone (else its default)")
    image_size: int | None = Field(None, ge=1, description="input resolution (None: the backbone's default)")
    tokens_per_image: int | None = Field(
        None, ge=1,
        description="training caches: keep this many seeded patch positions per image (the positions "
                                "are stored; M1–M7 and the tasks refuse such a cache); None keeps "
                                "every patch")
    position_seed: int = Field(42,
                               description="seed of the tokens_per_image draw (image i uses rng([seed, i]))")
    verify: bool = Field(False,
                         description="on a rerun over a complete cache, also check every shard's sha256 "
                                            "and rebuild the ones that differ (reads the whole cache)")
    progress: bool = Field(True, description="show a tqdm progress bar with images/s")

    _device = field_validator("device")(check_device_string)
