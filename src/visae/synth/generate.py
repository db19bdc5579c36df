"""``visae.synth.generate``: write a synthetic activation cache and its ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from visae.config import build_config
from visae.synth.backbone import SynthBackbone, SynthSource
from visae.synth.config import SynthConfig
from visae.synth.truth import GROUND_TRUTH, GroundTruth, write_ground_truth


def synth_config(preset: str = "spatial", **settings: Any) -> SynthConfig:
    """The settings of ``preset`` with ``settings`` (fields of :class:`SynthConfig`) over them; ``None``
    values are left at the preset's."""
    from visae.synth.presets import preset_settings

    base = preset_settings(preset)
    base.update({k: v for k, v in settings.items() if v is not None})
    return build_config(SynthConfig, base, source=f"synth preset {preset}")


def generate(preset: str | SynthConfig = "spatial", out: Path | str | None = None, **settings: Any) -> Path:
    """Write the cache of ``preset`` (a name or a full :class:`SynthConfig`) under ``out`` and its ground
    truth beside it; return the cache folder. Settings are fields of :class:`SynthConfig` (``n_images``,
    ``grid``, ``d``, ``n_features``, ``seed`` …). A complete cache is returned as it is; a partial one is
    resumed. ``GroundTruth.load(path)`` reads what was planted."""
    from visae.synth.model import SyntheticModel

    if isinstance(preset, SynthConfig):
        cfg = preset.model_copy(update={k: v for k, v in settings.items() if v is not None})
        cfg = SynthConfig(**cfg.model_dump())
    else:
        cfg = synth_config(preset, **settings)
    if out is not None:
        cfg = cfg.model_copy(update={"out": Path(out)})
    model = SyntheticModel(cfg)
    return write_synth_cache(SynthBackbone(model), SynthSource(model), cfg.out, batch_size=cfg.batch_size,
                             shard_images=cfg.shard_images, num_workers=0, progress=cfg.progress)


def write_synth_cache(backbone: SynthBackbone, source: SynthSource, out: Path | str,
                      **cache_settings: Any) -> Path:
    """The cache of ``source`` through ``backbone`` (:func:`visae.build_cache`, ``cache_settings`` its
    settings) with the ground truth beside it; return the folder."""
    from visae.cache.writer import build_cache

    cache_settings.setdefault("device", str(backbone.device))
    folder = build_cache(backbone, source, 0, out, **cache_settings)
    if not (folder / GROUND_TRUTH).is_file():
        write_ground_truth(folder, backbone.model)
    else:
        GroundTruth.load(folder).model  # noqa: B018  (checks the stored truth matches these settings)
    return folder
