"""The ``collect`` job: every result record of the plan → ``results/results.parquet`` (tidy; schema in
:mod:`visae.results.schema`), ``results/details.parquet`` and the SAE index ``results/saes.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import Field

from visae.results.layout import (
    DETAILS_FILE,
    RAW_RECORD,
    RESULTS_DIR,
    RESULTS_FILE,
    SAE_INDEX_FILE,
    TASK_RECORD,
)
from visae.results.table import (
    raw_rows,
    read_record,
    sae_rows,
    split_details,
    task_record_rows,
    write_results,
)
from visae.study.job import Job
from visae.study.stages import raw, task
from visae.study.stages.base import SAERecord, Stage, StageParams, make_job


class RawOut(StageParams):
    """Where one raw diagnostic wrote."""

    out: str = Field(description="its folder")
    backbone: str = Field(description="backbone name")
    layer: int = Field(description="layer")


class TaskOut(RawOut):
    """Where one task job wrote."""

    task: str = Field(description="task name")


class Params(StageParams):
    """Every evaluation, raw diagnostic and task job of the plan."""

    omit_when_none = ("stability",)
    saes: list[SAERecord] = Field(description="the study's SAEs with their evaluation folders")
    raw: list[RawOut] = Field(description="raw diagnostic outputs")
    tasks: list[TaskOut] = Field(description="task outputs")
    stability: dict[str, Any] | None = Field(None, description="seed-stability settings (None: defaults)")


def plan(saes: list[SAERecord], evals: list[Job], raws: list[Job], tasks: list[Job],
         stability: dict[str, Any] | None = None) -> Job:
    """The collect job, after every evaluation, raw diagnostic and task."""
    raw_params = [(j, raw.Params.model_validate(j.params)) for j in raws]
    task_params = [(j, task.Params.model_validate(j.params)) for j in tasks]
    params = Params(
        saes=saes,
        raw=[RawOut(out=j.outputs[0], backbone=p.backbone, layer=p.layer) for j, p in raw_params],
        tasks=[TaskOut(out=j.outputs[0], backbone=p.backbone, layer=p.layer, task=p.task.name)
               for j, p in task_params], stability=stability)
    return make_job("collect", "collect results", params, [*evals, *raws, *tasks], outputs=(RESULTS_DIR,),
                    exact_done=True)


def sae_entry(root: Path, s: SAERecord) -> dict[str, Any]:
    """An SAE's index entry; an existing checkpoint's ``source`` becomes its provenance (ref, repo, revision,
    commit, file sha256) as its reference folder recorded it."""
    entry = s.model_dump(mode="json")
    if s.source is not None:
        from visae.sae.hub import read_reference

        pointer = read_reference(root / s.out)
        entry["source"] = {"ref": s.source, **((pointer or {}).get("provenance") or {})}
    return entry


def collect_results(root: Path, p: Params) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(headline table, details table) of every result record the plan's jobs wrote."""
    rows: list[dict[str, Any]] = []
    for s in p.saes:
        if s.eval is not None:
            rows.extend(sae_rows(root / s.eval, sae_entry(root, s)))
    for r in p.raw:
        rec = read_record(root / r.out / RAW_RECORD)
        if rec is not None:
            rows.extend(raw_rows(rec, r.backbone, r.layer))
    by_id = {s.sae_id: s.model_dump(mode="json") for s in p.saes}
    for t in p.tasks:
        rec = read_record(root / t.out / TASK_RECORD)
        if rec is not None:
            rows.extend(task_record_rows(rec, t.task, t.backbone, t.layer, by_id))
    rows.extend(stability_rows(root, p))
    return split_details(rows)


def _configuration(s: SAERecord) -> str:
    """What SAEs of one configuration share: everything but the seed."""
    import json

    return json.dumps([s.backbone, s.layer, s.grid, s.family, s.expansion, s.k, s.train, s.hparams],
                      sort_keys=True, default=str)


def stability_rows(root: Path, p: Params) -> list[dict[str, Any]]:
    """Seed stability (visae.metrics.stability) of every configuration trained with several seeds: one row
    ``stability`` per member SAE (the configuration's value and interval) and its details."""
    import math

    from visae.metrics.stability import StabilityConfig, seed_stability
    from visae.results.table import metric_rows
    from visae.sae.checkpoint import load_sae
    from visae.uncertainty import BootstrapConfig

    groups: dict[str, list[SAERecord]] = {}
    for s in p.saes:
        if s.seed is not None and s.source is None and s.eval is not None:
            groups.setdefault(_configuration(s), []).append(s)
    cfg = StabilityConfig.model_validate(p.stability or {})
    rows: list[dict[str, Any]] = []
    for members in groups.values():
        present = [m for m in members if (root / m.out).is_dir()]
        if len(present) < 2:
            continue
        decoders = [load_sae(root / m.out).W_dec.detach().cpu().numpy() for m in present]
        result = seed_stability(decoders, cfg, BootstrapConfig())
        record = {"metric": "stability", "result": result.model_dump(mode="json")}
        for m in present:
            base = sae_rows_base(root, m)
            for metric, value, hib in metric_rows("stability", record):
                rows.append({**base, "metric": metric, "value": value,
                             "higher_is_better": True if hib is None else bool(hib),
                             "ci_low": math.nan if result.ci_low is None or metric != "stability"
                             else result.ci_low,
                             "ci_high": math.nan if result.ci_high is None or metric != "stability"
                             else result.ci_high})
    return rows


def sae_rows_base(root: Path, s: SAERecord) -> dict[str, Any]:
    """The identifying columns of an SAE's rows (as :func:`visae.results.table.sae_rows` writes them)."""
    import json
    import math

    entry = sae_entry(root, s)
    return {"backbone": s.backbone, "family": s.family, "expansion": float(s.expansion), "k": float(s.k),
            "layer": int(s.layer), "sae_id": s.sae_id, "grid": s.grid,
            "seed": math.nan if s.seed is None else float(s.seed), "l0": math.nan,
            "sae_config": json.dumps({"family": s.family, "expansion": s.expansion, "k": s.k,
                                      "train": entry.get("train", {}),
                                      **({"seed": s.seed} if s.seed is not None else {})}, sort_keys=True)}


def run(job: Job, p: Params, root: Path, device: str) -> dict[str, Any]:
    """Write the results tables and the SAE index."""
    from visae.io import atomic_write_json

    df, details = collect_results(root, p)
    out = root / job.outputs[0]
    write_results(df, out / RESULTS_FILE)
    write_results(details, out / DETAILS_FILE)
    atomic_write_json(out / SAE_INDEX_FILE, {"saes": [sae_entry(root, s) for s in p.saes]})
    return {"rows": len(df)}


STAGE = Stage("collect", Params, run)
