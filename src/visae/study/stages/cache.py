"""``cache`` jobs: one per (backbone, layer, image set) — that set's activations at that layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from visae.results.layout import CACHES_DIR
from visae.study.config import BackboneSpec, SourceSpec, StudyConfig
from visae.study.job import Job
from visae.study.stages.base import BackboneRef, Stage, StageParams, make_job


class Params(StageParams):
    """What to cache."""

    backbone: BackboneRef = Field(description="the backbone to run")
    layer: int = Field(description="0-based block whose output is cached")
    source: SourceSpec = Field(description="the image set")
    settings: dict[str, Any] = Field(description="build_cache settings (the study's 'cache' section)")


def backbone_ref(backbone: BackboneSpec) -> BackboneRef:
    """The loading part of a study backbone (display settings left out: they must not change job ids; its
    image sets enter a cache job as its source)."""
    return BackboneRef(**backbone.model_dump(mode="json", exclude={"label", "evaluator", "data"}))


def plan(cfg: StudyConfig, backbone: BackboneSpec, layer: int, role: str) -> Job:
    """The cache job of ``role`` ('train', 'eval', an OOD or task-source name) at one backbone and layer."""
    settings = {**cfg.cache, **(cfg.train_cache if role == "train" else {})}
    params = Params(backbone=backbone_ref(backbone), layer=layer, source=cfg.source(role, backbone),
                    settings=settings)
    return make_job("cache", f"cache {backbone.name} L{layer} {role}", params, [], CACHES_DIR, wants_gpu=True,
                    backbone=backbone.name, layer=layer, role=role)


def run(job: Job, p: Params, root: Path, device: str) -> dict[str, Any]:
    """Cache one image set's activations at one layer of one backbone."""
    from visae.backbones.registry import load_backbone
    from visae.cache.writer import build_cache
    from visae.datasets.registry import open_source

    s = p.source
    out_dir = root / job.outputs[0]
    settings = {"progress": False, **p.settings}
    if p.backbone.name.startswith("synth:"):  # a synthetic preset draws its own images (visae.synth.study)
        from visae.synth.study import synth_cache

        cache_dir, n_images = synth_cache(p.backbone.name, s, p.layer, out_dir, device, settings)
        return {"cache": str(cache_dir.relative_to(out_dir)), "n_images": n_images}
    backbone = load_backbone(p.backbone.name, device=device, weights_path=p.backbone.weights_path,
                             image_size=p.backbone.image_size)
    source = open_source(s.spec, split=s.split, max_images=s.max_images, seed=s.seed)
    cache_dir = Path(build_cache(backbone, source, p.layer, out_dir, device=device, **settings))
    return {"cache": str(cache_dir.relative_to(out_dir)) if cache_dir != out_dir else "",
            "n_images": len(source)}


STAGE = Stage("cache", Params, run)
