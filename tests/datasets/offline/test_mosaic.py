"""texture-mosaic: deterministic offline segmentation images whose masks say which photo each pixel shows."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("skimage")

from visae.datasets.offline.mosaic import N_MOSAICS, N_TRAIN, TEXTURES, make_mosaics
from visae.datasets.registry import open_source
from visae.errors import DataError
from visae.tasks.segmentation import mask_to_patch_labels, open_mask_source


def test_splits_ids_labels_and_masks() -> None:
    train, test, every = (open_source("texture-mosaic", s) for s in ("train", "test", "all"))
    assert (len(train), len(test), len(every)) == (N_TRAIN, N_MOSAICS - N_TRAIN, N_MOSAICS)
    assert not {train.image_id(i) for i in range(len(train))} & {test.image_id(i) for i in range(len(test))}
    assert train.class_names == list(TEXTURES) and train.load(0).size == (112, 112)
    masks = open_mask_source("texture-mosaic#stratified-120-seed42")  # a subset's spec names the same masks
    for src in (train, test):
        for i in (0, len(src) - 1):
            mask = masks.load_mask_by_id(src.image_id(i))
            assert set(np.unique(mask)) <= {1, 2, 3}
            assert src.label(i) == np.bincount(mask.ravel(), minlength=4)[1:].argmax()
    assert np.mean([len(np.unique(masks.load_mask_by_id(f"mosaic/{i:03d}"))) >= 2
                    for i in range(N_MOSAICS)]) > 0.95
    with pytest.raises(DataError, match="no mosaic"):
        masks.load_mask_by_id("mosaic/x")


def test_pixels_come_from_the_photo_the_mask_names() -> None:
    from skimage import data

    images, masks, offsets = make_mosaics()
    assert np.array_equal(images, make_mosaics.__wrapped__()[0])  # deterministic
    photos = [np.asarray(getattr(data, name)()) for name in TEXTURES]
    for i in (0, 7, 199):
        for t, photo in enumerate(photos):
            region = masks[i] == t + 1
            r, c = offsets[i, t]
            assert np.array_equal(photo[r:r + 112, c:c + 112][region], images[i][region])
            others = [p[o[0]:o[0] + 112, o[1]:o[1] + 112] for p, o in zip(photos, offsets[i], strict=True)]
            if region.sum() > 100:  # and not the other photos' pixels
                assert all(not np.array_equal(x[region], images[i][region]) for k,
                           x in enumerate(others) if k != t)


def test_masks_map_to_patch_labels() -> None:
    _, masks, _ = make_mosaics()
    labels = mask_to_patch_labels(masks[0], (7, 7), (0.0, 0.0, 112.0, 112.0), 3, 0.5)
    assert labels.shape == (49,) and set(np.unique(labels)) <= {1, 2, 3}
