"""The paper's five backbones load through timm's hub names from an offline hub cache holding random
weights in the hub files' shapes, and cache with the right token layout and preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visae.hub_testing import timm_hub_location, write_timm_weights

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
# short name: (timm name, prefix tokens, grid, patch, mean/std, crop_pct) — paper §3, timm 1.0 pretrained cfgs
PAPER = {
    "dinov2-b14": ("vit_base_patch14_dinov2.lvd142m", ("cls",), 16, 14, IMAGENET, 1.0),
    "clip-b16": ("vit_base_patch16_clip_224.openai", ("cls",), 14, 16,
                 ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]), 0.9),
    "siglip-b16": ("vit_base_patch16_siglip_224.webli", (), 14, 16, ([0.5] * 3, [0.5] * 3), 0.9),
    "mae-b16": ("vit_base_patch16_224.mae", ("cls",), 14, 16, IMAGENET, 0.9),
    "deit-b16": ("deit_base_distilled_patch16_224.fb_in1k", ("cls", "dist"), 14, 16, IMAGENET, 0.9),
}


def test_hub_names_are_timms() -> None:
    for timm_name, *_ in PAPER.values():
        assert timm_hub_location(timm_name) == (f"timm/{timm_name}", "model.safetensors")


@pytest.fixture
def images(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (60, 80, 3),
                                     dtype=np.uint8)).save(tmp_path / "imgs" / c / "0.png")
    return tmp_path / "imgs"


@pytest.mark.slow
@pytest.mark.parametrize("short", list(PAPER))
def test_paper_backbone_loads_from_hub_and_caches(short: str, hub_cache: Path, images: Path, tmp_path: Path,
                                                  ) -> None:
    from visae.backbones.registry import load_backbone
    from visae.cache.reader import open_cache
    from visae.cache.writer import build_cache

    timm_name, prefix, grid, patch, (mean, std), crop_pct = PAPER[short]
    state = write_timm_weights(hub_cache, timm_name, seed=1)
    bb = load_backbone(short, device="cpu")
    assert bb.weights_id == f"timm:{timm_name}"
    # the hub file's weights were loaded (DINOv2's 37×37 position table resampled to 16×16 for 224 px)
    torch.testing.assert_close(bb.model.blocks[11].mlp.fc2.weight, state["blocks.11.mlp.fc2.weight"])
    assert tuple(bb.model.pos_embed.shape[1:]) == (grid * grid + len(prefix), 768)
    path = build_cache(bb, f"folder:{images}", 11, tmp_path / "caches", batch_size=2, num_workers=0,
                       progress=False)
    cache = open_cache(path, verify=True)
    m = cache.manifest
    assert (m.backbone, m.weights_id, m.layer, m.d_model) == (short, f"timm:{timm_name}", 11, 768)
    assert (tuple(m.layout["prefix_names"]), m.layout["grid_h"], m.layout["grid_w"],
            m.layout["patch_size"]) == \
        (prefix, grid, grid, patch)
    assert m.n_patches == grid * grid
    pre = m.preprocessing
    assert pre["input_size"] == [3, 224, 224] and pre["image_size"] == [224, 224]
    assert pre["interpolation"] == "bicubic" and pre["crop_pct"] == crop_pct
    np.testing.assert_allclose(pre["mean"], mean) and np.testing.assert_allclose(pre["std"], std)
    # the cached tokens are block 11's patch tokens, prefix tokens dropped
    pixels = torch.stack([bb.transform(Image.open(images / "a" / "0.png"))])
    want = bb.block_outputs(pixels, [11])[11][0, len(prefix):].numpy()
    _, got = next(iter(cache.iter_images(group_size=1)))
    np.testing.assert_allclose(got[0].float().numpy(), want, atol=2e-2, rtol=1e-2)
