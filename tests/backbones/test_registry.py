"""Backbone registry: short names, Table 5 evaluator pairing, any-timm-name path, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from visae.backbones.layout import TokenLayout
from visae.backbones.registry import (
    backbone_entry,
    evaluator_for,
    family_of,
    known_backbones,
    load_backbone,
    register_backbone,
)
from visae.backbones.timm_vit import TimmViT
from visae.errors import ConfigError

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}

PAPER_TABLE_5 = {  # SAE training backbone → M5 evaluation embedding backbone
    "dinov2-b14": "clip-b16",
    "clip-b16": "dinov2-b14",
    "siglip-b16": "dinov2-b14",
    "deit-b16": "clip-b16",
    "mae-b16": "clip-b16",
}


def test_known_backbones_lists_paper_and_offline_names() -> None:
    assert set(known_backbones()) >= {*PAPER_TABLE_5, "deit-b16-nodistill", "dinov2-s14-offline",
                                      "random-vit-s14"}


@pytest.mark.parametrize(("name", "evaluator"), sorted(PAPER_TABLE_5.items()))
def test_evaluator_pairing_is_paper_table_5(name: str, evaluator: str) -> None:
    assert evaluator_for(name) == evaluator
    assert evaluator_for(evaluator) != evaluator  # never evaluates a backbone with itself


def test_offline_pairing_and_timm_name_lookup() -> None:
    assert evaluator_for("dinov2-s14-offline") == "random-vit-s14"
    assert evaluator_for("random-vit-s14") == "dinov2-s14-offline"
    assert evaluator_for("vit_base_patch16_clip_224.openai") == "dinov2-b14"
    with pytest.raises(ConfigError, match="no M5 evaluator"):
        evaluator_for("vit_small_patch16_224")


def test_study_config_takes_the_pairing_from_the_backbone_registry() -> None:
    from types import SimpleNamespace

    from visae.backbones.registry import paired_evaluator
    from visae.study.config import BackboneSpec, StudyConfig

    assert paired_evaluator("vit_small_patch16_224") is None and paired_evaluator("mae-b16") == "clip-b16"
    cfg = SimpleNamespace(evaluators={"clip-b16": "siglip-b16"})
    pick = StudyConfig.evaluator_for
    assert pick(cfg, BackboneSpec(name="mae-b16")) == "clip-b16"  # type: ignore[arg-type]
    assert pick(cfg, BackboneSpec(name="clip-b16")) == "siglip-b16"  # type: ignore[arg-type]
    assert pick(cfg, BackboneSpec(name="vit_small_patch16_224")) is None  # type: ignore[arg-type]
    assert pick(cfg, BackboneSpec(name="mae-b16", evaluator="deit-b16")) == "deit-b16"  # type: ignore[arg-type]


def test_family_of() -> None:
    assert [family_of(n) for n in ("dinov2-b14", "clip-b16", "siglip-b16", "mae-b16", "deit-b16")] == [
        "dinov2", "clip", "siglip", "mae", "deit"]
    assert family_of("vit_base_patch16_siglip_256.webli") == "siglip"
    assert family_of("vit_small_patch16_224") == "timm"
    assert family_of("random-vit-s14") == "random"


@pytest.mark.parametrize(
    ("name", "prefix", "grid", "patch"),
    [
        ("dinov2-b14", ("cls",), 16, 14),  # run at 224 px: 16×16 grid, paper P=256
        ("clip-b16", ("cls",), 14, 16),
        ("siglip-b16", (), 14, 16),
        ("mae-b16", ("cls",), 14, 16),
        ("deit-b16", ("cls", "dist"), 14, 16),
        ("deit-b16-nodistill", ("cls",), 14, 16),
    ],
)
def test_short_names_build_the_paper_architecture(name: str, prefix: tuple[str, ...], grid: int,
                                                  patch: int) -> None:
    bb = load_backbone(name, device="cpu", pretrained=False, model_kwargs=TINY)
    assert isinstance(bb, TimmViT)
    assert bb.name == name
    assert bb.layout == TokenLayout(prefix, grid, grid, patch)
    entry = backbone_entry(name)
    assert entry is not None and entry.timm_name is not None
    assert bb.weights_id.startswith(f"timm:{entry.timm_name.split('.')[0]}:random-seed0:kwargs-")
    assert bb.device == torch.device("cpu")


def test_random_weights_ids_differ_by_architecture() -> None:
    ids = {load_backbone(n, device="cpu", pretrained=False, model_kwargs=kw).weights_id
           for n, kw in [("clip-b16", TINY), ("mae-b16", TINY), ("clip-b16", {**TINY, "depth": 1})]}
    assert len(ids) == 3


def test_image_size_override() -> None:
    bb = load_backbone("clip-b16", device=torch.device("cpu"), pretrained=False, image_size=64,
                       model_kwargs=TINY)
    assert (bb.layout.grid_h, bb.layout.grid_w) == (4, 4)


def test_any_timm_name() -> None:
    bb = load_backbone("vit_small_patch16_224.augreg_in21k", device="cpu", pretrained=False,
                       model_kwargs={**TINY, "img_size": 32, "reg_tokens": 1})
    assert bb.name == "vit_small_patch16_224.augreg_in21k"
    assert bb.layout.prefix_names == ("cls", "reg0")
    assert bb.patch_tokens(torch.zeros(1, 3, 32, 32), 1).shape == (1, 4, 32)


def test_unknown_name_is_config_error() -> None:
    with pytest.raises(ConfigError, match="not a registered short name"):
        load_backbone("dinov3-b14", device="cpu")


def test_offline_names_refuse_weights_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="do not apply"):
        load_backbone("random-vit-s14", device="cpu", weights_path=tmp_path / "w.safetensors")


def test_register_backbone_and_duplicates() -> None:
    def build(**kwargs: object) -> TimmViT:
        return TimmViT.create("vit_base_patch16_224", name="my-vit", device="cpu", pretrained=False,
                              model_kwargs={**TINY, "img_size": 32})

    register_backbone("my-vit", build, family="mine", evaluator="clip-b16", overwrite=True)
    try:
        assert "my-vit" in known_backbones()
        assert load_backbone("my-vit").name == "my-vit"
        assert evaluator_for("my-vit") == "clip-b16"
        with pytest.raises(ConfigError, match="already registered"):
            register_backbone("my-vit", build, family="mine")
    finally:
        from visae.backbones import registry

        registry.BACKBONES.unregister("my-vit")
    assert backbone_entry("my-vit") is None
