"""Synthetic presets as study backbones: ``synth:<preset>[?key=value&…]`` in a study's ``backbones``.

Such a backbone draws its own images: the study's image set for it is the spec ``synth`` (``data.train``,
``data.eval``), whose ``split`` picks the image stream (train, val or test) and ``max_images`` the number of
images. Settings after ``?`` are fields of :class:`visae.synth.SynthConfig` (``synth:spatial?d=128&grid=14``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from visae.datasets.base import ImageSource
from visae.errors import ConfigError, DataError
from visae.synth.backbone import SynthBackbone, SynthSource
from visae.synth.config import SynthConfig
from visae.synth.generate import synth_config

if TYPE_CHECKING:
    from visae.study.config import SourceSpec

PREFIX = "synth:"
SOURCE_SPEC = "synth"


def is_synth_backbone(name: str) -> bool:
    """True for a ``synth:<preset>`` backbone name."""
    return name.startswith(PREFIX)


def parse_backbone_name(name: str, n_images: int = 1, split: str = "train") -> SynthConfig:
    """The settings named by ``synth:<preset>[?key=value&…]`` (values parsed as YAML scalars)."""
    import yaml

    if not is_synth_backbone(name):
        raise ConfigError(f"backbone {name!r}: not a synthetic backbone (synth:<preset>)")
    preset, _, query = name[len(PREFIX):].partition("?")
    settings: dict[str, object] = {}
    for item in filter(None, query.split("&")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"backbone {name!r}: settings after '?' are key=value pairs joined by '&', got "
                              f"{item!r}")
        settings[key] = yaml.safe_load(value)
    return synth_config(preset, **settings, n_images=n_images, split=split)


def synth_inputs(name: str, spec: str, split: str, max_images: int | None,
                 device: str | torch.device = "cpu") -> tuple[SynthBackbone, SynthSource]:
    """The backbone and image source of a ``synth:`` study backbone for one image set."""
    from visae.device import pick_device
    from visae.synth.model import SyntheticModel

    if spec != SOURCE_SPEC:
        raise ConfigError(f"backbone {name!r} draws its own images: its image sets must have spec "
                          f"'{SOURCE_SPEC}', got {spec!r}")
    if max_images is None:
        raise ConfigError(f"backbone {name!r}: set max_images on the image set (the images to draw)")
    if split not in ("train", "val", "test"):
        raise ConfigError(f"backbone {name!r}: split {split!r}; synthetic images have train, val and test")
    model = SyntheticModel(parse_backbone_name(name, max_images, split))
    return SynthBackbone(model, device=pick_device(device)), SynthSource(model)


def synth_cache(name: str, source: SourceSpec, layer: int, out_dir: Path, device: str,
                settings: dict[str, Any]) -> tuple[Path, int]:
    """A study cache job of a ``synth:`` backbone: its cache (and ground truth) under ``out_dir`` and its
    image count."""
    from visae.synth.generate import write_synth_cache

    if layer != 0:
        raise ConfigError(f"layers: a synthetic backbone ({name}) has one block, layer 0; got layer {layer}")
    backbone, src = synth_inputs(name, source.spec, source.split, source.max_images, device)
    return write_synth_cache(backbone, src, out_dir, device=device, **settings), len(src)


def open_synth_source(argument: str, split: str) -> ImageSource:
    """The ``synth`` image-source spec alone: refused, it names the images of a ``synth:`` backbone."""
    raise DataError("image source 'synth' holds the images a synthetic backbone (synth:<preset>) draws "
                    "itself; use it in a study whose backbones are synth:<preset>, or write a cache with "
                    "'visae synth --preset NAME'")
