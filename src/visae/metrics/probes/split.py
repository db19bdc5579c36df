"""The stratified train/test split of every probe (paper Table 2: 80/20, seed 42)."""

from __future__ import annotations

import math

import numpy as np

from visae.errors import DataError


def stratified_split(labels_n: np.ndarray, test_size: float = 0.2,
                     seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/test indices (paper Table 2: 80/20, seed 42), as
    ``sklearn.model_selection.train_test_split``.

    Classes with a single image cannot be split: they go to the training side.
    """
    from sklearn.model_selection import train_test_split

    labels_n = np.asarray(labels_n)
    index_n = np.arange(len(labels_n))
    classes, counts = np.unique(labels_n, return_counts=True)
    single = np.isin(labels_n, classes[counts < 2])
    rest = index_n[~single]
    if len(rest) < 2:
        raise DataError(f"stratified_split: {len(labels_n)} labelled images with {len(classes)} classes: too "
                        "few to split; evaluate on more images")
    n_classes_rest = len(np.unique(labels_n[rest]))
    n_test = max(math.ceil(test_size * len(rest)), n_classes_rest)
    if len(rest) - n_test < n_classes_rest:
        raise DataError(f"stratified_split: {len(rest)} images cannot hold {n_classes_rest} classes in both "
                        "splits; evaluate on more images per class")
    train, test = train_test_split(rest, test_size=n_test, random_state=seed, stratify=labels_n[rest])
    train = np.sort(np.concatenate([train, index_n[single]]))
    return train, np.sort(test)
