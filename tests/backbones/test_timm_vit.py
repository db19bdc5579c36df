"""TimmViT on tiny random timm ViTs of each paper family's architecture (no hub access needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from visae.backbones.timm_vit import TimmViT
from visae.errors import CheckpointError, ConfigError, DataError
from visae.io import sha256_file

TINY = {"embed_dim": 32, "depth": 3, "num_heads": 2}

# (timm name, extra kwargs, expected prefix names, grid (h, w), patch size)
FAMILIES: dict[str, tuple[str, dict[str, Any], tuple[str, ...], tuple[int, int], int]] = {
    "dinov2": ("vit_base_patch14_dinov2.lvd142m", {"img_size": 42}, ("cls",), (3, 3), 14),
    "dinov2-reg4": ("vit_base_patch14_reg4_dinov2.lvd142m", {"img_size": 28},
                    ("cls", "reg0", "reg1", "reg2", "reg3"), (2, 2), 14),
    "clip": ("vit_base_patch16_clip_224.openai", {"img_size": (32, 48)}, ("cls",), (2, 3), 16),
    "siglip": ("vit_base_patch16_siglip_224.webli", {"img_size": 32}, (), (2, 2), 16),
    "mae": ("vit_base_patch16_224.mae", {"img_size": 32}, ("cls",), (2, 2), 16),
    "deit": ("deit_base_distilled_patch16_224.fb_in1k", {"img_size": 32}, ("cls", "dist"), (2, 2), 16),
    "no-embed-class-reg": ("vit_small_patch16_224", {"img_size": 32, "no_embed_class": True, "reg_tokens": 2},
                           ("cls", "reg0", "reg1"), (2, 2), 16),
}


def tiny(family: str) -> TimmViT:
    timm_name, extra, *_ = FAMILIES[family]
    return TimmViT.create(timm_name, device="cpu", pretrained=False, model_kwargs={**TINY, **extra})


def pixels_for(bb: TimmViT, n: int = 2, seed: int = 0) -> torch.Tensor:
    h, w = bb.layout.image_size
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def backbone(family: str) -> TimmViT:
    return tiny(family)


def test_layout_matches_architecture(family: str, backbone: TimmViT) -> None:
    _, _, prefix, grid, patch = FAMILIES[family]
    assert backbone.layout.prefix_names == prefix
    assert (backbone.layout.grid_h, backbone.layout.grid_w) == grid
    assert backbone.layout.patch_size == patch
    assert backbone.d_model == 32 and backbone.n_blocks == 3
    out = backbone.block_outputs(pixels_for(backbone), [0, 2])
    assert set(out) == {0, 2}
    assert out[2].shape == (2, len(prefix) + grid[0] * grid[1], 32)


def test_block_outputs_equal_timm_forward_intermediates(backbone: TimmViT) -> None:
    x = pixels_for(backbone)
    ours = backbone.block_outputs(x, [2, 0, 1, 1])
    with torch.no_grad():
        ref = backbone.model.forward_intermediates(
            x, indices=[0, 1, 2], norm=False, output_fmt="NLC", intermediates_only=True,
            return_prefix_tokens=backbone.layout.n_prefix > 0)
    for layer, item in zip([0, 1, 2], ref, strict=True):
        expected = torch.cat([item[1], item[0]], dim=1) if isinstance(item, tuple) else item
        torch.testing.assert_close(ours[layer], expected, rtol=0, atol=1e-6)


def test_last_block_after_final_norm_is_forward_features(backbone: TimmViT) -> None:
    x = pixels_for(backbone)
    last = backbone.block_outputs(x, [backbone.n_blocks - 1])[backbone.n_blocks - 1]
    with torch.no_grad():
        torch.testing.assert_close(backbone.model.norm(last), backbone.model.forward_features(x),
                                   rtol=0, atol=1e-6)


def test_patch_tokens_drop_the_prefix(backbone: TimmViT) -> None:
    x = pixels_for(backbone)
    full = backbone.block_outputs(x, [1])[1]
    patches = backbone.patch_tokens(x, 1)
    assert patches.shape == (2, backbone.layout.n_patches, 32)
    torch.testing.assert_close(patches, full[:, backbone.layout.n_prefix :], rtol=0, atol=0)


def test_forward_stops_at_highest_requested_block(backbone: TimmViT) -> None:
    calls: list[int] = []
    handle = backbone.model.blocks[2].register_forward_hook(lambda *_: calls.append(1))
    try:
        backbone.block_outputs(pixels_for(backbone), [1])
        assert calls == []
        backbone.block_outputs(pixels_for(backbone), [2])
        assert calls == [1]
    finally:
        handle.remove()


@pytest.mark.parametrize("layer", [-1, 3, 12])
def test_layer_out_of_range_is_config_error(backbone: TimmViT, layer: int) -> None:
    with pytest.raises(ConfigError, match=r"blocks 0\.\.2"):
        backbone.block_outputs(pixels_for(backbone), [layer])
    with pytest.raises(ConfigError):
        backbone.patch_tokens(pixels_for(backbone), layer)


def test_wrong_pixel_shape_is_data_error(backbone: TimmViT) -> None:
    with pytest.raises(DataError, match="pixels must be"):
        backbone.block_outputs(torch.zeros(1, 3, 64, 64), [0])


def test_embed_is_pre_logits_head(family: str, backbone: TimmViT) -> None:
    x = pixels_for(backbone)
    emb = backbone.embed(x)
    with torch.no_grad():
        ref = backbone.model.forward_head(backbone.model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(emb, ref)
    assert emb.shape == (2, 32)
    expected_kind = {"siglip": "attention-pool (MAP)",
                     "deit": "CLS and distillation tokens"}.get(family, "CLS token")
    assert expected_kind in backbone.embedding_kind
    assert "final LayerNorm" in backbone.embedding_kind


def test_frozen_and_in_eval_mode(backbone: TimmViT) -> None:
    assert not backbone.model.training
    assert not any(p.requires_grad for p in backbone.model.parameters())
    assert backbone.weights_id.startswith("timm:") and ":random-seed0:kwargs-" in backbone.weights_id


def test_transform_gives_model_input(backbone: TimmViT) -> None:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (50, 70), dtype=np.uint8), mode="L")
    tensor = backbone.transform(image)
    assert tensor.shape == (3, *backbone.layout.image_size)
    assert backbone.block_outputs(tensor[None], [0])[0].shape[1] == backbone.layout.n_tokens
    spec = backbone.preprocessing_spec()
    assert spec["input_size"] == [3, *backbone.layout.image_size]


def test_random_init_is_seeded() -> None:
    a, b = tiny("clip"), tiny("clip")
    x = pixels_for(a)
    torch.testing.assert_close(a.block_outputs(x, [2])[2], b.block_outputs(x, [2])[2], rtol=0, atol=0)


def test_clip_embedding_kind_mentions_final_norm_only() -> None:
    assert tiny("clip").embedding_kind == "CLS token after the final LayerNorm"


def test_mean_pool_embedding_kind() -> None:
    bb = TimmViT.create("vit_base_patch16_224", device="cpu", pretrained=False,
                        model_kwargs={**TINY, "img_size": 32, "global_pool": "avg"})
    assert bb.embedding_kind == "mean of the patch tokens, then the fc_norm LayerNorm"


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_path_loads_state_dict(tmp_path: Path, suffix: str) -> None:
    timm_name, extra, *_ = FAMILIES["deit"]
    kwargs = {**TINY, **extra}
    torch.manual_seed(123)
    source = timm.create_model(timm_name, pretrained=False, **kwargs)
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if suffix == ".pt":
        torch.save({"state_dict": state}, path)
    else:
        save_file(state, str(path))
    bb = TimmViT.create(timm_name, device="cpu", weights_path=path, model_kwargs=kwargs)
    # the file's sha256 (+ architecture kwargs)
    assert bb.weights_id.startswith(sha256_file(path) + ":kwargs-")
    for name, value in source.state_dict().items():
        torch.testing.assert_close(bb.model.state_dict()[name], value, rtol=0, atol=0)


def test_weights_path_of_other_architecture_is_checkpoint_error(tmp_path: Path) -> None:
    other = timm.create_model("vit_base_patch16_224", pretrained=False, embed_dim=32, depth=1, num_heads=2,
                              img_size=32)  # one block fewer than the target architecture
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match="does not fit"):
        TimmViT.create("vit_base_patch16_224", device="cpu", weights_path=path,
                       model_kwargs={**TINY, "img_size": 32})


def test_weights_path_missing_or_unsafe(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        TimmViT.create("vit_base_patch16_224", device="cpu", weights_path=tmp_path / "absent.pt",
                       model_kwargs={**TINY, "img_size": 32})
    pickled = tmp_path / "obj.pt"
    torch.save({"net": torch.nn.Linear(2, 2)}, pickled)  # a pickled module, refused by weights_only
    with pytest.raises(CheckpointError, match="cannot read"):
        TimmViT.create("vit_base_patch16_224", device="cpu", weights_path=pickled,
                       model_kwargs={**TINY, "img_size": 32})


def test_hub_weights_without_network_is_clear_error() -> None:
    # conftest sets HF_HUB_OFFLINE=1, so the hub download fails fast.
    with pytest.raises(CheckpointError, match="weights_path"):
        TimmViT.create("vit_base_patch16_224.augreg_in21k", device="cpu", pretrained=True,
                       model_kwargs={**TINY, "img_size": 32})


def test_non_vit_timm_model_is_config_error() -> None:
    with pytest.raises(ConfigError, match="not a ViT"):
        TimmViT.create("resnet18", device="cpu", pretrained=False)


def test_eva_goes_through_forward_intermediates() -> None:
    bb = TimmViT.create("eva02_tiny_patch14_224.mim_in22k", device="cpu", pretrained=False,
                        model_kwargs={**TINY, "img_size": 28})
    assert bb.layout.prefix_names == ("cls",) and bb.layout.n_patches == 4
    x = pixels_for(bb)
    last = bb.block_outputs(x, [2])[2]
    with torch.no_grad():
        torch.testing.assert_close(bb.model.norm(last), bb.model.forward_features(x), rtol=0, atol=1e-5)
