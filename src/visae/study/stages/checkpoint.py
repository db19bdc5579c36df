"""``checkpoint`` jobs: one per existing SAE a block names (a hub repo's subfolder, a local folder, another
library's format) — locate its files (a hub repo: only that subfolder), refuse it when its recorded backbone
is not the block's, load it once, and write ``saes/<sae id>/reference.json`` (pinned to the hub commit, with
the files' sha256) where a train job would have written the weights. Evaluation, tasks, features and the
report then read it like a trained SAE; nothing is trained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from visae.io import hash_json
from visae.results.layout import SAES_DIR
from visae.sae.existing import ExistingSAE, describe
from visae.study.config import BackboneSpec, SAEGrid, StudyConfig
from visae.study.job import PLAN_VERSION, Job
from visae.study.stages.base import SAERecord, Stage, StageParams, make_job


class Params(StageParams):
    """One existing checkpoint."""

    ref: str = Field(description="its reference: REPO[:SUBFOLDER][@REVISION] or a path")
    sae: SAERecord = Field(description="the SAE record the plan gives it")


def record(cfg: StudyConfig, backbone: BackboneSpec, layer: int, grid: SAEGrid,
           item: ExistingSAE) -> SAERecord:
    """The plan's record of one existing checkpoint (id from its reference, backbone and layer)."""
    family, expansion, k = describe(item)
    sid = hash_json({"v": PLAN_VERSION, "checkpoint": item.ref, "backbone": backbone.name, "layer": layer})
    metrics = list(grid.metrics if grid.metrics is not None else cfg.metrics)
    return SAERecord(sae_id=sid, out=f"{SAES_DIR}/{sid}", grid=grid.name, backbone=backbone.name, layer=layer,
                     metrics=metrics, family=family, expansion=expansion, k=k, train={}, source=item.ref)


def plan(cfg: StudyConfig, backbone: BackboneSpec, layer: int, grid: SAEGrid, item: ExistingSAE) -> Job:
    """The job that brings one existing checkpoint into the study (no inputs: it reads the hub or a path)."""
    from visae.sae.existing import precheck_backbone

    precheck_backbone(item, where=f"saes[{grid.name}].checkpoints")
    rec = record(cfg, backbone, layer, grid, item)
    return make_job("checkpoint", f"checkpoint {backbone.name} L{layer} {item.ref}",
                    Params(ref=item.ref, sae=rec),
                    [], outputs=(rec.out,), backbone=backbone.name, layer=layer, sae_id=rec.sae_id)


def members(job: Job) -> list[SAERecord]:
    """The SAE a checkpoint job brings in (as a list, like a train job's members)."""
    return [Params.model_validate(job.params).sae]


def run(job: Job, p: Params, root: Path, device: str) -> dict[str, Any]:
    """Locate, check and load the checkpoint; write its reference folder."""
    from visae.sae.checkpoint import load_sae
    from visae.sae.existing import check_backbone
    from visae.sae.hub import locate_sae, write_reference

    located = locate_sae(p.ref)
    item = ExistingSAE(p.sae.sae_id, p.sae.backbone, p.sae.layer, p.ref)
    recorded = check_backbone(item, located.path, where=f"saes[{p.sae.grid}]")
    sae = load_sae(located.path)
    out = root / p.sae.out
    out.mkdir(parents=True, exist_ok=True)
    write_reference(out, located)
    return {"provenance": located.provenance, "recorded_backbone": recorded, "family": sae.family,
            "d_in": sae.d_in, "d_sae": sae.d_sae, "k": sae.k}


STAGE = Stage("checkpoint", Params, run)
