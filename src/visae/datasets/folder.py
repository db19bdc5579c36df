"""Class-per-folder image sets: the ImageNet train/val layout (WordNet-id folders) and any ImageFolder tree.

``folder:ROOT``: if ``ROOT`` has a sub-folder for the requested split (``train``; ``val`` or
``validation``; ``test``, falling back to ``val``), that sub-folder is used; otherwise ``ROOT`` itself holds
the class folders and is used whole, whatever the split. Classes are the sub-folder names, sorted (so an
ImageNet tree gives the 1000 WordNet ids in the usual order); images are every file with an image
extension below a class folder, sorted by relative path; the id of an image is that relative path.
"""

from __future__ import annotations

import os
from pathlib import Path

from visae.datasets.base import ListedSource
from visae.datasets.images import IMAGE_EXTENSIONS
from visae.errors import DataError

SPLIT_DIRS = {"train": ["train"], "val": ["val", "validation"], "test": ["test", "val", "validation"]}


def resolve_split_dir(root: Path, split: str) -> Path:
    """The folder holding the class folders for ``split`` (see the module docstring)."""
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    for name in SPLIT_DIRS.get(split, [split]):
        if (root / name).is_dir():
            return root / name
    return root


class FolderSource(ListedSource):
    """An ImageFolder tree ``<root>/<class>/…/<image>``."""

    def __init__(self, root: Path | str, split: str = "train", spec: str | None = None) -> None:
        self.root = Path(root).expanduser()
        self.split = split
        self.spec = spec or f"folder:{self.root}"
        self.dir = resolve_split_dir(self.root, split)
        classes = sorted(e.name for e in os.scandir(self.dir) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise DataError(f"{self.dir}: no class folders (expected <root>/<class>/<image files>)")
        self.class_names = classes
        files: list[str] = []
        labels: list[int] = []
        for label, cls in enumerate(classes):
            found: list[str] = []
            for dirpath, dirnames, filenames in os.walk(self.dir / cls, followlinks=True):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                rel_dir = Path(dirpath).relative_to(self.dir)
                found.extend((rel_dir / f).as_posix() for f in filenames
                             if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS)
            found.sort()
            files.extend(found)
            labels.extend([label] * len(found))
        if not files:
            raise DataError(f"{self.dir}: the class folders hold no image files "
                            f"({', '.join(sorted(IMAGE_EXTENSIONS))})")
        super().__init__(self.spec, split, self.dir, files, labels, classes)
        self.root = Path(root).expanduser()


def open_folder(path: str, split: str = "train") -> FolderSource:
    """Open ``folder:<path>`` (the spec keeps ``path`` as written, so cache hashes do not depend on ``~``)."""
    return FolderSource(path, split, spec=f"folder:{path}")
