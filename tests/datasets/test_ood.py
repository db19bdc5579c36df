"""OOD readers: iNaturalist 2021 (JSON and folders), CUB-200-2011, DTD, built as tiny fake trees."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from visae.datasets import registry
from visae.datasets.ood import open_cub, open_dtd, open_inat, open_ood
from visae.errors import DataError


def img(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(path)


def test_inat_json_and_folders(tmp_path) -> None:
    cats = [{"id": 5, "name": "B b", "image_dir_name": "00001_B_b"},
            {"id": 2, "name": "A a", "image_dir_name": "00000_A_a"}]
    for split, rows in (("train", [(1, 2), (2, 5), (3, 5)]), ("val", [(9, 2)])):
        images, anns = [], []
        for iid, cid in rows:
            d = next(c["image_dir_name"] for c in cats if c["id"] == cid)
            fn = f"{split}/{d}/{iid}.jpg"
            img(tmp_path / fn)
            images.append({"id": iid, "file_name": fn})
            anns.append({"id": iid, "image_id": iid, "category_id": cid})
        (tmp_path / f"{split}.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                            "categories": cats}))
    s = open_inat(tmp_path, "train")
    assert s.class_names == ["00000_A_a", "00001_B_b"] and len(s) == 3
    assert s.labels.tolist() == [0, 1, 1] and s.load(0).mode == "RGB"
    assert len(open_inat(tmp_path, "test")) == 1 and len(open_inat(tmp_path, "all")) == 4
    for p in tmp_path.glob("*.json"):
        p.unlink()
    f = open_inat(tmp_path, "train")  # class folders give the same classes and labels
    assert f.class_names == s.class_names and f.labels.tolist() == [0, 1, 1]


def test_cub(tmp_path) -> None:
    root = tmp_path / "CUB_200_2011"
    files = ["001.Albatross/a1.jpg", "001.Albatross/a2.jpg", "002.Auklet/b1.jpg", "002.Auklet/b2.jpg"]
    for f in files:
        img(root / "images" / f)
    (root / "images.txt").write_text("".join(f"{i + 1} {f}\n" for i, f in enumerate(files)))
    (root / "image_class_labels.txt").write_text("1 1\n2 1\n3 2\n4 2\n")
    (root / "train_test_split.txt").write_text("1 1\n2 0\n3 1\n4 0\n")
    (root / "classes.txt").write_text("1 001.Albatross\n2 002.Auklet\n")
    tr = open_cub(tmp_path, "train")  # the parent folder works too
    assert tr.class_names == ["001.Albatross", "002.Auklet"] and tr.labels.tolist() == [0, 1]
    assert [tr.image_id(i) for i in range(2)] == ["images/001.Albatross/a1.jpg", "images/002.Auklet/b1.jpg"]
    assert open_cub(root, "test").labels.tolist() == [0, 1] and tr.load(1).size == (8, 8)


def test_dtd_folds_and_errors(tmp_path) -> None:
    for c in ("banded", "zigzagged"):
        for i in range(3):
            img(tmp_path / "images" / c / f"{c}_{i}.jpg")
    (tmp_path / "labels").mkdir()
    for fold in (1, 2):
        (tmp_path / "labels" / f"train{fold}.txt").write_text(
            f"banded/banded_{fold}.jpg\nzigzagged/zigzagged_0.jpg\n")
        (tmp_path / "labels" / f"val{fold}.txt").write_text("banded/banded_0.jpg\n")
        (tmp_path / "labels" / f"test{fold}.txt").write_text("zigzagged/zigzagged_2.jpg\n")
    s = open_dtd(tmp_path, "train")
    assert s.class_names == ["banded", "zigzagged"] and s.labels.tolist() == [0, 1]
    assert s.image_id(0) == "images/banded/banded_1.jpg"
    s2 = open_ood("dtd", f"{tmp_path}?fold=2", "train")
    assert s2.image_id(0) == "images/banded/banded_2.jpg" and s2.spec.endswith("?fold=2")
    assert len(open_dtd(tmp_path, "all")) == 4
    with pytest.raises(DataError, match="fold 3"):
        open_dtd(tmp_path, "train", fold=3)
    with pytest.raises(DataError, match="missing"):
        open_cub(tmp_path, "train")


def test_registry_specs(tmp_path) -> None:
    for c in ("a", "b"):
        img(tmp_path / "images" / c / "x.jpg")
    (tmp_path / "labels").mkdir()
    for part in ("train", "val", "test"):
        (tmp_path / "labels" / f"{part}1.txt").write_text("a/x.jpg\nb/x.jpg\n")
    s = registry.open_source(f"dtd:{tmp_path}", split="test")
    assert len(s) == 2 and s.spec == f"dtd:{tmp_path}"
