"""The ADE20K source reads the published ADEChallengeData2016 layout: images, scene labels and masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visae.datasets.ade20k import ADE20KSource, open_ade20k, split_of_id
from visae.errors import DataError


def write_ade20k(root: Path, n_train: int = 3, n_val: int = 2, size: tuple[int, int] = (48, 64),
                 masks: dict[str, np.ndarray] | None = None, scenes: bool = True) -> Path:
    """A tiny ADEChallengeData2016 folder: RGB JPEGs and 8-bit PNG masks (random unless given)."""
    rng = np.random.default_rng(0)
    lines = []
    for sub, prefix, n in (("training", "ADE_train", n_train), ("validation", "ADE_val", n_val)):
        (root / "images" / sub).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / sub).mkdir(parents=True, exist_ok=True)
        for i in range(1, n + 1):
            stem = f"{prefix}_{i:08d}"
            Image.fromarray(rng.integers(0, 255, (*size, 3),
                                         dtype=np.uint8)).save(root / "images" / sub / f"{stem}.jpg")
            mask = (masks or {}).get(stem)
            if mask is None:
                mask = rng.integers(0, 151, size, dtype=np.uint8)
            Image.fromarray(mask.astype(np.uint8), mode="L").save(root / "annotations" / sub / f"{stem}.png")
            lines.append(f"{stem} {'kitchen' if i % 2 else 'street'}")
    if scenes:
        (root / "sceneCategories.txt").write_text("\n".join(lines) + "\n")
    return root


def test_layout_labels_and_masks(tmp_path: Path) -> None:
    root = write_ade20k(tmp_path / "ADEChallengeData2016")
    (root / "objectInfo150.csv").write_text("Idx,Ratio,Train,Val,Name\n1,0.1,1,1,wall\n"
                                            "2,0.1,1,1,building;edifice\n")
    train = open_ade20k(str(tmp_path), "train")  # the parent folder works too
    assert len(train) == 3 and train.split == "train"
    assert train.image_id(0) == "images/training/ADE_train_00000001.jpg"
    assert train.class_names == ["kitchen", "street"] and list(train.labels) == [0, 1, 0]
    assert train.seg_class_names[:3] == ["wall", "building", "class_3"] and len(train.seg_class_names) == 150
    assert train.load(0).mode == "RGB" and train.load(0).size == (64, 48)
    mask = train.load_mask(1)
    assert mask.shape == (48, 64) and mask.dtype == np.uint8
    expected = np.asarray(Image.open(root / "annotations" / "training" / "ADE_train_00000002.png"))
    np.testing.assert_array_equal(mask, expected)
    val_id = "images/validation/ADE_val_00000002.jpg"
    np.testing.assert_array_equal(train.load_mask_by_id(val_id), ADE20KSource(root, "val").load_mask(1))
    assert split_of_id(val_id) == "val" and split_of_id("img000001") is None
    assert train.index_of("images/training/ADE_train_00000003.jpg") == 2


def test_without_scene_file_and_errors(tmp_path: Path) -> None:
    root = write_ade20k(tmp_path, scenes=False)
    val = ADE20KSource(root, "val")
    assert val.class_names == ["ade20k"] and list(val.labels) == [0, 0]
    with pytest.raises(DataError, match="not an ADE20K folder"):
        ADE20KSource(tmp_path / "nowhere")
    with pytest.raises(DataError, match="no image with id"):
        val.index_of("images/validation/missing.jpg")
    (root / "annotations" / "validation" / "ADE_val_00000001.png").unlink()
    with pytest.raises(DataError, match="annotation missing"):
        val.load_mask(0)
