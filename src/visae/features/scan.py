"""Per-feature views: top images of a feature with its patch activation map overlaid.

Computed by the study's ``features`` job from the SAE and its evaluation cache, for a capped number of
images and features: one streaming pass gives each feature's firing frequency, its top images (by
max-over-patches activation) and those images' patch maps; the images come from the cache's own image
source (when it cannot be reopened, the heat-map alone is drawn).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:
    from visae.cache.reader import ActivationCache
    from visae.sae.base import SAE


@dataclass
class FeatureScan:
    """What one pass over (up to ``n_images``) evaluation images tells about every feature."""

    n_images: int
    frequency_f: np.ndarray
    """Fraction of images on which the feature fires on some patch."""
    top_images_ft: np.ndarray
    """Cache positions of each feature's top images (−1 where fewer fired), best first."""
    top_values_ft: np.ndarray
    """Their max-over-patches activations."""
    grid_hw: tuple[int, int]


@torch.no_grad()
def scan_features(sae: SAE, cache: ActivationCache, device: torch.device, n_top: int = 5,
                  max_images: int = 2000, group_size: int = 32) -> FeatureScan:
    """Frequency and top images of every feature over the first ``max_images`` images of ``cache``."""
    sae = sae.to(device).eval()
    n = min(cache.n_images, max_images)
    f = sae.d_sae
    fired_f = torch.zeros(f, dtype=torch.int64, device=device)
    top_v = torch.full((n_top, f), -1.0, device=device)
    top_i = torch.full((n_top, f), -1, dtype=torch.int64, device=device)
    for index_n, acts_npd in cache.iter_images(group_size=group_size, normalize=False, stop=n):
        acts = acts_npd.to(device=device, dtype=torch.float32)
        b, p, d = acts.shape
        codes_bpf = sae.encode(sae.normalize(acts.reshape(b * p, d))).reshape(b, p, f)
        pooled_bf = codes_bpf.amax(dim=1)
        fired_f += (pooled_bf > 0).sum(dim=0)
        idx_b = torch.as_tensor(np.asarray(index_n), dtype=torch.int64, device=device)
        cand_v = torch.cat([top_v, torch.where(pooled_bf > 0, pooled_bf, torch.full_like(pooled_bf, -1.0))])
        cand_i = torch.cat([top_i, idx_b[:, None].expand(b, f)])
        k = min(n_top, cand_v.shape[0])
        top_v, order = cand_v.topk(k, dim=0)
        top_i = cand_i.gather(0, order)
    top_i = torch.where(top_v > 0, top_i, torch.full_like(top_i, -1))
    return FeatureScan(n_images=n, frequency_f=(fired_f.float() / max(n, 1)).cpu().numpy(),
                       top_images_ft=top_i.T.cpu().numpy(), top_values_ft=top_v.clamp_min(0).T.cpu().numpy(),
                       grid_hw=(cache.layout.grid_h, cache.layout.grid_w))


@torch.no_grad()
def patch_maps(sae: SAE, cache: ActivationCache, device: torch.device,
               wanted: dict[int, list[int]], group_size: int = 32) -> dict[tuple[int, int], np.ndarray]:
    """Activation maps ``[H, W]`` keyed by (feature, image) for ``wanted`` = {image index: [features]},
    in one ordered pass over the images up to the last one wanted."""
    sae = sae.to(device).eval()
    h, w = cache.layout.grid_h, cache.layout.grid_w
    out: dict[tuple[int, int], np.ndarray] = {}
    if not wanted:
        return out
    stop = max(wanted) + 1
    for index_n, acts_npd in cache.iter_images(group_size=group_size, normalize=False, stop=stop):
        rows = [(j, int(i)) for j, i in enumerate(np.asarray(index_n)) if int(i) in wanted]
        if not rows:
            continue
        acts = acts_npd[[j for j, _ in rows]].to(device=device, dtype=torch.float32)
        b, p, d = acts.shape
        codes_bpf = sae.encode(sae.normalize(acts.reshape(b * p, d))).reshape(b, p, -1)
        for (_, img), codes_pf in zip(rows, codes_bpf, strict=True):
            feats = wanted[img]
            maps = codes_pf[:, feats].T.reshape(len(feats), h, w).cpu().numpy()
            for f, m in zip(feats, maps, strict=True):
                out[(f, img)] = m
    return out


class ImageLookup:
    """Images of a cache, reopened from its source; None for each image when the source is unavailable."""

    def __init__(self, cache: ActivationCache) -> None:
        self.source: Any = None
        self.positions: np.ndarray | None = None
        self.error = ""
        try:
            from visae.metrics.embeddings import open_cache_source

            self.source, self.positions = open_cache_source(cache)
        except Exception as e:  # the report still works without images (heat-maps only)
            self.error = f"{type(e).__name__}: {e}"

    def get(self, image_index: int) -> Image.Image | None:
        """The RGB image at a cache position, or None."""
        if self.source is None or self.positions is None:
            return None
        try:
            img = self.source.load(int(self.positions[image_index]))
        except Exception:
            return None
        return img.convert("RGB") if isinstance(img, Image.Image) else None


def overlay(image: Image.Image | None, map_hw: np.ndarray, size: int = 64,
            vmax: float | None = None) -> Image.Image:
    """The image (center-cropped square, resized) with the activation map as a translucent heat-map."""
    from matplotlib import colormaps

    peak = float(vmax if vmax is not None else map_hw.max())
    norm = np.clip(map_hw / peak, 0, 1) if peak > 0 else np.zeros_like(map_hw)
    rgba = (colormaps["inferno"](norm) * 255).astype(np.uint8)
    heat = Image.fromarray(rgba, "RGBA").resize((size, size), Image.Resampling.NEAREST)
    if image is None:
        return heat.convert("RGB")
    w, h = image.size
    side = min(w, h)
    base = image.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    base = base.resize((size, size), Image.Resampling.BILINEAR).convert("RGBA")
    alpha = Image.fromarray((norm * 170).astype(np.uint8), "L").resize((size, size), Image.Resampling.NEAREST)
    heat.putalpha(alpha)
    return Image.alpha_composite(base, heat).convert("RGB")


def strip(tiles: list[Image.Image], size: int = 64, gap: int = 2) -> Image.Image:
    """Tiles side by side on a white background."""
    n = max(1, len(tiles))
    out = Image.new("RGB", (n * size + (n - 1) * gap, size), "white")
    for i, t in enumerate(tiles):
        out.paste(t.resize((size, size)), (i * (size + gap), 0))
    return out


def png_b64(img: Image.Image) -> str:
    """A PIL image as a base64 PNG string (for ``data:image/png;base64,…``)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def feature_strips(sae: SAE, cache: ActivationCache, scan: FeatureScan, features: list[int],
                   device: torch.device, images: ImageLookup, size: int = 64) -> dict[int, str]:
    """Base64 PNG strip (top images with overlays) per feature; each image's maps computed once."""
    need: dict[int, list[int]] = {}
    for feat in features:
        for img_idx in scan.top_images_ft[feat]:
            if img_idx >= 0:
                need.setdefault(int(img_idx), []).append(feat)
    maps = patch_maps(sae, cache, device, need)
    pictures: dict[int, Image.Image | None] = {i: images.get(i) for i in need}
    out: dict[int, str] = {}
    for feat in features:
        tops = [int(i) for i in scan.top_images_ft[feat] if i >= 0]
        if not tops:
            continue
        vmax = max(float(maps[(feat, i)].max()) for i in tops)
        tiles = [overlay(pictures[i], maps[(feat, i)], size=size, vmax=vmax) for i in tops]
        out[feat] = png_b64(strip(tiles, size=size))
    return out
