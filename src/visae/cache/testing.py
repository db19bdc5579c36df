"""Test helpers: build a valid cache folder straight from arrays (to plant known structure in tests)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from visae.backbones.base import Backbone
from visae.backbones.layout import TokenLayout
from visae.cache.manifest import SCHEMA_VERSION
from visae.cache.positions import SUBSAMPLED_SCHEMA_VERSION
from visae.cache.stats import StreamingStats
from visae.cache.store import write_final, write_shard
from visae.errors import CacheError
from visae.io import hash_json

if TYPE_CHECKING:
    import torch
    from PIL import Image


def write_synthetic_cache(dir: Path | str, acts_npd: np.ndarray, labels: np.ndarray, class_names: list[str],
                          layout: TokenLayout, backbone: str = "synthetic", layer: int = 0,
                          shard_images: int = 256, image_ids: list[str] | None = None,
                          prefix_nkd: np.ndarray | None = None, positions_nt: np.ndarray | None = None,
                          position_seed: int = 42) -> Path:
    """Write ``acts_npd`` ``[N, P, D]`` as a complete cache in folder ``dir`` (created) and return it.

    With ``positions_nt`` (int ``[N, T]``, sorted patch positions) it writes a training cache that keeps
    ``T`` tokens per image: ``acts_npd`` is then ``[N, T, D]``.

    The shards hold ``acts_npd`` rounded to float16 and ``stats.json`` is computed from those stored
    values, exactly as :func:`visae.build_cache` does. ``image_ids`` default to ``"img{i:06d}"``.
    """
    dir_path = Path(dir)
    acts_npd = np.asarray(acts_npd)
    labels = np.asarray(labels, dtype=np.int64)
    if acts_npd.ndim != 3:
        raise CacheError(f"acts_npd must be [images, patches, D], got shape {acts_npd.shape}")
    n, p, d = acts_npd.shape
    tpi = None
    if positions_nt is not None:
        positions_nt = np.asarray(positions_nt)
        if positions_nt.shape != (n, p) or (p and (positions_nt.min() < 0
                                                   or positions_nt.max() >= layout.n_patches)):
            raise CacheError(f"positions_nt must be [{n}, {p}] positions in 0..{layout.n_patches - 1}")
        tpi, p = p, layout.n_patches
    if p != layout.n_patches:
        raise CacheError(f"acts_npd has {p} patches per image but the layout's grid has {layout.n_patches}")
    if labels.shape != (n,):
        raise CacheError(f"labels must have shape ({n},), got {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise CacheError(f"labels must lie in 0..{len(class_names) - 1}")
    if prefix_nkd is not None and np.asarray(prefix_nkd).shape != (n, layout.n_prefix, d):
        raise CacheError(f"prefix_nkd must have shape {(n, layout.n_prefix, d)}")
    ids = image_ids if image_ids is not None else [f"img{i:06d}" for i in range(n)]
    if len(ids) != n:
        raise CacheError(f"image_ids has {len(ids)} entries for {n} images")
    dir_path.mkdir(parents=True, exist_ok=True)
    stats = StreamingStats(d)
    shards = []
    for k, s0 in enumerate(range(0, n, max(1, shard_images))):
        block = acts_npd[s0:s0 + shard_images].astype(np.float16)
        stats.update(block.reshape(-1, d))
        pre = None if prefix_nkd is None else np.asarray(prefix_nkd)[s0:s0 + shard_images]
        pos = None if positions_nt is None else positions_nt[s0:s0 + shard_images]
        shards.append(write_shard(dir_path, k, block, pre, pos))
    source = {"spec": f"synthetic:{backbone}", "split": "train", "n": n, "ids": hash_json(list(ids))}
    fields = {
        "schema_version": SCHEMA_VERSION,
        "hash": hash_json([s.sha256 for s in shards] + [source, layout.to_dict(), layer]),
        "backbone": backbone, "weights_id": "synthetic", "layer": layer, "source": source,
        "layout": layout.to_dict(), "d_model": d, "n_patches": p, "dtype": "float16",
        "class_names": list(class_names), "preprocessing": {"synthetic": True},
    }
    if tpi is not None:
        fields.update(schema_version=SUBSAMPLED_SCHEMA_VERSION, tokens_per_image=tpi,
                      position_seed=position_seed)
    write_final(dir_path, manifest_fields=fields, shards=shards, labels=labels, image_ids=list(ids),
                stats=stats, skipped=[])
    return dir_path


class TinyViTBackbone(Backbone):
    """A tiny random timm ViT (seeded) implementing :class:`Backbone`, for fast tests of the pipeline.

    32×32 input, patch 8 (a 4×4 grid), width 32, 2 blocks, a CLS token.
    """

    def __init__(self, seed: int = 0, device: str = "cpu", img_size: int = 32, patch_size: int = 8,
                 embed_dim: int = 32, depth: int = 2) -> None:
        import timm
        import torch
        from torchvision import transforms

        from visae.device import pick_device

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=img_size,
                                           patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                                           num_heads=2,
                                           num_classes=0)
        self.device = pick_device(device)
        self.model.eval().to(self.device)
        self.name = "tiny-vit-test"
        self.weights_id = f"random-seed{seed}"
        grid = img_size // patch_size
        self.layout = TokenLayout(("cls",), grid, grid, patch_size)
        self.d_model = embed_dim
        self.n_blocks = depth
        self.embedding_kind = "CLS token after the final LayerNorm"
        self._transform = transforms.Compose([
            transforms.Resize((img_size, img_size)), transforms.ToTensor(),
            transforms.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])])

    @property
    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """Resize to the input size, scale to [-1, 1]."""
        return self._transform

    def block_outputs(self, pixels_bchw: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Residual stream after each requested block."""
        import torch

        m: Any = self.model
        with torch.inference_mode():
            x = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(pixels_bchw.to(self.device)))))
            out: dict[int, torch.Tensor] = {}
            for i, blk in enumerate(m.blocks):
                x = blk(x)
                if i in layers:
                    out[i] = x
                if len(out) == len(set(layers)):
                    break
        return out

    def embed(self, pixels_bchw: torch.Tensor) -> torch.Tensor:
        """CLS token after the final norm."""
        import torch

        with torch.inference_mode():
            m: Any = self.model
            return m.forward_features(pixels_bchw.to(self.device))[:, 0]
