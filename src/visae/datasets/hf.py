"""Hugging Face ``datasets`` as an image source (extra ``hf``; imported only when used).

``hf:NAME_OR_PATH[:SPLIT]``: a hub name, a folder written by ``Dataset.save_to_disk`` or a local dataset
script/data folder. Without ``:SPLIT`` the requested split is used, with ``val`` trying ``validation``
then ``val`` then ``test``. The image column is the first ``Image`` feature (or a column named ``image``/
``img``); the label column is the first ``ClassLabel`` feature (its names are the class names), else a
column named ``label``/``labels`` (class names are then the sorted distinct values as strings). Ids are
``<split>/<row>``, or the values of an ``id``/``image_id`` column when one exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from visae.datasets.base import ImageSource
from visae.datasets.images import array_to_rgb, to_rgb
from visae.errors import DataError

SPLIT_ALIASES = {"train": ["train"], "val": ["validation", "val", "valid", "test"],
                 "test": ["test", "validation", "val"]}


def parse_hf_spec(body: str) -> tuple[str, str | None]:
    """``name_or_path[:split]`` → (name_or_path, split or None); a path's own colons are kept."""
    if ":" in body:
        head, tail = body.rsplit(":", 1)
        if tail and "/" not in tail and "\\" not in tail:
            return head, tail
    return body, None


def _load(name: str) -> Any:
    try:
        import datasets

        if not hasattr(datasets, "load_dataset"):  # a folder named "datasets" shadows the package
            raise ImportError
    except ImportError:
        raise DataError("hf: the Hugging Face 'datasets' package is not installed; "
                        "install it with: pip install 'visae[hf]'") from None
    p = Path(name).expanduser()
    try:
        if p.is_dir() and ((p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file()
                           or (p / "state.json").is_file()):
            return datasets.load_from_disk(str(p))
        return datasets.load_dataset(str(p) if p.exists() else name)
    # datasets raises many kinds (FileNotFoundError, ConnectionError, DatasetNotFoundError)
    except Exception as e:
        raise DataError(f"hf:{name}: cannot load the dataset ({type(e).__name__}: {e})") from None


class HFSource(ImageSource):
    """One split of a Hugging Face dataset with an image column and a class-label column."""

    def __init__(self, body: str, split: str = "train") -> None:
        name, spec_split = parse_hf_spec(body)
        self.spec = f"hf:{body}"
        self.split = spec_split or split
        loaded = _load(name)
        if hasattr(loaded, "keys") and not hasattr(loaded, "features"):  # a DatasetDict
            names = [spec_split] if spec_split else SPLIT_ALIASES.get(split, [split])
            chosen = next((n for n in names if n in loaded), None)
            if chosen is None:
                raise DataError(f"hf:{name}: no split {' / '.join(names)}; it has {', '.join(loaded.keys())}")
            self.hf_split = chosen
            ds = loaded[chosen]
        else:
            self.hf_split = spec_split or split
            ds = loaded
        features = ds.features
        import datasets

        self.image_col = next((c for c, f in features.items() if isinstance(f, datasets.Image)), None)
        if self.image_col is None:
            self.image_col = next((c for c in ("image", "img") if c in features), None)
        if self.image_col is None:
            raise DataError(f"hf:{name}: no image column (features: {', '.join(features)})")
        label_col = next((c for c, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
        if label_col is not None:
            self.class_names = list(features[label_col].names)
            self._labels = np.asarray(ds[label_col], dtype=np.int64)
        else:
            label_col = next((c for c in ("label", "labels") if c in features), None)
            if label_col is None:
                raise DataError(f"hf:{name}: no ClassLabel or 'label' column (features: "
                                f"{', '.join(features)})")
            values = list(ds[label_col])
            uniq = sorted(set(values))
            self.class_names = [str(v) for v in uniq]
            lookup = {v: i for i, v in enumerate(uniq)}
            self._labels = np.asarray([lookup[v] for v in values], dtype=np.int64)
        id_col = next((c for c in ("image_id", "id") if c in features), None)
        self._ids = ([str(v) for v in ds[id_col]] if id_col
                     else [f"{self.hf_split}/{i:06d}" for i in range(len(ds))])
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def load(self, index: int) -> Image.Image:
        try:
            value = self.ds[int(index)][self.image_col]
            if isinstance(value, Image.Image):
                return to_rgb(value)
            if isinstance(value, dict) and value.get("path"):
                from visae.datasets.images import load_image_file

                return load_image_file(value["path"])
            return array_to_rgb(np.asarray(value))
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{self.spec} row {index} ({self._ids[index]}): unreadable image ({e})") from None

    def label(self, index: int) -> int:
        return int(self._labels[index])

    def image_id(self, index: int) -> str:
        return self._ids[index]

    @property
    def labels(self) -> np.ndarray:
        return self._labels.copy()
