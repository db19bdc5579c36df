"""Seeded, deterministic subsets and splits of image sources, and an in-memory array source."""

from __future__ import annotations

import numpy as np
from PIL import Image

from visae.datasets.base import ImageSource
from visae.datasets.images import array_to_rgb
from visae.errors import DataError

OFFLINE_SPLIT_SEED = 0
"""Seed of the fixed 80/20 split of sets without an official split (independent of the subset seed)."""
OFFLINE_TEST_FRACTION = 0.2


def stratified_split(labels: np.ndarray, test_fraction: float = OFFLINE_TEST_FRACTION,
                     seed: int = OFFLINE_SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Per class, a seeded ``round(test_fraction · n_c)`` (at least 1 when n_c ≥ 2) go to test.

    Returns sorted ``(train_idx, test_idx)``; the same labels and seed always give the same split.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    test: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.nonzero(labels == c)[0]
        n_test = round(test_fraction * len(idx))
        if len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)
        test.append(rng.permutation(idx)[:n_test])
    test_idx = np.sort(np.concatenate(test)) if test else np.empty(0, dtype=np.int64)
    train_mask = np.ones(len(labels), dtype=bool)
    train_mask[test_idx] = False
    return np.nonzero(train_mask)[0], test_idx


def subset_indices(labels: np.ndarray, max_images: int, seed: int = 42,
                   stratified: bool = True) -> np.ndarray:
    """Sorted indices of a seeded subset of ``max_images`` items.

    Stratified: each class gets a share proportional to its size (largest remainders get the rounding,
    ties to the smaller label), drawn at random within the class.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if max_images >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if not stratified:
        return np.sort(rng.choice(n, size=max_images, replace=False))
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (max_images / n)
    take = np.floor(exact).astype(int)
    remainder = max_images - int(take.sum())
    order = np.lexsort((classes, -(exact - take)))
    take[order[:remainder]] += 1
    picked = [rng.permutation(np.nonzero(labels == c)[0])[:k] for c, k in zip(classes, take, strict=True)]
    return np.sort(np.concatenate(picked))


def subset_tag(max_images: int, seed: int, stratified: bool) -> str:
    """The suffix a subset adds to its source's spec (``#stratified-N-seedS``); it enters the cache hash."""
    return f"{'stratified' if stratified else 'random'}-{max_images}-seed{seed}"


def take_subset(source: ImageSource, max_images: int | None, seed: int = 42,
                stratified: bool = True) -> ImageSource:
    """``source`` itself, or a seeded subset of ``max_images`` items whose spec records the subset."""
    if max_images is None or max_images >= len(source):
        return source
    if max_images < 1:
        raise DataError(f"max_images must be ≥ 1, got {max_images}")
    idx = subset_indices(source.labels, max_images, seed=seed, stratified=stratified)
    return SubsetSource(source, idx, spec=f"{source.spec}#{subset_tag(max_images, seed, stratified)}")


class SubsetSource(ImageSource):
    """Rows ``indices`` of another source, in the given order."""

    def __init__(self, base: ImageSource, indices: np.ndarray, spec: str | None = None) -> None:
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.spec = spec or base.spec
        self.split = base.split
        self.class_names = base.class_names
        self._labels = base.labels[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int) -> Image.Image:
        return self.base.load(int(self.indices[index]))

    def label(self, index: int) -> int:
        return int(self._labels[index])

    def image_id(self, index: int) -> str:
        return self.base.image_id(int(self.indices[index]))

    @property
    def labels(self) -> np.ndarray:
        return self._labels.copy()


class ArraySource(ImageSource):
    """Images held in memory as an array ``[N, H, W]`` or ``[N, H, W, 3]`` (offline sets, IDX files)."""

    def __init__(self, spec: str, split: str, images: np.ndarray, labels: np.ndarray, class_names: list[str],
                 ids: list[str], full_scale: float | None = None) -> None:
        if not (len(images) == len(labels) == len(ids)):
            raise DataError(f"{spec}: {len(images)} images, {len(labels)} labels and {len(ids)} ids differ")
        self.spec = spec
        self.split = split
        self.images = images
        self._labels = np.asarray(labels, dtype=np.int64)
        self.class_names = list(class_names)
        self.ids = ids
        self.full_scale = full_scale

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> Image.Image:
        return array_to_rgb(self.images[index], self.full_scale)

    def label(self, index: int) -> int:
        return int(self._labels[index])

    def image_id(self, index: int) -> str:
        return self.ids[index]

    @property
    def labels(self) -> np.ndarray:
        return self._labels.copy()
