"""``eval`` jobs: one per SAE — every metric in one encoding pass over the evaluation cache (+ OOD caches for
M6); results in ``<out>/<metric>.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from visae.results.layout import EVALS_DIR
from visae.study.config import BackboneSpec, StudyConfig
from visae.study.job import Job
from visae.study.stages.base import (
    BackboneRef,
    SAERecord,
    Stage,
    StageParams,
    cache_path,
    make_job,
    open_job_cache,
)
from visae.study.stages.cache import backbone_ref


class Params(StageParams):
    """One SAE's evaluation."""

    omit_when_none = ("ood_test", "bootstrap")

    sae: str = Field(description="the SAE's folder")
    sae_id: str = Field(description="its content id")
    cache: str = Field(description="the evaluation cache job's folder")
    ood: dict[str, str] = Field(description="M6: OOD set name → its cache job's folder")
    ood_test: dict[str, str] | None = Field(None,
                                            description="M6: OOD set name → its test-split cache folder")
    backbone: str = Field(description="backbone name")
    evaluator: BackboneRef | None = Field(description="M5 evaluator backbone (None: M5 decides)")
    metrics: list[str] = Field(description="metrics to compute")
    metric_configs: dict[str, dict[str, Any]] = Field(description="per-metric settings")
    group_size: int = Field(description="images per encoding group")
    seed: int = Field(description="the study's seed")
    bootstrap: dict[str, Any] | None = Field(None, description="bootstrap settings (None: the defaults)")


def evaluator_ref(cfg: StudyConfig, backbone: BackboneSpec) -> BackboneRef | None:
    """The M5 evaluator of ``backbone`` as a job loads it (a study backbone's settings when it is one)."""
    name = cfg.evaluator_for(backbone)
    if name is None:
        return None
    for b in cfg.backbones:
        if b.name == name:
            return backbone_ref(b)
    return BackboneRef(name=name)


def plan(cfg: StudyConfig, backbone: BackboneSpec, layer: int, sae: SAERecord, train_job: Job,
         eval_cache: Job,
         ood: dict[str, Job], ood_tests: dict[str, Job]) -> Job:
    """The evaluation job of one SAE (the OOD caches only when it computes M6)."""
    if "m6" not in sae.metrics:
        ood, ood_tests = {}, {}
    params = Params(sae=sae.out, sae_id=sae.sae_id, cache=eval_cache.outputs[0],
                    ood={k: v.outputs[0] for k, v in ood.items()},
                    ood_test={k: v.outputs[0] for k, v in ood_tests.items()} or None,
                    backbone=backbone.name, evaluator=evaluator_ref(cfg, backbone), metrics=sae.metrics,
                    metric_configs=cfg.metric_configs, group_size=cfg.eval_group_size, seed=cfg.seed,
                    bootstrap=cfg.bootstrap.to_dict() if cfg.bootstrap is not None else None)
    return make_job("eval", f"eval {backbone.name} L{layer} {sae.family} {sae.expansion}x k{sae.k}", params,
                    [train_job, eval_cache, *ood.values(), *ood_tests.values()], EVALS_DIR, wants_gpu=True,
                    backbone=backbone.name, layer=layer, sae_id=sae.sae_id)


def study_metric_extras(p: Params, root: Path) -> dict[str, dict[str, Any]]:
    """Settings the study supplies to metrics: M6's OOD caches, M5's evaluator backbone."""
    extras: dict[str, dict[str, Any]] = {}
    if "m6" in p.metrics and p.ood:
        tests = p.ood_test or {}
        extras["m6"] = {"datasets": [
            {"name": name, "train_cache": str(cache_path(root, out)),
             **({"test_cache": str(cache_path(root, tests[name]))} if name in tests else {})}
            for name, out in p.ood.items()]}
    for m5 in ("m5", "m5d"):  # m5d scores M5's features with the same evaluator
        if m5 in p.metrics and p.evaluator is not None:
            ev = p.evaluator
            extras[m5] = {"evaluator": ev.name}
            if ev.weights_path:
                extras[m5]["evaluator_weights"] = ev.weights_path
            if ev.image_size:
                extras[m5]["evaluator_image_size"] = ev.image_size
    return extras


def run(job: Job, p: Params, root: Path, device: str) -> dict[str, Any]:
    """Every metric of one SAE in one encoding pass."""
    from visae.metrics.evaluate import evaluate

    # a path: the results record its provenance (a reference folder's: repo, commit, hashes)
    sae = root / p.sae
    cache = open_job_cache(root, p.cache)
    # the study's settings are shared by every block; this job takes those of the metrics it runs (a
    # section no block runs is refused when the study loads)
    configs: dict[str, dict[str, Any]] = {k: dict(v) for k, v in p.metric_configs.items() if k in p.metrics}
    for name, extra in study_metric_extras(p, root).items():
        configs[name] = {**extra, **configs.get(name, {})}
    results = evaluate(sae, cache, metrics=p.metrics, out_dir=root / job.outputs[0], configs=configs,
                       device=device,
                       group_size=p.group_size, backbone=p.backbone, bootstrap=p.bootstrap)
    return {"values": {k: v.value for k, v in results.items()}}


STAGE = Stage("eval", Params, run)
