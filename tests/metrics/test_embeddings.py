"""The M5 embedding store: lazy, computed once per image, crash-safe, shared across processes; id mapping
back to the image source; the backbone embedder feeds ``Backbone.embed`` the backbone's own transform."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visae.datasets.base import ImageSource
from visae.errors import DataError
from visae.metrics.embeddings import BackboneEmbedder, EmbeddingStore, ImageEmbedder, source_indices_for_cache

IDS = [f"img_{i:03d}" for i in range(50)]


class CountingEmbedder:
    """Planted embeddings; records every index it was asked for."""

    def __init__(self, dim: int = 6) -> None:
        self.table = np.random.default_rng(0).normal(size=(len(IDS), dim)).astype(np.float32)
        self.asked: list[int] = []

    def __call__(self, image_index_n: np.ndarray) -> np.ndarray:
        self.asked.extend(int(i) for i in image_index_n)
        return self.table[image_index_n]


def test_embedder_protocol() -> None:
    assert isinstance(CountingEmbedder(), ImageEmbedder)


def test_store_computes_only_missing_rows_once(tmp_path: Path) -> None:
    emb = CountingEmbedder()
    store = EmbeddingStore(tmp_path / "embeddings", "fake-vit", "w123", IDS, embedding_kind="planted")
    got = store.get(np.array([3, 7, 3, 9]), emb)
    np.testing.assert_array_equal(got, emb.table[[3, 7, 3, 9]])
    assert sorted(emb.asked) == [3, 7, 9]  # each distinct image once
    got = store.get(np.array([9, 10, 7]), emb)
    np.testing.assert_array_equal(got, emb.table[[9, 10, 7]])
    assert sorted(emb.asked) == [3, 7, 9, 10]
    # A new process reads the filled rows back and computes nothing for them.
    emb2 = CountingEmbedder()
    again = EmbeddingStore(tmp_path / "embeddings", "fake-vit", "w123", IDS, embedding_kind="planted")
    np.testing.assert_array_equal(again.get(np.array([10, 3]), emb2), emb.table[[10, 3]])
    assert emb2.asked == []
    meta = json.loads(again.json_path.read_text())
    assert meta["filled"] == [3, 7, 9, 10] and meta["image_ids"] == IDS and meta["dim"] == 6
    assert again.npy_path.name.startswith("fake-vit-") and again.npy_path.parent.name == "embeddings"
    arr = np.load(again.npy_path)
    assert arr.dtype == np.float32 and arr.shape == (50, 6)
    assert not list((tmp_path / "embeddings").glob("*.tmp-*"))


def test_store_keys_on_weights_and_drops_stale_ids(tmp_path: Path) -> None:
    emb = CountingEmbedder()
    EmbeddingStore(tmp_path, "fake-vit", "w1", IDS).get(np.array([1, 2]), emb)
    other = EmbeddingStore(tmp_path, "fake-vit", "w2", IDS)  # other weights: other file
    assert other.npy_path != EmbeddingStore(tmp_path, "fake-vit", "w1", IDS).npy_path
    assert not other.filled_n.any()
    with pytest.warns(UserWarning, match="other images"):
        stale = EmbeddingStore(tmp_path, "fake-vit", "w1", [*IDS[:-1], "different"])
    assert not stale.filled_n.any()


def test_store_merges_rows_written_by_another_process(tmp_path: Path) -> None:
    emb = CountingEmbedder()
    a = EmbeddingStore(tmp_path, "fake-vit", "w", IDS)
    b = EmbeddingStore(tmp_path, "fake-vit", "w", IDS)  # opened before a wrote anything
    a.get(np.array([1, 2]), emb)
    b.get(np.array([5]), emb)  # b's save keeps a's rows
    c = EmbeddingStore(tmp_path, "fake-vit", "w", IDS)
    assert np.flatnonzero(c.filled_n).tolist() == [1, 2, 5]
    np.testing.assert_array_equal(c.emb_ne[[1, 2, 5]], emb.table[[1, 2, 5]])  # type: ignore[index]


def test_store_saves_in_chunks(tmp_path: Path) -> None:
    emb = CountingEmbedder()
    calls: list[int] = []

    def chunked(index_n: np.ndarray) -> np.ndarray:
        calls.append(len(index_n))
        return emb(index_n)

    store = EmbeddingStore(tmp_path, "fake-vit", "w", IDS, save_every=4)
    store.get(np.arange(10), chunked)
    assert calls == [4, 4, 2] and store.n_computed == 10


class ListSource(ImageSource):
    """A tiny in-memory labelled image source."""

    def __init__(self, ids: Sequence[str], make: Callable[[int], Image.Image]) -> None:
        self.spec, self.split, self.class_names = "memory:test", "val", ["a", "b"]
        self.ids = list(ids)
        self.make = make

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> Image.Image:
        return self.make(index)

    def label(self, index: int) -> int:
        return index % 2

    def image_id(self, index: int) -> str:
        return self.ids[index]


def solid(index: int) -> Image.Image:
    return Image.new("RGB", (8, 8), (index * 5 % 256, 10, 200))


def test_cache_ids_map_to_source_positions_for_subsets() -> None:
    source = ListSource(IDS, solid)
    subset_ids = [IDS[i] for i in (40, 2, 17)]  # a max_images subset, in the cache's order
    np.testing.assert_array_equal(source_indices_for_cache(subset_ids, source), [40, 2, 17])
    with pytest.raises(DataError, match="no image with id 'missing'"):
        source_indices_for_cache(["missing"], source)


class TinyBackbone:
    """Enough of the Backbone interface for the embedder: transform, device, embed."""

    device = torch.device("cpu")
    embedding_kind = "mean pixel per channel (test)"

    @property
    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        return lambda im: torch.from_numpy(np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0)

    def embed(self, pixels_bchw: torch.Tensor) -> torch.Tensor:
        return pixels_bchw.mean(dim=(2, 3))


def test_backbone_embedder_uses_source_positions_and_batches() -> None:
    source = ListSource(IDS, solid)
    source_index = source_indices_for_cache([IDS[i] for i in (7, 3, 11, 0)], source)
    embedder = BackboneEmbedder(TinyBackbone(), source, source_index, batch_size=3)  # type: ignore[arg-type]
    got = embedder(np.array([2, 0, 1, 3]))  # cache positions → source images 11, 7, 3, 0
    expected = np.array([[i * 5 % 256 / 255, 10 / 255, 200 / 255] for i in (11, 7, 3, 0)], dtype=np.float32)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got.dtype == np.float32


def test_open_cache_source_reopens_a_subset_by_id() -> None:
    from types import SimpleNamespace

    from visae.datasets.registry import open_source
    from visae.metrics.embeddings import open_cache_source

    subset = open_source("offline:digits", split="train", max_images=12, seed=3)
    ids = [subset.image_id(i) for i in range(len(subset))]
    cache = SimpleNamespace(manifest=SimpleNamespace(source={"spec": subset.spec, "split": "train"}),
                            image_ids=ids, path="cache")
    source, index = open_cache_source(cache)  # type: ignore[arg-type]
    assert [source.image_id(int(i)) for i in index] == ids
    np.testing.assert_array_equal(np.asarray(source.load(int(index[4]))), np.asarray(subset.load(4)))
