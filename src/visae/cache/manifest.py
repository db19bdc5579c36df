"""The cache manifest: the commit record of a complete activation cache (docs/cache-protocol.md)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class ShardInfo(BaseModel):
    """One shard file of a cache."""

    model_config = ConfigDict(extra="forbid")

    file: str = Field(description="file name inside the cache folder, e.g. shard_00000.npy")
    n_images: int = Field(description="images (rows) in this shard")
    sha256: str = Field(description="hex sha256 of the file's bytes")
    prefix_file: str | None = Field(None, description="prefix-token file of the same images, when kept")
    prefix_sha256: str | None = Field(None, description="hex sha256 of prefix_file")
    positions_file: str | None = Field(None, description="patch positions (int16 [n, T]) of a training cache "
                                                          "with tokens_per_image")
    positions_sha256: str | None = Field(None, description="hex sha256 of positions_file")


class CacheManifest(BaseModel):
    """Everything a reader needs to know about a cache; written last."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = Field(SCHEMA_VERSION, description="format version; a newer one needs a newer visae")
    hash: str = Field(description="content hash: backbone, weights, layer, source, preprocessing, dtype")
    backbone: str = Field(description="registry or timm name of the backbone")
    weights_id: str = Field(description="identifies the weights (pretrained tag or file sha256)")
    control: str | None = Field(None,
                                description="what a control backbone controls for (shuffled: the spatial "
                                                  "null; random weights); None for a real backbone")
    layer: int = Field(description="0-based block whose output (residual stream) was tapped")
    source: dict[str, Any] = Field(description="the image source's fingerprint (spec, split, n, ids hash)")
    layout: dict[str, Any] = Field(description="TokenLayout.to_dict()")
    d_model: int = Field(description="activation width D")
    n_images: int = Field(description="images stored (skipped ones excluded)")
    n_patches: int = Field(description="patch positions of the backbone's grid P")
    tokens_per_image: int | None = Field(None, description="training caches: patch positions kept per image "
                                                           "(a seeded draw, stored in positions_*.npy); "
                                                           "None: all P")
    position_seed: int | None = Field(None, description="seed of the tokens_per_image draw")
    dtype: str = Field("float16", description="storage dtype of the shards")
    class_names: list[str] = Field(description="class names indexed by label")
    shards: list[ShardInfo] = Field(description="shards in image order")
    n_skipped: int = Field(0, description="images that could not be read and have no row")
    shard_images: int | None = Field(None, description="source images per shard (shard k covers source "
                                                         "indices k·S … (k+1)·S − 1); lets a rerun rebuild a "
                                                         "lost shard")
    has_prefix: bool = Field(False, description="prefix_*.npy files hold the prefix tokens")
    preprocessing: dict[str, Any] = Field(default_factory=dict,
                                          description="image size, mean/std, interpolation")
    visae_version: str = Field("", description="library version that wrote the cache")
    created: str = Field("", description="ISO time the manifest was written")
