"""Segmentation: mask → patch-grid geometry against torchvision, and mIoU = 1 on separable planted regions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from visae.backbones.layout import TokenLayout
from visae.cache.reader import open_cache
from visae.cache.testing import write_synthetic_cache
from visae.tasks import run_task
from visae.tasks.segmentation import crop_box, mask_to_patch_labels, miou_from_confusion

LAYOUT = TokenLayout(("cls",), 4, 4, 16)  # 64 × 64 input
N_SEG = 5


def reference_patch_labels(mask: np.ndarray, tf: transforms.Compose, grid: int, patch: int) -> np.ndarray:
    """Apply the transform to the mask with nearest interpolation, then take each patch's majority label."""
    out = np.asarray(tf(Image.fromarray(mask)))
    blocks = out.reshape(grid, patch, grid, patch).transpose(0, 2, 1, 3).reshape(grid * grid, -1)
    return np.array([np.bincount(b, minlength=256)[1:].argmax() + 1 if (b > 0).mean() >= 0.5 else 0
                     for b in blocks])


@pytest.mark.parametrize(("pre", "tf"), [
    ({"resize_shorter": 256, "center_crop": 224},
     transforms.Compose([transforms.Resize(256, interpolation=transforms.InterpolationMode.NEAREST),
                         transforms.CenterCrop(224)])),
    ({"input_size": [3, 224, 224], "crop_pct": 0.875, "crop_mode": "squash"},
     transforms.Compose([transforms.Resize((256, 256), interpolation=transforms.InterpolationMode.NEAREST),
                         transforms.CenterCrop(224)])),
])
def test_patch_labels_follow_the_backbone_geometry(pre: dict, tf: transforms.Compose) -> None:
    rng = np.random.default_rng(0)
    # blocky mask (20-px cells) on a non-square image, some unlabelled cells
    cells = rng.integers(0, 6, (15, 20)).astype(np.uint8)
    mask = np.kron(cells, np.ones((20, 20), dtype=np.uint8))  # 300 × 400
    box = crop_box(*mask.shape, pre, (224, 224))
    ours = mask_to_patch_labels(mask, (16, 16), box, n_classes=150)
    ref = reference_patch_labels(mask, tf, 16, 14)
    assert np.mean(ours == ref) >= 0.95


def test_miou_closed_form() -> None:
    conf = np.zeros((4, 4), dtype=np.int64)
    conf[1, 1], conf[1, 2], conf[2, 2] = 3, 1, 2  # class 1: 3/(3+1); class 2: 2/(2+1); class 3 absent
    miou, iou = miou_from_confusion(conf)
    assert miou == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert np.isnan(iou[2])


def write_planted(root: Path, n_train: int, n_val: int, seed: int = 0) -> tuple[dict[str, np.ndarray], dict]:
    """ADE20K-layout images whose masks are 16-px blocks of classes 1..N_SEG; returns per-split patch
    labels."""
    rng = np.random.default_rng(seed)
    patch_labels: dict[str, np.ndarray] = {}
    for sub, prefix, n in (("training", "ADE_train", n_train), ("validation", "ADE_val", n_val)):
        (root / "images" / sub).mkdir(parents=True)
        (root / "annotations" / sub).mkdir(parents=True)
        labs = []
        for i in range(1, n + 1):
            stem = f"{prefix}_{i:08d}"
            grid = rng.integers(1, N_SEG + 1, (4, 4))
            grid[0, 0] = 0  # one fully unlabelled patch: ignored
            mask = np.kron(grid, np.ones((16, 16), dtype=np.int64)).astype(np.uint8)
            Image.fromarray(mask, mode="L").save(root / "annotations" / sub / f"{stem}.png")
            Image.fromarray(rng.integers(0, 255, (64, 64, 3),
                                         dtype=np.uint8)).save(root / "images" / sub / f"{stem}.jpg")
            labs.append(grid.ravel())
        patch_labels[sub] = np.stack(labs)
    return patch_labels, {}


def planted_cache(tmp_path: Path, name: str, labels_np: np.ndarray, sub: str, prefix: str, d: int = 12,
                  noise: float = 0.05):
    rng = np.random.default_rng(7)
    emb = np.random.default_rng(123).normal(size=(N_SEG + 1, d)) * 2
    acts = emb[labels_np] + noise * rng.normal(size=(*labels_np.shape, d))
    ids = [f"images/{sub}/{prefix}_{i:08d}.jpg" for i in range(1, len(labels_np) + 1)]
    return open_cache(write_synthetic_cache(tmp_path / name, acts.astype(np.float16),
                                            np.zeros(len(ids), np.int64),
                                            ["ade20k"], LAYOUT, image_ids=ids))


def test_separable_regions_give_miou_one(tmp_path: Path, make_split_sae) -> None:
    root = tmp_path / "ADEChallengeData2016"
    labels, _ = write_planted(root, n_train=24, n_val=8)
    train = planted_cache(tmp_path, "train", labels["training"], "training", "ADE_train")
    val = planted_cache(tmp_path, "val", labels["validation"], "validation", "ADE_val")
    cfg = {"source": f"ade20k:{root}", "features": ["raw", "codes", "recon"], "epochs": 30, "lr": 0.1,
           "batch_size": 4096}
    res = run_task("segmentation", make_split_sae(12), {"train": train, "val": val}, cfg,
                   out_dir=tmp_path / "out",
                   device=torch.device("cpu"))
    for kind in ("raw", "codes", "recon"):
        assert res.scores[f"task:segmentation_miou:{kind}"] == 1.0, res.scores
    assert res.n_eval == 8 * 15 and res.n_train == 24 * 15  # the unlabelled patch of each image is ignored
    assert (tmp_path / "out" / "task_segmentation.json").is_file()


def test_single_cache_split_and_shuffled_features(tmp_path: Path) -> None:
    root = tmp_path / "ADEChallengeData2016"
    labels, _ = write_planted(root, n_train=30, n_val=1)
    cache = planted_cache(tmp_path, "c", labels["training"], "training", "ADE_train")
    cfg = {"source": f"ade20k:{root}", "epochs": 40, "lr": 0.05, "batch_size": 4096}
    good = run_task("segmentation", None, cache, cfg, device="cpu")
    assert good.scores["task:segmentation_miou:raw"] == 1.0 and "one cache split" in good.protocol
    # features that carry no label information: mIoU falls far below 1
    rng = np.random.default_rng(5)
    noise = planted_cache(tmp_path, "noise", rng.integers(1, N_SEG + 1, labels["training"].shape), "training",
                          "ADE_train")
    bad = run_task("segmentation", None, noise, cfg, device="cpu")
    assert bad.scores["task:segmentation_miou:raw"] < 0.5


def test_end_to_end_from_an_ade20k_cache(tmp_path: Path) -> None:
    """visae cache on ade20k:ROOT (tiny random ViT) → segmentation on the cached patch features."""
    from visae.cache.testing import TinyViTBackbone
    from visae.cache.writer import build_cache

    rng = np.random.default_rng(0)
    colours = rng.integers(0, 255, (N_SEG + 1, 3))
    root = tmp_path / "ADEChallengeData2016"
    for sub, prefix, n in (("training", "ADE_train", 24), ("validation", "ADE_val", 8)):
        (root / "images" / sub).mkdir(parents=True)
        (root / "annotations" / sub).mkdir(parents=True)
        for i in range(1, n + 1):
            grid = rng.integers(1, N_SEG + 1, (2, 2))  # quadrants of a 64 × 48 image
            mask = np.kron(grid, np.ones((24, 32), dtype=np.int64)).astype(np.uint8)
            Image.fromarray(mask, mode="L").save(root / "annotations" / sub / f"{prefix}_{i:08d}.png")
            image = Image.fromarray(colours[mask].astype(np.uint8))
            image.save(root / "images" / sub / f"{prefix}_{i:08d}.png")
    backbone = TinyViTBackbone(seed=0, device="cpu")
    caches = {split: open_cache(build_cache(backbone, f"ade20k:{root}", layer=0, out_dir=tmp_path / "caches",
                                            split=split, num_workers=0, progress=False, device="cpu"))
              for split in ("train", "val")}
    res = run_task("segmentation", None, caches, {"epochs": 40, "lr": 0.1, "batch_size": 4096}, device="cpu")
    assert res.n_eval == 8 * 16
    assert res.scores["task:segmentation_miou:raw"] > 0.8, res.scores
