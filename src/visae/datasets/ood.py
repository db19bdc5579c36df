"""Out-of-domain image sources for M6 with their official splits: iNaturalist 2021, CUB-200-2011, DTD.

- ``inat:/root``: iNaturalist 2021: ``train.json`` / ``val.json`` (COCO style: ``images``, ``annotations``,
  ``categories``) beside ``train/`` and ``val/``; without the JSON, ``train/`` and ``val/`` are read as class
  folders
- ``cub:/root``: CUB-200-2011: ``images.txt``, ``image_class_labels.txt``, ``train_test_split.txt``,
  ``classes.txt``, ``images/``
- ``dtd:/root`` or ``dtd:/root?fold=N``: DTD: ``images/<class>/*.jpg`` and ``labels/{train,val,test}N.txt``
  (fold 1 by default)

Splits: iNat ``train`` / ``val`` (``test`` = ``val``: the public test set has no labels); CUB ``train`` /
``test`` (``val`` = ``test``); DTD ``train`` / ``val`` / ``test`` of the fold. ``all`` joins every split.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from visae.datasets.base import ListedSource
from visae.datasets.images import IMAGE_EXTENSIONS
from visae.errors import DataError


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{path}: missing ({what}); point the spec at the dataset's root folder")
    return path


def _read_rows(path: Path, n_fields: int) -> list[list[str]]:
    rows = []
    for ln, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=n_fields - 1)
        if len(parts) != n_fields:
            raise DataError(f"{path}:{ln}: expected {n_fields} fields, got {line!r}")
        rows.append(parts)
    return rows


# --- iNaturalist 2021 --------------------------------------------------------------------------------------


def open_inat(root: Path | str, split: str = "train") -> ListedSource:
    """iNaturalist 2021 at ``root`` (COCO-style JSON when present, else class folders)."""
    root = Path(root).expanduser()
    names = {"train": ["train"], "val": ["val"], "test": ["val"], "all": ["train", "val"]}[split]
    files: list[str] = []
    labels: list[int] = []
    class_names: list[str] | None = None
    for name in names:
        js = root / f"{name}.json"
        if js.is_file():
            cls, f, lab = _inat_json(js)
        else:
            cls, f, lab = _class_folders(_need(root / name,
                                               f"{name}.json or the {name}/ class folders"), root)
        if class_names is None:
            class_names = cls
        elif cls != class_names:
            raise DataError(f"{root}: the {names[0]} and {name} splits list different categories")
        files += f
        labels += lab
    return ListedSource(f"inat:{root}", split, root, files, labels, class_names or [])


def _inat_json(path: Path) -> tuple[list[str], list[str], list[int]]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        cats = sorted(doc["categories"], key=lambda c: c["id"])
        images = {im["id"]: im["file_name"] for im in doc["images"]}
        annotations = doc["annotations"]
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not an iNaturalist COCO-style file (images, annotations, categories): "
                        f"{e}") from e
    index = {c["id"]: i for i, c in enumerate(cats)}
    class_names = [str(c.get("image_dir_name") or c.get("name") or c["id"]) for c in cats]
    pairs = sorted((images[a["image_id"]], index[a["category_id"]]) for a in annotations)
    return class_names, [p for p, _ in pairs], [lab for _, lab in pairs]


def _class_folders(split_dir: Path, root: Path) -> tuple[list[str], list[str], list[int]]:
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    files, labels = [], []
    for label, cls in enumerate(classes):
        for p in sorted((split_dir / cls).rglob("*")):
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(str(p.relative_to(root)))
                labels.append(label)
    return classes, files, labels


# --- CUB-200-2011 ------------------------------------------------------------------------------------------


def open_cub(root: Path | str, split: str = "train") -> ListedSource:
    """CUB-200-2011 at ``root`` (the folder holding ``images.txt``; ``CUB_200_2011/`` below it also works)."""
    root = Path(root).expanduser()
    if not (root / "images.txt").is_file() and (root / "CUB_200_2011" / "images.txt").is_file():
        root = root / "CUB_200_2011"
    images = dict(_read_rows(_need(root / "images.txt", "CUB images.txt"), 2))
    cls_of = dict(_read_rows(_need(root / "image_class_labels.txt", "CUB image_class_labels.txt"), 2))
    is_train = dict(_read_rows(_need(root / "train_test_split.txt", "CUB train_test_split.txt"), 2))
    classes = sorted(_read_rows(_need(root / "classes.txt", "CUB classes.txt"), 2), key=lambda r: int(r[0]))
    class_index = {cid: i for i, (cid, _) in enumerate(classes)}
    want = {"train": {"1"}, "val": {"0"}, "test": {"0"}, "all": {"0", "1"}}[split]
    files, labels = [], []
    for iid in sorted(images, key=int):
        if is_train.get(iid) in want:
            files.append(f"images/{images[iid]}")
            labels.append(class_index[cls_of[iid]])
    return ListedSource(f"cub:{root}", split, root, files, labels, [name for _, name in classes])


# --- DTD ---------------------------------------------------------------------------------------------------


def open_dtd(root: Path | str, split: str = "train", fold: int = 1) -> ListedSource:
    """DTD at ``root`` (``images/``, ``labels/``), split files of ``fold`` (1–10)."""
    root = Path(root).expanduser()
    image_dir = _need(root / "images", "DTD images/ folder")
    classes = sorted(e.name for e in os.scandir(image_dir) if e.is_dir())
    index = {c: i for i, c in enumerate(classes)}
    parts = {"train": ["train"], "val": ["val"], "test": ["test"], "all": ["train", "val", "test"]}[split]
    files, labels = [], []
    for part in parts:
        listing = _need(root / "labels" / f"{part}{fold}.txt", f"DTD split file for fold {fold}")
        for ln, rel in enumerate(listing.read_text(encoding="utf-8").split(), 1):
            cls = rel.split("/", 1)[0]
            if cls not in index:
                raise DataError(f"{listing}:{ln}: class {cls!r} has no folder under {image_dir}")
            files.append(f"images/{rel}")
            labels.append(index[cls])
    spec = f"dtd:{root}" + (f"?fold={fold}" if fold != 1 else "")
    return ListedSource(spec, split, root, files, labels, classes)


def open_dtd_spec(body: str, split: str = "train") -> ListedSource:
    """Open ``dtd:<path>[?fold=N]`` (``body`` is the part after the colon)."""
    path, _, query = body.partition("?fold=")
    try:
        fold = int(query) if query else 1
    except ValueError:
        raise DataError(f"dtd:{body}: fold must be an integer (dtd:/path?fold=2)") from None
    return open_dtd(path, split, fold)


def open_ood(kind: str, body: str, split: str) -> ListedSource:
    """Dispatch ``inat:``/``cub:``/``dtd:`` specs (``body`` is the path, DTD may add ``?fold=N``)."""
    if kind == "inat":
        return open_inat(body, split)
    if kind == "cub":
        return open_cub(body, split)
    if kind == "dtd":
        return open_dtd_spec(body, split)
    raise DataError(f"{kind}:{body}: not an out-of-domain spec (inat:, cub:, dtd:)")
