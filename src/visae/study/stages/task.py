"""``task`` jobs: one per (task, backbone, main layer) — the task on raw features once and on each SAE's
codes; rows in ``<out>/task.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from visae.results.layout import TASK_RECORD, TASKS_DIR
from visae.study.config import BackboneSpec, StudyConfig, TaskSpec
from visae.study.job import Job
from visae.study.stages.base import SAERecord, Stage, StageParams, make_job, open_job_cache


class TaskSAE(StageParams):
    """An SAE whose codes the task runs on."""

    sae_id: str = Field(description="content id")
    out: str = Field(description="its folder")


class Params(StageParams):
    """One task at one backbone and layer."""

    task: TaskSpec = Field(description="the task")
    cache: str = Field(description="the task's cache job folder")
    val_cache: str | None = Field(description="its validation cache job folder (None: the task splits)")
    backbone: str = Field(description="backbone name")
    layer: int = Field(description="layer")
    saes: list[TaskSAE] = Field(description="SAEs whose codes it runs on (empty: raw features only)")
    seed: int = Field(description="the study's seed")


def plan(cfg: StudyConfig, backbone: BackboneSpec, layer: int, task: TaskSpec, cache: Job,
         val_cache: Job | None,
         saes: list[SAERecord], train_jobs: list[Job]) -> Job:
    """The job of ``task`` at one backbone and layer, on raw features and on the codes of ``saes``."""
    params = Params(task=task, cache=cache.outputs[0], val_cache=val_cache.outputs[0] if val_cache else None,
                    backbone=backbone.name, layer=layer, seed=cfg.seed,
                    saes=[TaskSAE(sae_id=s.sae_id, out=s.out) for s in saes] if task.on_codes else [])
    return make_job("task", f"task {task.name} {backbone.name} L{layer}", params,
                    [cache, *([val_cache] if val_cache else []), *train_jobs], TASKS_DIR, wants_gpu=True,
                    backbone=backbone.name, layer=layer, task=task.name)


def run(job: Job, p: Params, root: Path, device: str) -> dict[str, Any]:
    """Run the task; its rows go to ``task.json``."""
    from visae.io import atomic_write_json
    from visae.sae.checkpoint import load_sae
    from visae.tasks import task_rows

    cache = open_job_cache(root, p.cache)
    caches: Any = {"train": cache, "val": open_job_cache(root, p.val_cache)} if p.val_cache else cache
    saes = {s.sae_id: load_sae(root / s.out) for s in p.saes}
    config = dict(p.task.config)
    if not p.task.on_codes:
        config["features"] = ["raw"]
    rows = task_rows(p.task.kind, caches, saes=saes, config=config, device=device, seed=p.seed)
    atomic_write_json(root / job.outputs[0] / TASK_RECORD, {"task": p.task.to_dict(), "rows": rows})
    return {"rows": len(rows)}


STAGE = Stage("task", Params, run)
