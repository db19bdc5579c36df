"""The ``features`` job: the per-feature views the report shows (Fig. 5 activation maps, the feature
browser), computed from the SAEs and their evaluation caches into ``features/fig5.json`` and
``features/browser.json`` — the only stage after training that encodes for the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from visae.results.layout import BROWSER_FILE, FEATURES_DIR, FIG5_FILE
from visae.study.config import StudyConfig
from visae.study.job import Job
from visae.study.stages import eval as eval_stage
from visae.study.stages.base import SAERecord, Stage, StageParams, cache_path, make_job


class FeatureSAE(StageParams):
    """An evaluated SAE to view."""

    sae_id: str = Field(description="content id")
    out: str = Field(description="its folder")
    eval: str = Field(description="its evaluation folder")
    cache: str = Field(description="the evaluation cache job's folder")
    backbone: str = Field(description="backbone name")
    layer: int = Field(description="layer")
    family: str = Field(description="SAE family")
    expansion: int = Field(description="dictionary size / d_model")
    k: int = Field(description="K")


class Params(StageParams):
    """Which SAEs to view, and how many features per sort key in the browser."""

    saes: list[FeatureSAE] = Field(description="evaluated SAEs")
    browser_features: int = Field(description="features per sort key in the feature browser")


def plan(cfg: StudyConfig, saes: list[SAERecord], evals: list[Job], collect: Job) -> Job:
    """The features job, after collect (it reads the main slice from the results table)."""
    cache_of = {j.id: eval_stage.Params.model_validate(j.params).cache for j in evals}
    views = [FeatureSAE(sae_id=s.sae_id, out=s.out, eval=s.eval or "", cache=cache_of[s.eval_job or ""],
                        backbone=s.backbone, layer=s.layer, family=s.family, expansion=s.expansion, k=s.k)
             for s in saes]
    return make_job("features", "feature views", Params(saes=views, browser_features=cfg.browser_features),
                    [collect], outputs=(FEATURES_DIR,), wants_gpu=True, exact_done=True)


def run(job: Job, p: Params, root: Path, device: str) -> dict[str, Any]:
    """Write ``fig5.json`` (cells per backbone, or a note) and ``browser.json``."""
    from visae.device import pick_device
    from visae.features.views import SAEView, Scans, activation_grid, browser_entries
    from visae.io import atomic_write_json
    from visae.results.schema import primary_slice, validate_results
    from visae.results.table import read_results

    df = read_results(root)
    family, layer = primary_slice(validate_results(df)) if len(df) else (None, None)
    views = [SAEView(record=s.model_dump(mode="json"), sae_dir=root / s.out, eval_dir=root / s.eval,
                     cache_dir=cache_path(root, s.cache)) for s in p.saes]
    scans = Scans(pick_device(device))
    backbones = list(dict.fromkeys(s.backbone for s in p.saes))
    cells = activation_grid(views, backbones, family, layer, scans)
    out = root / job.outputs[0]
    atomic_write_json(out / FIG5_FILE, {"family": family, "layer": layer, "cells": cells})
    atomic_write_json(out / BROWSER_FILE, {"saes": browser_entries(views, scans, per_key=p.browser_features)})
    return {"fig5": len(cells), "browser": len(views)}


STAGE = Stage("features", Params, run)
