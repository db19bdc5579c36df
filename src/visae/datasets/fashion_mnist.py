"""Fashion-MNIST (Zalando): 60,000 train and 10,000 test 28×28 grayscale images of 10 clothing classes.

Read from the IDX files of the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``) or any folder named by ``$VISAE_FASHION_MNIST_DIR``; when
neither exists, torchvision downloads them to ``~/.cache/visae/fashion-mnist``. Splits: ``train`` is the
official 60k, ``test`` the official 10k, and ``val`` the same 10k test images. Ids are
``train/00000`` … and ``test/00000`` ….
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from visae.datasets.subset import ArraySource
from visae.errors import DataError

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]
SEARCH_DIRS = ["/usr/share/datasets/fashion-mnist", "/usr/share/fashion-mnist",
               "/usr/local/share/datasets/fashion-mnist"]
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _find(dir_path: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (dir_path / name).is_file():
            return dir_path / name
    return None


def find_idx_dir() -> Path | None:
    """The first folder holding the four Fashion-MNIST IDX files, or None."""
    candidates = [os.environ.get("VISAE_FASHION_MNIST_DIR", ""), *SEARCH_DIRS]
    for c in candidates:
        if c and all(_find(Path(c), stem) for pair in FILES.values() for stem in pair):
            return Path(c)
    return None


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (gzip or plain) of unsigned bytes into an array; DataError names a bad file."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read IDX file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise DataError(f"{path}: truncated IDX file ({len(raw) - offset} bytes of data, expected {expected})")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _download(split: str) -> tuple[np.ndarray, np.ndarray]:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "visae" / "fashion-mnist"
    try:
        from torchvision.datasets import FashionMNIST

        ds = FashionMNIST(str(root), train=split == "train", download=True)
    except Exception as e:  # torchvision raises plain RuntimeError/URLError when offline
        raise DataError(f"fashion-mnist: IDX files not found in {', '.join(SEARCH_DIRS)} and the download "
                        f"failed ({e}); install the Debian package 'dataset-fashion-mnist' or set "
                        "VISAE_FASHION_MNIST_DIR to a folder with the four IDX files") from None
    return ds.data.numpy(), ds.targets.numpy()


def open_fashion_mnist(split: str = "train") -> ArraySource:
    """One split of Fashion-MNIST (``val`` = ``test``)."""
    if split not in ("train", "val", "test"):
        raise DataError(f"fashion-mnist: unknown split {split!r}; use train, val or test")
    which = "train" if split == "train" else "test"
    idx_dir = find_idx_dir()
    if idx_dir is not None:
        img_stem, lab_stem = FILES[which]
        images = read_idx(_find(idx_dir, img_stem))  # type: ignore[arg-type]
        labels = read_idx(_find(idx_dir, lab_stem))  # type: ignore[arg-type]
    else:
        images, labels = _download(which)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"fashion-mnist: {images.shape[0]} images but {labels.shape[0]} labels")
    ids = [f"{which}/{i:05d}" for i in range(len(labels))]
    return ArraySource("fashion-mnist", split, images, labels.astype(np.int64), CLASS_NAMES, ids)
