"""Fashion-MNIST (Zalando): 60,000 train and 10,000 test 28×28 grayscale images of 10 clothing classes.

Read from the IDX files in ``$VISAE_FASHION_MNIST_DIR``, the installed Debian package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), or visae's own copy in
``$VISAE_HOME/datasets/fashion-mnist``. When none exists, :func:`fetch_fashion_mnist` (``visae data fetch
fashion-mnist``, also run on first use) obtains it without root: the Debian package's ``.deb`` from the
apt mirror this machine is configured with (SHA256-verified, unpacked, not installed), else torchvision's
download. ``VISAE_NO_SYSTEM_DATA=1`` ignores the installed package (tests of the fetch use it). Splits:
``train`` is the official 60k, ``test`` the official 10k, and ``val`` the same 10k test images. Ids are
``train/00000`` … and ``test/00000`` ….
"""

from __future__ import annotations

import fcntl
import gzip
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from visae.datasets.subset import ArraySource
from visae.errors import DataError
from visae.io import visae_home

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]
SEARCH_DIRS = ["/usr/share/datasets/fashion-mnist", "/usr/share/fashion-mnist",
               "/usr/local/share/datasets/fashion-mnist"]
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_FOLDER = "usr/share/datasets/fashion-mnist"
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _find(dir_path: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (dir_path / name).is_file():
            return dir_path / name
    return None


def home_dir() -> Path:
    """visae's own copy of the IDX files: ``$VISAE_HOME/datasets/fashion-mnist``."""
    return visae_home() / "datasets" / "fashion-mnist"


def _candidates() -> list[Path]:
    env = os.environ.get("VISAE_FASHION_MNIST_DIR", "")
    system = [] if os.environ.get("VISAE_NO_SYSTEM_DATA", "") not in ("", "0") else SEARCH_DIRS
    return [Path(c) for c in (env, *system) if c] + [home_dir(), home_dir().parent / "FashionMNIST" / "raw"]


def _complete(dir_path: Path) -> bool:
    return all(_find(dir_path, stem) for pair in FILES.values() for stem in pair)


def find_idx_dir() -> Path | None:
    """The first folder holding the four Fashion-MNIST IDX files, or None."""
    return next((c for c in _candidates() if _complete(c)), None)


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
        raise DataError(f"{path}: truncated IDX file ({len(raw) - offset} bytes of data, expected "
                        f"{expected})")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


log = logging.getLogger(__name__)


def _log(msg: str) -> None:
    log.info(msg)


def _fetch_debian(dest: Path, log: Callable[[str], None]) -> None:
    from visae.datasets.offline.debian import fetch_package_files

    use_apt = os.environ.get("VISAE_FETCH_NO_APT", "") in ("", "0")
    fetch_package_files(DEBIAN_PACKAGE, DEBIAN_FOLDER, dest, use_apt=use_apt, log=log)
    for pair in FILES.values():
        for stem in pair:
            f = _find(dest, stem)
            if f is None:
                raise OSError(f"{DEBIAN_PACKAGE}: the .deb has no {stem}(.gz)")
            read_idx(f)  # a damaged file is an error now, not at the first cache


def _fetch_torchvision(dest: Path, log: Callable[[str], None]) -> None:
    try:
        from torchvision.datasets import FashionMNIST
    except ImportError as e:
        raise OSError(f"torchvision is not installed ({e})") from None
    log("fashion-mnist: downloading with torchvision")
    try:
        FashionMNIST(str(dest.parent), train=True, download=True)
        FashionMNIST(str(dest.parent), train=False, download=True)
    except Exception as e:  # torchvision raises plain RuntimeError/URLError when offline
        raise OSError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None


def fetch_fashion_mnist(force: bool = False, log: Callable[[str], None] = _log) -> Path:
    """Make sure the IDX files are on this machine; return their folder (fetching them if needed).

    Routes: a folder that already holds them; the Debian package's ``.deb`` from apt's mirror into
    :func:`home_dir`; torchvision's download. DataError lists every route's failure and what to do.
    """
    if not force and (found := find_idx_dir()) is not None:
        return found
    dest = home_dir()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / ".fashion-mnist.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel study jobs: one fetch, the others wait and reuse it
        if not force and (found := find_idx_dir()) is not None:
            return found
        problems = []
        for name, route in (("Debian package", _fetch_debian), ("torchvision", _fetch_torchvision)):
            try:
                route(dest if route is _fetch_debian else dest.parent / "FashionMNIST", log)
            except (OSError, DataError) as e:
                problems.append(f"{name}: {e}")
                continue
            if (found := find_idx_dir()) is not None:
                log(f"fashion-mnist: IDX files in {found}")
                return found
    raise DataError(
        "fashion-mnist: the IDX files are not on this machine and fetching them failed "
        f"({'; '.join(problems)}); connect to the Debian mirror or the internet and run 'visae data fetch "
        f"fashion-mnist', or install the Debian package '{DEBIAN_PACKAGE}', or set VISAE_FASHION_MNIST_DIR "
        "to a folder with the four IDX files")


def open_fashion_mnist(split: str = "train") -> ArraySource:
    """One split of Fashion-MNIST (``val`` = ``test``)."""
    if split not in ("train", "val", "test"):
        raise DataError(f"fashion-mnist: unknown split {split!r}; use train, val or test")
    which = "train" if split == "train" else "test"
    idx_dir = fetch_fashion_mnist()
    img_stem, lab_stem = FILES[which]
    images = read_idx(_find(idx_dir, img_stem))  # type: ignore[arg-type]
    labels = read_idx(_find(idx_dir, lab_stem))  # type: ignore[arg-type]
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"fashion-mnist: {images.shape[0]} images but {labels.shape[0]} labels")
    ids = [f"{which}/{i:05d}" for i in range(len(labels))]
    return ArraySource("fashion-mnist", split, images, labels.astype(np.int64), CLASS_NAMES, ids)
