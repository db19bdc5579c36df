"""``train`` jobs: one per (backbone, layer, family, training settings) — every SAE of the group in one pass
over the training cache. Each SAE has its own folder and done.json, so a grown grid trains only the new
ones."""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path
from typing import Any

from pydantic import Field

from visae.io import hash_json
from visae.results.layout import SAES_DIR, TRAIN_DIR
from visae.study.config import BackboneSpec, SAEGrid, StudyConfig
from visae.study.job import Job, sae_id_for
from visae.study.protocol import read_done, write_done
from visae.study.stages.base import SAERecord, Stage, StageParams, make_job, open_job_cache


class Params(StageParams):
    """One training group."""

    cache: str = Field(description="the training cache job's folder")
    backbone: str = Field(description="backbone name")
    layer: int = Field(description="layer")
    family: str = Field(description="SAE family of the group")
    train: dict[str, Any] = Field(description="training settings shared by the group")
    saes: list[SAERecord] = Field(description="the SAEs of the group")
    seed: int = Field(description="the study's seed")


def _group_members(cfg: StudyConfig, backbone: BackboneSpec, layer: int, grids: list[SAEGrid],
                   train_cache: Job) -> dict[str, list[SAERecord]]:
    """SAEs by training group: same family and same effective training settings share one pass."""
    groups: dict[str, list[SAERecord]] = {}
    for grid in grids:
        train_settings = {**cfg.train, **grid.train}
        key = hash_json({"family": grid.family, "train": train_settings, "hparams": grid.hparams})
        metrics = list(grid.metrics if grid.metrics is not None else cfg.metrics)
        seeds: list[int | None] = list(grid.seeds) if grid.seeds is not None else [None]
        for expansion, k, seed in itertools.product(grid.expansions, grid.ks, seeds):
            sae_params = {"family": grid.family, "expansion": expansion, "k": k, "train": train_settings,
                          **({"hparams": dict(grid.hparams)} if grid.hparams else {}),
                          **({"seed": seed} if seed is not None else {})}
            sid = sae_id_for(sae_params, train_cache)
            group = groups.setdefault(key, [])
            if all(r.sae_id != sid for r in group):
                group.append(SAERecord(sae_id=sid, out=f"{SAES_DIR}/{sid}", grid=grid.name,
                                       backbone=backbone.name,
                                       layer=layer, metrics=metrics, **sae_params))
    return groups


def plan(cfg: StudyConfig, backbone: BackboneSpec, layer: int, grids: list[SAEGrid],
         train_cache: Job) -> list[Job]:
    """The training jobs of the SAE blocks ``grids`` at one backbone and layer."""
    jobs = []
    for members in _group_members(cfg, backbone, layer, grids, train_cache).values():
        family = members[0].family
        params = Params(cache=train_cache.outputs[0], backbone=backbone.name, layer=layer, family=family,
                        train=members[0].train, saes=members, seed=cfg.seed)
        jobs.append(make_job("train", f"train {backbone.name} L{layer} {family} ×{len(members)}", params,
                             [train_cache], outputs=tuple(m.out for m in members), wants_gpu=True,
                             backbone=backbone.name, layer=layer))
    return jobs


def members(job: Job) -> list[SAERecord]:
    """The SAEs a training job trains."""
    return Params.model_validate(job.params).saes


def run(job: Job, p: Params, root: Path, device: str) -> dict[str, Any]:
    """Train every SAE of a group that is not done yet, in one pass over the training cache.

    Checkpoints go to ``train/<job id>/<sae id>`` (with the trainer's resumable state), then each moves to
    ``saes/<sae id>`` and gets its done.json.
    """
    from visae.config import build_config
    from visae.sae.train import SAESpec, TrainConfig, TrainStateMismatch, train_saes

    todo = [m for m in p.saes if read_done(root / m.out) is None]
    if not todo:
        return {"trained": 0}
    cache = open_job_cache(root, p.cache)
    settings = {"seed": p.seed, "progress": False, **p.train, "device": device}
    cfg = build_config(TrainConfig, settings, source=f"study train settings ({job.label})")
    # Each SAE's initialisation follows from its place in the whole group, not among those left to
    # train: a run resumed after some members finished initialises the rest exactly as a clean run.
    place = {m.sae_id: i for i, m in enumerate(p.saes)}
    specs = [SAESpec(family=m.family, expansion=m.expansion, k=m.k, hparams=dict(m.hparams or {}),
                     name=m.sae_id, seed=m.seed if m.seed is not None else cfg.seed + place[m.sae_id])
             for m in todo]
    work = root / TRAIN_DIR / job.id
    try:
        paths = train_saes(cache, specs, work, cfg)
    except TrainStateMismatch:
        shutil.rmtree(work)  # a resumable state of another member set: start this set afresh
        paths = train_saes(cache, specs, work, cfg)
    for m, path in zip(todo, paths, strict=True):
        out = root / m.out
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, out)
        write_done(out,
                   {"job_id": job.id, "kind": "sae", "sae_id": m.sae_id, "params": m.model_dump(mode="json")})
    shutil.rmtree(work, ignore_errors=True)
    return {"trained": len(todo)}


STAGE = Stage("train", Params, run)
