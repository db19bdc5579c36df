"""ADE20K scene parsing in its published layout (``ADEChallengeData2016``), with per-pixel masks.

``ade20k:ROOT`` where ``ROOT`` is the ``ADEChallengeData2016`` folder (or a folder that holds it)::

    ROOT/images/training/ADE_train_00000001.jpg      ROOT/annotations/training/ADE_train_00000001.png
    ROOT/images/validation/ADE_val_00000001.jpg      ROOT/annotations/validation/ADE_val_00000001.png
    ROOT/objectInfo150.csv (optional: class names)    ROOT/sceneCategories.txt (optional: scene labels)

Splits: ``train`` → ``training``; ``val`` and ``test`` → ``validation``. Masks are 8-bit PNGs with 150
classes numbered 1 … 150 and 0 = "other" (the ignore index). The image-level label (what an activation
cache stores) is the scene category from ``sceneCategories.txt`` when present, else 0 for every image
(class ``ade20k``). Image ids are the paths relative to ``ROOT`` (``images/training/ADE_train_00000001.jpg``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from visae.datasets.base import ImageSource
from visae.datasets.images import load_image_file
from visae.errors import DataError

N_CLASSES = 150
IGNORE_INDEX = 0
SPLIT_DIRS = {"train": "training", "val": "validation", "test": "validation",
              "training": "training", "validation": "validation"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def resolve_root(root: Path) -> Path:
    """``root`` itself if it holds ``images/`` and ``annotations/``, else ``root/ADEChallengeData2016``."""
    for cand in (root, root / "ADEChallengeData2016"):
        if (cand / "images").is_dir() and (cand / "annotations").is_dir():
            return cand
    raise DataError(f"{root}: not an ADE20K folder; expected images/{{training,validation}} and "
                    "annotations/{training,validation} (the ADEChallengeData2016 layout)")


def read_class_names(root: Path) -> list[str]:
    """The 150 class names from ``objectInfo150.csv`` (first name of each ``Name`` entry), or
    ``class_<i>``."""
    path = root / "objectInfo150.csv"
    names = [f"class_{i}" for i in range(1, N_CLASSES + 1)]
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                try:
                    idx = int(row["Idx"])
                except (KeyError, TypeError, ValueError):
                    raise DataError(f"{path}: expected columns Idx,Ratio,Train,Val,Name") from None
                if 1 <= idx <= N_CLASSES:
                    names[idx - 1] = str(row.get("Name", "")).split(";")[0].strip() or names[idx - 1]
    return names


def read_scene_categories(root: Path) -> dict[str, str]:
    """``{image stem: scene}`` from ``sceneCategories.txt``; empty when the file is absent."""
    path = root / "sceneCategories.txt"
    if not path.is_file():
        return {}
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) >= 2:
            out[parts[0]] = parts[1]
    return out


class ADE20KSource(ImageSource):
    """ADE20K images of one split, their scene labels, and a per-pixel mask accessor."""

    seg_class_names: list[str]
    """The 150 segmentation classes; mask value ``c`` (1 … 150) is ``seg_class_names[c - 1]``."""
    _sibling: ADE20KSource | None = None

    def __init__(self, root: Path | str, split: str = "train", spec: str | None = None) -> None:
        if split not in SPLIT_DIRS:
            raise DataError(f"ade20k: unknown split {split!r}; use train, val or test")
        self.root = resolve_root(Path(root).expanduser())
        self.split = split
        self.spec = spec or f"ade20k:{self.root}"
        sub = SPLIT_DIRS[split]
        image_dir, self.mask_dir = self.root / "images" / sub, self.root / "annotations" / sub
        if not image_dir.is_dir():
            raise DataError(f"{image_dir}: missing; the ADE20K {split} split lives there")
        self.stems = sorted(p.stem for p in image_dir.iterdir()
                            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        if not self.stems:
            raise DataError(f"{image_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
        self._files = {p.stem: p.name for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        self.image_dir = image_dir
        self.seg_class_names = read_class_names(self.root)
        scenes = read_scene_categories(self.root)
        if scenes:
            self.class_names = sorted({scenes.get(s, "unknown") for s in self.stems})
            lookup = {c: i for i, c in enumerate(self.class_names)}
            self._labels = np.array([lookup[scenes.get(s, "unknown")] for s in self.stems], dtype=np.int64)
        else:
            self.class_names = ["ade20k"]
            self._labels = np.zeros(len(self.stems), dtype=np.int64)
        self._index = {self.image_id(i): i for i in range(len(self.stems))}

    def __len__(self) -> int:
        return len(self.stems)

    def load(self, index: int) -> Image.Image:
        return load_image_file(self.image_dir / self._files[self.stems[index]])

    def label(self, index: int) -> int:
        return int(self._labels[index])

    @property
    def labels(self) -> np.ndarray:
        return self._labels.copy()

    def image_id(self, index: int) -> str:
        return f"images/{SPLIT_DIRS[self.split]}/{self._files[self.stems[index]]}"

    def index_of(self, image_id: str) -> int:
        """Position of an image id (as stored in an activation cache built on this source)."""
        try:
            return self._index[image_id]
        except KeyError:
            raise DataError(f"{self.spec} ({self.split}): no image with id {image_id!r}; was the cache built "
                            "on this ADE20K folder and split?") from None

    def mask_path(self, index: int) -> Path:
        """The annotation PNG of the image at ``index``."""
        return self.mask_dir / f"{self.stems[index]}.png"

    def load_mask(self, index: int) -> np.ndarray:
        """Per-pixel class ids ``[H, W]`` uint8 (0 = ignore, 1 … 150), at the image's own resolution."""
        path = self.mask_path(index)
        if not path.is_file():
            raise DataError(f"{path}: annotation missing for {self.image_id(index)}")
        try:
            with Image.open(path) as im:
                mask = np.asarray(im.convert("L") if im.mode not in ("L", "P") else im, dtype=np.uint8)
        except OSError as e:
            raise DataError(f"{path}: cannot read the annotation PNG ({e})") from None
        if mask.ndim != 2:
            raise DataError(f"{path}: expected a single-channel mask, got shape {mask.shape}")
        return mask

    def load_mask_by_id(self, image_id: str) -> np.ndarray:
        """The mask of an image of either split, from its id (``images/<training|validation>/<name>``)."""
        split = split_of_id(image_id)
        if split is None:
            raise DataError(f"{self.root}: {image_id!r} is not an ADE20K image id (images/<split>/<file>)")
        source = self if SPLIT_DIRS[self.split] == SPLIT_DIRS[split] else self._other(split)
        return source.load_mask(source.index_of(image_id))

    def _other(self, split: str) -> ADE20KSource:
        cached = self._sibling
        if cached is None or cached.split != split:
            cached = ADE20KSource(self.root, split=split, spec=self.spec)
            self._sibling = cached
        return cached


def split_of_id(image_id: str) -> str | None:
    """``train`` or ``val`` from an ADE20K image id (``images/training/…``), None if it is not one."""
    parts = image_id.split("/")
    if len(parts) == 3 and parts[0] == "images":
        return {"training": "train", "validation": "val"}.get(parts[1])
    return None


def open_ade20k(spec_path: str, split: str = "train") -> ADE20KSource:
    """Open ``ade20k:<path>`` (the part after the colon is ``spec_path``)."""
    return ADE20KSource(spec_path, split=split, spec=f"ade20k:{spec_path}")
