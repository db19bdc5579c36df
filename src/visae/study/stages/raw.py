"""``raw`` jobs: one per (backbone, layer) — the raw-backbone Moran's I diagnostic (App. G) on the evaluation
cache: ``raw.json`` (a result record) and the per-channel table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import Field

from visae.results.layout import RAW_DIR, RAW_RECORD
from visae.study.config import BackboneSpec, StudyConfig
from visae.study.job import Job
from visae.study.stages.base import Stage, StageParams, make_job, open_job_cache


class Params(StageParams):
    """The diagnostic of one backbone and layer."""

    omit_when_none = ("bootstrap",)

    cache: str = Field(description="the evaluation cache job's folder")
    backbone: str = Field(description="backbone name")
    layer: int = Field(description="layer")
    config: dict[str, Any] = Field(description="RawConfig settings (the study's metric_configs.raw)")
    bootstrap: dict[str, Any] | None = Field(None, description="bootstrap settings (None: the defaults)")


def plan(cfg: StudyConfig, backbone: BackboneSpec, layer: int, eval_cache: Job) -> Job:
    """The raw diagnostic job of one backbone and layer."""
    params = Params(cache=eval_cache.outputs[0], backbone=backbone.name, layer=layer,
                    config=cfg.metric_configs.get("raw", {}),
                    bootstrap=cfg.bootstrap.to_dict() if cfg.bootstrap is not None else None)
    return make_job("raw", f"raw M1 {backbone.name} L{layer}", params, [eval_cache], RAW_DIR,
                    backbone=backbone.name, layer=layer)


def run(job: Job, p: Params, root: Path, device: str) -> dict[str, Any]:
    """Raw-backbone Moran's I over the evaluation cache."""
    from visae.config import build_config
    from visae.device import pick_device
    from visae.metrics.m1_spatial import write_feature_table
    from visae.metrics.raw_spatial import CHANNELS_TABLE, RawConfig, compute_raw
    from visae.results.record import write_result_record
    from visae.uncertainty import BootstrapConfig

    started = time.perf_counter()
    cache = open_job_cache(root, p.cache)
    cfg = build_config(RawConfig, dict(p.config), source="metric_configs.raw")
    dev = pick_device(device)
    grid_hw = (cache.layout.grid_h, cache.layout.grid_w)
    batches = ((acts.to(dev), grid_hw, index)
               for index, acts in cache.iter_images(group_size=64, normalize=False))
    bootstrap = build_config(BootstrapConfig, dict(p.bootstrap or {}), source="bootstrap")
    result, means, count = compute_raw(batches, cfg, bootstrap=bootstrap)
    out = root / job.outputs[0]
    write_feature_table(out / CHANNELS_TABLE, means, count)
    write_result_record(out / RAW_RECORD, "raw", result.value, result.model_dump(mode="json"), cfg.to_dict(),
                        inputs={"cache": cache.manifest.hash, "backbone": p.backbone},
                        seconds={"total": time.perf_counter() - started})
    return {"value": result.value}


STAGE = Stage("raw", Params, run)
