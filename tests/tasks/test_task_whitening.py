"""Whitening before the task probes (App. C, as m3.whiten): classification against a reference fitted on
the raw training split, codes untouched, recon whitened with the raw fit; segmentation keeps a separable
head separable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from visae.backbones.layout import TokenLayout
from visae.cache.reader import open_cache
from visae.cache.testing import write_synthetic_cache
from visae.cache.whitening import whiten_rows, whitening_of_rows
from visae.metrics.probes import ProbeConfig, fit_probe, stratified_split
from visae.tasks import run_task
from visae.tasks.base import pooled_features

LAYOUT = TokenLayout(("cls",), 2, 2, 16)
SEG_LAYOUT = TokenLayout(("cls",), 4, 4, 16)  # 64 × 64 input
N_SEG = 5


def class_cache(tmp_path: Path, name: str, n_per_class: int, sep: float, seed: int = 0, d: int = 8,
                n_classes: int = 4):
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(99).normal(size=(n_classes, d)) * sep
    labels = np.repeat(np.arange(n_classes), n_per_class)
    acts = means[labels][:, None, :] + rng.normal(size=(len(labels), LAYOUT.n_patches, d))
    return open_cache(write_synthetic_cache(tmp_path / name, acts.astype(np.float16), labels,
                                            [f"c{i}" for i in range(n_classes)], LAYOUT))


def write_planted(root: Path, n_train: int, n_val: int, seed: int = 0) -> dict[str, np.ndarray]:
    """ADE20K-layout images whose masks are 16-px blocks of classes 1..N_SEG; per-split patch labels."""
    rng = np.random.default_rng(seed)
    patch_labels: dict[str, np.ndarray] = {}
    for sub, prefix, n in (("training", "ADE_train", n_train), ("validation", "ADE_val", n_val)):
        (root / "images" / sub).mkdir(parents=True)
        (root / "annotations" / sub).mkdir(parents=True)
        labs = []
        for i in range(1, n + 1):
            stem = f"{prefix}_{i:08d}"
            grid = rng.integers(1, N_SEG + 1, (4, 4))
            mask = np.kron(grid, np.ones((16, 16), dtype=np.int64)).astype(np.uint8)
            Image.fromarray(mask, mode="L").save(root / "annotations" / sub / f"{stem}.png")
            Image.fromarray(rng.integers(0, 255, (64, 64, 3),
                                         dtype=np.uint8)).save(root / "images" / sub / f"{stem}.jpg")
            labs.append(grid.ravel())
        patch_labels[sub] = np.stack(labs)
    return patch_labels


def planted_cache(tmp_path: Path, name: str, labels_np: np.ndarray, sub: str, prefix: str, d: int = 12):
    rng = np.random.default_rng(7)
    emb = np.random.default_rng(123).normal(size=(N_SEG + 1, d)) * 2
    acts = emb[labels_np] + 0.05 * rng.normal(size=(*labels_np.shape, d))
    ids = [f"images/{sub}/{prefix}_{i:08d}.jpg" for i in range(1, len(labels_np) + 1)]
    return open_cache(write_synthetic_cache(tmp_path / name, acts.astype(np.float16),
                                            np.zeros(len(ids), np.int64), ["ade20k"], SEG_LAYOUT,
                                            image_ids=ids))


def test_classification_whitening_equals_the_reference(tmp_path: Path, make_split_sae) -> None:
    cache = class_cache(tmp_path, "dtd", 25, sep=0.6, seed=3)
    probe = {"C": 0.05, "max_iter": 2000}
    sae = make_split_sae(8)
    res = run_task("dtd", sae, cache, {"features": ["raw", "codes", "recon"], "whiten": "zca",
                                       "probe": probe}, device="cpu")
    feats = pooled_features(cache, sae, ["raw", "recon"], torch.device("cpu"))
    tr, te = stratified_split(cache.labels, 0.2, 42)
    w = whitening_of_rows("zca", np.asarray(feats["raw"])[tr])
    for kind in ("raw", "recon"):
        x = whiten_rows(w, np.asarray(feats[kind]))
        ref = fit_probe(x[tr], cache.labels[tr], ProbeConfig(**probe)).accuracy(x[te], cache.labels[te])
        assert res.scores[f"task:dtd_acc:{kind}"] == ref
    plain = run_task("dtd", sae, cache, {"features": ["codes"], "probe": probe}, device="cpu")
    assert res.scores["task:dtd_acc:codes"] == plain.scores["task:dtd_acc:codes"]  # codes: not whitened
    recon_only = run_task("dtd", sae, cache, {"features": ["recon"], "whiten": "zca", "probe": probe},
                          device="cpu")  # fitted on raw even when raw is not asked for
    assert recon_only.scores["task:dtd_acc:recon"] == res.scores["task:dtd_acc:recon"]
    assert "zca-whitened" in res.protocol


def test_segmentation_whitening_keeps_a_separable_head_and_leaves_codes(tmp_path: Path,
                                                                        make_split_sae) -> None:
    root = tmp_path / "ADEChallengeData2016"
    labels = write_planted(root, n_train=24, n_val=8)
    train = planted_cache(tmp_path, "train", labels["training"], "training", "ADE_train")
    val = planted_cache(tmp_path, "val", labels["validation"], "validation", "ADE_val")
    cfg = {"source": f"ade20k:{root}", "features": ["raw", "codes", "recon"], "epochs": 30, "lr": 0.1,
           "batch_size": 4096}
    caches = {"train": train, "val": val}
    sae = make_split_sae(12)
    white = run_task("segmentation", sae, caches, {**cfg, "whiten": "pca"}, device=torch.device("cpu"))
    plain = run_task("segmentation", sae, caches, {**cfg, "features": ["codes"]}, device=torch.device("cpu"))
    for kind in ("raw", "recon"):  # an affine map keeps separable regions separable
        assert white.scores[f"task:segmentation_miou:{kind}"] == 1.0, white.scores
    assert white.scores["task:segmentation_miou:codes"] == plain.scores["task:segmentation_miou:codes"]
    assert "pca-whitened" in white.protocol
