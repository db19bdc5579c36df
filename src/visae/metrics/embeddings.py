"""Evaluator image embeddings for M5: the ``ImageEmbedder`` interface, a backbone-backed embedder, and a
lazily filled on-disk store beside the activation cache.

An embedder maps positions in the evaluation cache to image embeddings ``[n, E]``. The store keeps one
float32 row per cache image (``<dir>/<evaluator>-<hash>.npy``) and a JSON commit record with the image ids
and which rows are filled; only the rows asked for are ever computed, and each is computed once, however
many features and SAEs share the image.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch

from visae.errors import CacheError, DataError
from visae.io import atomic_write_json, atomic_write_with, hash_json

if TYPE_CHECKING:
    from visae.backbones.base import Backbone
    from visae.cache.reader import ActivationCache
    from visae.datasets.base import ImageSource

STORE_SCHEMA = 1


@runtime_checkable
class ImageEmbedder(Protocol):
    """Anything that embeds evaluation-cache images: positions ``[n]`` (int) → embeddings ``[n, E]``."""

    def __call__(self, image_index_n: np.ndarray, /) -> np.ndarray:
        """Embeddings (float32 ``[n, E]``) of the cache images at ``image_index_n``, in that order."""
        ...


def source_indices_for_cache(cache_image_ids: Sequence[str], source: ImageSource) -> np.ndarray:
    """Position in ``source`` of every cache image, matched by image id (handles max_images subsets).

    Raises DataError naming the first cache image id the source does not hold.
    """
    by_id = getattr(source, "index_of", None)
    if callable(by_id):
        lookup = by_id
    else:
        positions = {source.image_id(i): i for i in range(len(source))}

        def lookup(image_id: str) -> int:
            return positions[image_id]

    out = np.empty(len(cache_image_ids), dtype=np.int64)
    for n, image_id in enumerate(cache_image_ids):
        try:
            out[n] = int(lookup(image_id))
        except (KeyError, IndexError, ValueError) as e:
            raise DataError(
                f"image source {source.spec!r} (split {source.split!r}) has no image with id {image_id!r}, "
                "which the activation cache lists; reopen the source the cache was built from "
                "(same spec, split and files) or rebuild the cache") from e
    return out


def open_cache_source(cache: ActivationCache) -> tuple[ImageSource, np.ndarray]:
    """Reopen the image source a cache was built from and map every cache image to its source position."""
    from visae.datasets.registry import open_source

    src = cache.manifest.source
    if "spec" not in src:
        raise CacheError(f"{cache.path}/manifest.json: source has no 'spec'; cannot re-read the images "
                         "for M5 embeddings; rebuild the cache with a current visae")
    # A max_images subset records itself as "<spec>#<tag>"; reopen the full source and match images by id.
    spec = str(src["spec"]).split("#", 1)[0]
    source = open_source(spec, split=src.get("split", "val"))
    return source, source_indices_for_cache(cache.image_ids, source)


EMBEDDINGS = ("patch_mean", "cls")
"""M5 evaluator embeddings: ``patch_mean`` (the authors' ``visaebench``: mean of block-11 patch tokens after
the final norm) and ``cls`` (``Backbone.embed``: the CLS token after the final norm, or the pooled head)."""


class BackboneEmbedder:
    """Embeds cache images with an evaluator backbone: its patch mean at ``layer``
    (``embedding="patch_mean"``,
    the authors' convention) or its pooled representation (``"cls"``, ``Backbone.embed``)."""

    def __init__(self, backbone: Backbone, source: ImageSource, source_index_n: np.ndarray,
                 batch_size: int = 32, embedding: str = "cls", layer: int = 11) -> None:
        if embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {embedding!r}")
        self.backbone = backbone
        self.source = source
        self.source_index_n = np.asarray(source_index_n, dtype=np.int64)
        self.batch_size = max(1, int(batch_size))
        self.embedding = embedding
        self.layer = int(layer)

    @property
    def embedding_kind(self) -> str:
        """What the embedding is, in words (part of the embedding store's key)."""
        if self.embedding == "patch_mean":
            return self.backbone.patch_mean_kind(self.layer)
        return self.backbone.embedding_kind

    def embed_pixels(self, pixels_bchw: torch.Tensor) -> torch.Tensor:
        """The chosen embedding of preprocessed pixels, ``[B, E]``."""
        if self.embedding == "patch_mean":
            return self.backbone.patch_mean_embed(pixels_bchw, self.layer)
        return self.backbone.embed(pixels_bchw)

    @torch.no_grad()
    def __call__(self, image_index_n: np.ndarray) -> np.ndarray:
        """Load, preprocess and embed the cache images at ``image_index_n``; float32 ``[n, E]``."""
        transform = self.backbone.transform
        chunks: list[np.ndarray] = []
        index_n = np.asarray(image_index_n, dtype=np.int64)
        for start in range(0, len(index_n), self.batch_size):
            part = index_n[start:start + self.batch_size]
            pixels = torch.stack([transform(self.source.load(int(self.source_index_n[i]))) for i in part])
            emb = self.embed_pixels(pixels.to(self.backbone.device))
            chunks.append(emb.float().cpu().numpy())
        if not chunks:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32, copy=False)


class EmbeddingStore:
    """Lazily filled per-image embeddings of one cache under one evaluator, saved crash-safe.

    Files: ``<dir>/<evaluator>-<hash>.npy`` (float32 ``[N, E]``, unfilled rows zero) and
    ``<dir>/<evaluator>-<hash>.json`` (evaluator, weights id, embedding kind, image ids, filled rows).
    ``hash`` covers the weights id, the embedding kind and the preprocessing (input size, mean/std).
    The JSON is written after the array, so it never lists a row the array lacks. A store whose image ids
    differ from the cache's is stale and started afresh.
    """

    def __init__(self, store_dir: Path | str, evaluator: str, weights_id: str, image_ids: Sequence[str],
                 embedding_kind: str = "", save_every: int = 2048,
                 preprocessing: dict[str, Any] | None = None) -> None:
        self.dir = Path(store_dir)
        self.evaluator = evaluator
        self.weights_id = weights_id
        self.embedding_kind = embedding_kind
        self.image_ids = list(image_ids)
        self.save_every = max(1, int(save_every))
        key = hash_json({"weights_id": weights_id, "embedding_kind": embedding_kind,
                         "preprocessing": preprocessing or {}, "schema": STORE_SCHEMA})
        safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in evaluator)
        self.npy_path = self.dir / f"{safe_name}-{key}.npy"
        self.json_path = self.dir / f"{safe_name}-{key}.json"
        self.emb_ne: np.ndarray | None = None
        self.filled_n = np.zeros(len(self.image_ids), dtype=bool)
        self.n_computed = 0
        """Rows computed by this object (not read from disk)."""
        self._load()

    # --- disk --------------------------------------------------------------------------------------
    def _read_disk(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(embeddings, filled mask) on disk when present and matching these image ids, else None."""
        if not (self.json_path.is_file() and self.npy_path.is_file()):
            return None
        try:
            meta = json.loads(self.json_path.read_text(encoding="utf-8"))
            emb = np.load(self.npy_path, mmap_mode="r")
        except (OSError, ValueError) as e:
            warnings.warn(f"{self.json_path}: unreadable embedding store ({e}); recomputing embeddings",
                          stacklevel=3)
            return None
        if meta.get("image_ids") != self.image_ids or emb.ndim != 2 or emb.shape[0] != len(self.image_ids):
            warnings.warn(f"{self.json_path}: embedding store is for other images; starting it afresh",
                          stacklevel=3)
            return None
        filled = np.zeros(len(self.image_ids), dtype=bool)
        rows = np.asarray(meta.get("filled", []), dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self.image_ids)):
            return None
        filled[rows] = True
        return np.array(emb, dtype=np.float32), filled

    def _load(self) -> None:
        disk = self._read_disk()
        if disk is not None:
            self.emb_ne, self.filled_n = disk

    def save(self) -> None:
        """Write the array then its JSON record atomically, keeping rows another process filled meanwhile."""
        if self.emb_ne is None:
            return
        disk = self._read_disk()
        if disk is not None and disk[0].shape == self.emb_ne.shape:
            theirs = disk[1] & ~self.filled_n
            self.emb_ne[theirs] = disk[0][theirs]
            self.filled_n |= theirs
        emb = self.emb_ne
        atomic_write_with(self.npy_path, lambda p: np.save(p, emb))
        atomic_write_json(self.json_path, {
            "schema": STORE_SCHEMA,
            "evaluator": self.evaluator,
            "weights_id": self.weights_id,
            "embedding_kind": self.embedding_kind,
            "n_images": len(self.image_ids),
            "dim": int(emb.shape[1]),
            "filled": np.flatnonzero(self.filled_n).tolist(),
            "image_ids": self.image_ids,
        })

    # --- use ---------------------------------------------------------------------------------------
    def get(self, image_index_n: np.ndarray, embedder: ImageEmbedder) -> np.ndarray:
        """Embeddings of the cache images at ``image_index_n`` (float32 ``[n, E]``), computing missing
        rows."""
        index_n = np.asarray(image_index_n, dtype=np.int64)
        if index_n.size and (index_n.min() < 0 or index_n.max() >= len(self.image_ids)):
            raise CacheError(f"{self.json_path}: image index out of range 0..{len(self.image_ids) - 1}")
        missing = np.unique(index_n[~self.filled_n[index_n]]) if index_n.size else index_n
        for start in range(0, len(missing), self.save_every):
            part = missing[start:start + self.save_every]
            emb = np.asarray(embedder(part), dtype=np.float32)
            if emb.ndim != 2 or emb.shape[0] != len(part):
                raise DataError(f"embedder {self.evaluator!r} returned shape {emb.shape} for "
                                f"{len(part)} images")
            if self.emb_ne is None or self.emb_ne.shape[1] != emb.shape[1]:
                self.emb_ne = np.zeros((len(self.image_ids), emb.shape[1]), dtype=np.float32)
                self.filled_n[:] = False
            self.emb_ne[part] = emb
            self.filled_n[part] = True
            self.n_computed += len(part)
            self.save()
        if self.emb_ne is None:
            return np.zeros((len(index_n), 0), dtype=np.float32)
        return self.emb_ne[index_n].copy()


def store_info(store: EmbeddingStore) -> dict[str, Any]:
    """A small summary of a store for results: paths, rows filled, rows computed in this run."""
    return {"path": str(store.npy_path), "filled": int(store.filled_n.sum()), "computed": store.n_computed}
