"""Fashion-MNIST read from its IDX files: the official split sizes, class balance and names."""

from __future__ import annotations

import numpy as np
import pytest

from visae.datasets.offline.fashion_mnist import find_idx_dir
from visae.datasets.registry import open_source


@pytest.mark.skipif(find_idx_dir() is None, reason="Fashion-MNIST not on this machine (make test fetches it: "
                                                   "visae data fetch fashion-mnist)")
def test_fashion_mnist_idx():
    tr = open_source("fashion-mnist", "train")
    te = open_source("fashion-mnist", "test")
    assert (len(tr), len(te)) == (60000, 10000)
    assert np.bincount(te.labels).tolist() == [1000] * 10
    assert tr.class_names[9] == "Ankle boot" and te.image_id(3) == "test/00003"
    assert tr.load(0).size == (28, 28) and tr.load(0).mode == "RGB"
    assert open_source("fashion-mnist", "val").fingerprint()["ids"] == te.fingerprint()["ids"]
