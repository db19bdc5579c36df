"""The ImageSource interface: images, integer labels, class names and stable ids."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from visae.datasets.images import load_image_file
from visae.errors import DataError


class ImageSource(ABC):
    """A finite, ordered, labelled collection of images.

    ``load(i)`` returns an RGB PIL image or raises :class:`visae.errors.DataError` naming the file.
    """

    spec: str
    """The spec string that opened it (e.g. ``folder:/data/imagenet/val``, ``offline:digits``)."""
    split: str
    """Which split: ``train``, ``val`` or ``test`` (as the source defines them)."""
    class_names: list[str]
    """Class names indexed by label."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of images."""

    @abstractmethod
    def load(self, index: int) -> Image.Image:
        """The image at ``index`` as RGB."""

    @abstractmethod
    def label(self, index: int) -> int:
        """Integer label of the image at ``index``."""

    @abstractmethod
    def image_id(self, index: int) -> str:
        """A stable id (relative path or dataset index) of the image at ``index``."""

    @property
    def labels(self) -> np.ndarray:
        """All labels as an int64 array."""
        return np.array([self.label(i) for i in range(len(self))], dtype=np.int64)

    def fingerprint(self) -> dict[str, Any]:
        """What determines the content, for cache hashing (spec, split, count, ids' hash)."""
        from visae.io import hash_json

        return {
            "spec": self.spec,
            "split": self.split,
            "n": len(self),
            "ids": hash_json([self.image_id(i) for i in range(len(self))]),
        }


class ListedSource(ImageSource):
    """Images listed by relative path under a root, with integer labels and class names."""

    def __init__(self, spec: str, split: str, root: Path, files: list[str], labels: list[int],
                 class_names: list[str]) -> None:
        if not files:
            raise DataError(f"{root}: split {split!r} lists no images")
        self.spec = spec
        self.split = split
        self.root = root
        self.files_dir = root
        """Folder the relative paths in ``files`` start from."""
        self.files = files
        self._labels = np.asarray(labels, dtype=np.int64)
        self.class_names = class_names

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> Image.Image:
        """The image at ``index`` as RGB."""
        return load_image_file(self.files_dir / self.files[index])

    def label(self, index: int) -> int:
        """Integer label of the image at ``index``."""
        return int(self._labels[index])

    def image_id(self, index: int) -> str:
        """Relative path of the image."""
        return self.files[index]

    @property
    def labels(self) -> np.ndarray:
        """All labels as an int64 array."""
        return self._labels.copy()
