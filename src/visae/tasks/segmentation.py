"""Semantic segmentation with a linear head on patch features (H1): mIoU on ADE20K.

Protocol.
1. Patch labels. Each image's mask is mapped through the backbone's own preprocessing geometry (read from
   the cache manifest: resize of the shorter side then center crop, timm's ``crop_pct``/``crop_mode``, or
   a plain resize to the input size) onto the patch grid; a patch takes the majority class of the labelled
   pixels it covers, and is ignored (label 0) when fewer than ``min_labelled_fraction`` of its pixels are
   labelled. Masks are thus *downsampled to the patch grid by majority*, and mIoU is computed at the patch
   grid.
2. Head. One linear classifier ``W x + b`` per feature kind (raw, codes, recon), trained with torch (AdamW,
   cross-entropy, mini-batches) on up to ``max_train_patches`` labelled training patches (sampled with the
   seed). Inputs are divided by their per-dimension standard deviation on the training patches.
3. Score. Every labelled patch of the validation images is predicted; per-class IoU = TP / (TP + FP + FN)
   over all validation patches; mIoU is the mean over classes that occur in the ground truth or the
   predictions (classes with an empty union are left out, as in mmsegmentation's ``nanmean``).

``whiten: pca|zca`` (App. C ablation, as ``m3.whiten``): raw and reconstructed patch features are whitened
before the head with one map fitted on the raw features of the sampled training patches (step 2's rows),
and the same map is applied to the validation patches; codes are not whitened.

Train and validation: two caches (``{"train": …, "val": …}``, e.g. ADE20K training and validation), or one
cache split 80/20 by image with the seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import Field

from visae.cache.reader import ActivationCache
from visae.cache.whitening import Whitening, whiten_rows, whitening_of_rows
from visae.errors import ConfigError, DataError
from visae.sae.base import SAE
from visae.tasks.base import (
    FeatureGroup,
    TaskConfig,
    TaskResult,
    check_features,
    headline,
    iter_features,
    train_and_held_out,
)
from visae.tasks.registry import TaskSpec


class SegmentationConfig(TaskConfig):
    """Settings of the segmentation task."""

    source: str | None = Field(
        None, description="image source with masks, e.g. 'ade20k:/data/ADEChallengeData2016' (None: the "
                          "cache's own source)")
    n_classes: int = Field(150, ge=1, description="segmentation classes 1 … n_classes; 0 is the ignore index "
                                                  "(ADE20K: 150)")
    geometry: Literal["auto", "center_crop", "squash"] = Field(
        "auto", description="how masks map onto the patch grid: auto (from the cache's preprocessing), "
        "center_crop (shorter side resized, centre cropped) or squash (whole image resized to the "
        "input size)")
    min_labelled_fraction: float = Field(
        0.5, ge=0, le=1,
        description="a patch is ignored when fewer than this fraction of its pixels are labelled")
    max_train_patches: int = Field(262144, ge=1,
                                   description="labelled training patches the head sees (seeded sample)")
    val_fraction: float = Field(0.2, gt=0, lt=1,
                                description="single-cache mode: fraction of images held out for scoring")
    epochs: int = Field(20, ge=1, description="passes of the head's optimizer over the training patches")
    batch_size: int = Field(1024, ge=1, description="patches per optimizer step")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate of the linear head")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay of the linear head")
    whiten: Literal["none", "pca", "zca"] = Field(
        "none", description="whiten raw and reconstructed patch features before the head, fitted on the raw "
                            "features of the sampled training patches (App. C ablation; codes are not "
                            "whitened; the paper: none)")


class MaskSource(Protocol):
    """Anything that returns a per-pixel class mask for an image id."""

    def load_mask_by_id(self, image_id: str) -> np.ndarray: ...


# --- masks → patch labels ----------------------------------------------------------------------------------


def crop_box(h: int, w: int, preprocessing: Mapping[str, Any], out_hw: tuple[int, int],
             geometry: str = "auto") -> tuple[float, float, float, float]:
    """The region ``(y0, x0, y1, x1)`` of an ``h × w`` image (pixel coordinates) that the preprocessing maps
    onto the ``out_hw`` input; see the module docstring for the recognised preprocessing keys."""
    oh, ow = out_hw
    pre = preprocessing
    mode = geometry
    if mode == "auto":
        centred = "resize_shorter" in pre or ("crop_pct" in pre
                                              and pre.get("crop_mode", "center") != "squash")
        mode = "center_crop" if centred else "squash"
    pct = float(pre.get("crop_pct") or 1.0)
    if mode == "center_crop" and (oh == ow or "resize_shorter" in pre):
        # torchvision Resize(int): the shorter side becomes s, the aspect ratio is kept
        s = float(pre["resize_shorter"]) if "resize_shorter" in pre else float(math.floor(oh / pct))
        fy = fx = s / min(h, w)
    else:
        # Resize((H, W)): each side scaled on its own (timm's squash mode, or a plain resize when pct = 1)
        fy, fx = math.floor(oh / pct) / h, math.floor(ow / pct) / w
    rh, rw = h * fy, w * fx
    top, left = (rh - oh) / 2, (rw - ow) / 2
    return top / fy, left / fx, (top + oh) / fy, (left + ow) / fx


def mask_to_patch_labels(mask_hw: np.ndarray, grid_hw: tuple[int, int],
                         box: tuple[float, float, float, float],
                         n_classes: int, min_labelled_fraction: float = 0.5) -> np.ndarray:
    """Majority class of the labelled pixels under each patch, row-major ``[grid_h · grid_w]`` (0 =
    ignored)."""
    gh, gw = grid_hw
    h, w = mask_hw.shape
    y0, x0, y1, x1 = box
    ys = np.floor((np.arange(h) + 0.5 - y0) / (y1 - y0) * gh).astype(np.int64)
    xs = np.floor((np.arange(w) + 0.5 - x0) / (x1 - x0) * gw).astype(np.int64)
    row_ok, col_ok = (ys >= 0) & (ys < gh), (xs >= 0) & (xs < gw)
    sub = mask_hw[np.ix_(row_ok, col_ok)].astype(np.int64)
    sub = np.where(sub > n_classes, 0, sub)  # out-of-range values count as unlabelled
    cell = (ys[row_ok][:, None] * gw + xs[col_ok][None, :]).ravel()
    counts = np.bincount(cell * (n_classes + 1) + sub.ravel(), minlength=gh * gw * (n_classes + 1))
    counts = counts.reshape(gh * gw, n_classes + 1)
    total = counts.sum(axis=1)
    labelled = counts[:, 1:]
    n_lab = labelled.sum(axis=1)
    out = labelled.argmax(axis=1) + 1
    keep = (n_lab > 0) & (n_lab >= min_labelled_fraction * np.maximum(total, 1))
    return np.where(keep, out, 0).astype(np.int64)


def open_mask_source(spec: str) -> MaskSource:
    """A mask source from a spec (``ade20k:<path>``, or any registered source with ``load_mask_by_id``)."""
    from visae.datasets.registry import open_source

    # a subset's spec ("ade20k:/root#stratified-500-seed42") names the same masks
    spec = spec.split("#", 1)[0]
    src = open_source(spec)
    if not hasattr(src, "load_mask_by_id"):
        raise ConfigError(f"segmentation source {spec!r} has no masks; use ade20k:<path>")
    return src  # type: ignore[return-value]


def patch_labels(cache: ActivationCache, masks: MaskSource, config: SegmentationConfig) -> np.ndarray:
    """``[N, P]`` patch labels (0 = ignored) of every cache image, from its mask."""
    layout = cache.layout
    grid = (layout.grid_h, layout.grid_w)
    pre = cache.manifest.preprocessing or {}
    out = np.zeros((cache.n_images, layout.n_patches), dtype=np.int64)
    for i, image_id in enumerate(cache.image_ids):
        mask = masks.load_mask_by_id(image_id)
        box = crop_box(mask.shape[0], mask.shape[1], pre, layout.image_size, config.geometry)
        out[i] = mask_to_patch_labels(mask, grid, box, config.n_classes, config.min_labelled_fraction)
    return out


# --- the linear head ---------------------------------------------------------------------------------------


def _rows(group: FeatureGroup, kind: str, keep_n: np.ndarray, patches: np.ndarray) -> torch.Tensor:
    return group.feats[kind][torch.as_tensor(keep_n), torch.as_tensor(patches)]


def collect_train(cache: ActivationCache, sae: SAE | None, kinds: Sequence[str], labels_np: np.ndarray,
                  images: np.ndarray, config: SegmentationConfig,
                  device: torch.device) -> tuple[dict[str, np.ndarray | sp.csr_matrix], np.ndarray]:
    """Features and labels of a seeded sample of labelled patches of ``images`` (codes as CSR)."""
    rng = np.random.default_rng(config.seed)
    chosen = np.zeros_like(labels_np, dtype=bool)
    chosen[images] = labels_np[images] > 0
    flat = np.flatnonzero(chosen)
    if len(flat) == 0:
        raise DataError(f"{cache.path}: no labelled patches in the training images; check the masks")
    if len(flat) > config.max_train_patches:
        keep = np.zeros(chosen.size, dtype=bool)
        keep[np.sort(rng.choice(flat, config.max_train_patches, replace=False))] = True
        chosen = keep.reshape(chosen.shape)
    parts: dict[str, list[Any]] = {k: [] for k in kinds}
    ys: list[np.ndarray] = []
    wanted = np.zeros(len(labels_np), dtype=bool)
    wanted[images] = True
    for group in iter_features(cache, sae, kinds, device, config.group_size):
        local = np.flatnonzero(wanted[group.index_n])
        if len(local) == 0:
            continue
        sel = chosen[group.index_n[local]]
        img_n, patch_n = np.nonzero(sel)
        if len(img_n) == 0:
            continue
        ys.append(labels_np[group.index_n[local][img_n], patch_n])
        for k in kinds:
            x = _rows(group, k, local[img_n], patch_n).cpu().numpy().astype(np.float32)
            parts[k].append(sp.csr_matrix(x) if k == "codes" else x)
    feats = {k: sp.vstack(v).tocsr() if k == "codes" else np.concatenate(v) for k, v in parts.items()}
    return feats, np.concatenate(ys)


def _column_scale(x: np.ndarray | sp.csr_matrix) -> np.ndarray:
    if sp.issparse(x):
        xs = sp.csr_matrix(x)
        mean = np.asarray(xs.mean(axis=0)).ravel()
        sq = np.asarray(xs.multiply(xs).mean(axis=0)).ravel()
        std = np.sqrt(np.maximum(sq - mean**2, 0))
    else:
        std = np.asarray(x, dtype=np.float64).std(axis=0)
    return np.where(std > 1e-8, std, 1.0).astype(np.float32)


def _batch_tensor(x: np.ndarray | sp.csr_matrix, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    sub = x[rows]
    if sp.issparse(sub):
        coo = sp.coo_matrix(sub)
        idx = torch.as_tensor(np.vstack([coo.row, coo.col]), dtype=torch.int64)
        return torch.sparse_coo_tensor(idx, torch.as_tensor(coo.data, dtype=torch.float32), coo.shape,
                                       check_invariants=False).to(device)
    return torch.as_tensor(sub, device=device)


class LinearHead:
    """A per-patch linear classifier over ``classes`` (label values), inputs divided by ``scale_d``."""

    def __init__(self, weight_cd: torch.Tensor, bias_c: torch.Tensor, scale_d: torch.Tensor,
                 classes: np.ndarray, whitening: Whitening | None = None) -> None:
        self.weight_cd, self.bias_c, self.scale_d, self.classes = weight_cd, bias_c, scale_d, classes
        self.whitening = whitening
        """Applied to the rows before the head (``whiten``), None: rows as they come."""

    @torch.no_grad()
    def predict(self, x_nd: torch.Tensor) -> np.ndarray:
        """Predicted label values for dense rows ``x_nd``."""
        if self.whitening is not None:
            x_nd = self.whitening.apply(x_nd)
        logits = (x_nd / self.scale_d) @ self.weight_cd.T + self.bias_c
        return self.classes[logits.argmax(dim=1).cpu().numpy()]


def train_head(x: np.ndarray | sp.csr_matrix, y_n: np.ndarray, config: SegmentationConfig,
               device: torch.device) -> LinearHead:
    """Fit the linear head with AdamW and cross-entropy on mini-batches (sparse inputs stay sparse)."""
    classes = np.unique(y_n)
    y_idx = torch.as_tensor(np.searchsorted(classes, y_n), device=device)
    scale = torch.as_tensor(_column_scale(x), device=device)
    d = x.shape[1]
    gen = torch.Generator().manual_seed(config.seed)
    weight = torch.zeros(len(classes), d, device=device, requires_grad=True)
    bias = torch.zeros(len(classes), device=device, requires_grad=True)
    opt = torch.optim.AdamW([weight, bias], lr=config.lr, weight_decay=config.weight_decay)
    n = len(y_n)
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=gen).numpy()
        for s in range(0, n, config.batch_size):
            rows = np.sort(order[s:s + config.batch_size])
            xb = _batch_tensor(x, rows, device)
            w_scaled = weight / scale  # (x / scale) Wᵀ = x (W / scale)ᵀ keeps sparse inputs sparse
            logits = (torch.sparse.mm(xb, w_scaled.T) if xb.is_sparse else xb @ w_scaled.T) + bias
            loss = torch.nn.functional.cross_entropy(logits, y_idx[torch.as_tensor(rows, device=device)])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return LinearHead(weight.detach(), bias.detach(), scale, classes)


# --- scoring -----------------------------------------------------------------------------------------------


def miou_from_confusion(conf_cc: np.ndarray) -> tuple[float | None, np.ndarray]:
    """mIoU over classes with a non-empty union and the per-class IoU (NaN where the union is empty);
    ``conf_cc[t, p]`` counts patches of true class t predicted as p (row/column 0 unused: ignore)."""
    conf = conf_cc[1:, 1:].astype(np.float64)
    tp = np.diag(conf)
    union = conf.sum(axis=0) + conf.sum(axis=1) - tp
    iou = np.divide(tp, union, out=np.full_like(tp, np.nan), where=union > 0)
    return (float(np.nanmean(iou)) if np.any(union > 0) else None), iou


def score_heads(cache: ActivationCache, sae: SAE | None, heads: Mapping[str, LinearHead],
                labels_np: np.ndarray,
                images: np.ndarray, n_classes: int, config: SegmentationConfig,
                device: torch.device) -> dict[str, np.ndarray]:
    """Confusion matrices ``[C+1, C+1]`` of every head over the labelled patches of ``images``."""
    conf = {k: np.zeros((n_classes + 1, n_classes + 1), dtype=np.int64) for k in heads}
    wanted = np.zeros(len(labels_np), dtype=bool)
    wanted[images] = True
    for group in iter_features(cache, sae, list(heads), device, config.group_size):
        local = np.flatnonzero(wanted[group.index_n])
        if len(local) == 0:
            continue
        img_n, patch_n = np.nonzero(labels_np[group.index_n[local]] > 0)
        if len(img_n) == 0:
            continue
        truth = labels_np[group.index_n[local][img_n], patch_n]
        for k, head in heads.items():
            pred = head.predict(_rows(group, k, local[img_n], patch_n))
            conf[k] += np.bincount(truth * (n_classes + 1) + pred,
                                   minlength=(n_classes + 1) ** 2).reshape(n_classes + 1, n_classes + 1)
    return conf


def run_segmentation(sae: SAE | None, caches: ActivationCache | Mapping[str, ActivationCache],
                     config: SegmentationConfig, device: torch.device) -> TaskResult:
    """mIoU of a linear head on patch features (raw / codes / recon), trained and scored as described
    above."""
    kinds = check_features(config.features, sae)
    if isinstance(caches, ActivationCache):
        train_cache = val_cache = caches
        rng = np.random.default_rng(config.seed)
        perm = rng.permutation(caches.n_images)
        n_val = max(1, round(config.val_fraction * caches.n_images))
        if caches.n_images - n_val < 1:
            raise DataError(f"{caches.path}: {caches.n_images} image(s); too few to split for segmentation")
        val_images, train_images = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        split_note = (f"one cache split by image (seed {config.seed}): {len(train_images)} train, "
                      f"{len(val_images)} val")
    else:
        train_cache, val_cache = train_and_held_out(caches, "segmentation", ("val", "test"))
        train_images, val_images = np.arange(train_cache.n_images), np.arange(val_cache.n_images)
        split_note = f"train cache {train_cache.n_images} images, val cache {val_cache.n_images} images"
    spec = config.source or str(train_cache.manifest.source.get("spec", ""))
    masks = open_mask_source(spec)
    train_labels = patch_labels(train_cache, masks, config)
    val_labels = train_labels if val_cache is train_cache else patch_labels(val_cache, masks, config)
    whiten = config.whiten != "none" and ("raw" in kinds or "recon" in kinds)
    collect = [*kinds, "raw"] if whiten and "raw" not in kinds else kinds  # the whitening is fitted on raw
    feats, train_y = collect_train(train_cache, sae, collect, train_labels, train_images, config, device)
    whitening = whitening_of_rows(config.whiten, np.asarray(feats["raw"])) if whiten else None
    heads = {}
    for kind in kinds:
        w = whitening if kind in ("raw", "recon") else None
        x = whiten_rows(w, np.asarray(feats[kind])) if w is not None else feats[kind]
        heads[kind] = train_head(x, train_y, config, device)
        heads[kind].whitening = w
    conf = score_heads(val_cache, sae, heads, val_labels, val_images, config.n_classes, config, device)
    scores: dict[str, float | None] = {}
    notes = []
    for kind in kinds:
        miou, _ = miou_from_confusion(conf[kind])
        scores[f"task:segmentation_miou:{kind}"] = miou
        total = conf[kind][1:, 1:].sum()
        pixel_acc = float(np.trace(conf[kind][1:, 1:]) / total) if total else None
        scores[f"task:segmentation_acc:{kind}"] = pixel_acc
        if miou is None:
            notes.append(f"{kind}: no labelled validation patches")
    protocol = (f"{split_note}; masks downsampled to the {val_cache.layout.grid_h}×{val_cache.layout.grid_w} "
                f"patch grid by majority; linear head (AdamW, {config.epochs} epochs) on {len(train_y)} "
                "labelled patches; mIoU at the patch grid over classes present in truth or prediction"
                + (f"; raw/recon {config.whiten}-whitened (fitted on the raw training patches)" if whiten
                   else ""))
    n_eval = int((val_labels[val_images] > 0).sum())
    return TaskResult(metric="task:segmentation", task="segmentation",
                      value=headline(scores, "segmentation_miou"),
                      higher_is_better=True, scores=scores, protocol=protocol, n_train=len(train_y),
                      n_eval=n_eval,
                      note="; ".join(notes))


SEGMENTATION = TaskSpec(SegmentationConfig, run_segmentation)
