"""Image sets inside Python packages (``offline:digits|faces|textures|mnist``): sizes, splits, subsets, and
pixels equal to the packages' own arrays."""

from __future__ import annotations

import numpy as np
import pytest

from visae.datasets.registry import open_source


@pytest.mark.parametrize(("spec", "n_all", "n_classes"), [
    ("offline:digits", 1797, 10), ("offline:faces", 200, 2), ("offline:textures", 300, 3),
    ("offline:mnist", 5000, 10),
])
def test_offline_sets(spec, n_all, n_classes):
    tr = open_source(spec, "train")
    te = open_source(spec, "test")
    assert len(tr) + len(te) == n_all
    assert open_source(spec, "val").image_id(0) == te.image_id(0)
    assert len(tr.class_names) == n_classes and set(np.unique(tr.labels)) == set(range(n_classes))
    assert not set(tr.image_id(i) for i in range(len(tr))) & set(te.image_id(i) for i in range(len(te)))
    img = tr.load(0)
    assert img.mode == "RGB"
    sub = open_source(spec, "train", max_images=20, seed=1)
    assert len(sub) == 20 and sub.spec.endswith("#stratified-20-seed1")
    assert sub.fingerprint() == open_source(spec, "train", max_images=20, seed=1).fingerprint()
    assert sub.fingerprint() != open_source(spec, "train", max_images=20, seed=2).fingerprint()


def test_offline_content():
    faces = open_source("offline:faces", "all")
    assert faces.labels[:100].sum() == 0 and faces.labels[100:].sum() == 100
    from skimage import data
    lfw = data.lfw_subset()
    assert np.array_equal(np.asarray(faces.load(5))[:, :, 0], np.rint(lfw[5] * 255).astype(np.uint8))
    digits = open_source("offline:digits", "all")
    from sklearn.datasets import load_digits
    d = load_digits()
    assert np.array_equal(np.asarray(digits.load(7))[:, :, 1],
                          np.rint(d.images[7] * 255 / 16).astype(np.uint8))
    tex = open_source("offline:textures", "all")
    assert tex.load(0).size == (48, 48) and tex.class_names == ["brick", "grass", "gravel"]
    assert np.array_equal(np.asarray(tex.load(1))[:, :, 2], data.brick()[:48, 48:96])
