"""Downstream tasks for the hypotheses (§4.5): retrieval, segmentation, classification and sparse probing.

``run_task(name, sae, caches, config, out_dir)`` runs one task for one SAE (or none: raw features only) and
writes ``<out_dir>/task_<task>.json``; ``task_rows`` runs it once on raw features and on the codes of several
SAEs of one backbone, returning tidy rows for a study's results table (metric names in
:mod:`visae.results.schema`).

- ``retrieval``: cosine R@1/5/10 on max-pooled features (leave-one-out); metric names:
  ``task:retrieval_r{1,5,10}:<features>``
- ``segmentation``: linear head on patch features, ADE20K mIoU; metric names:
  ``task:segmentation_miou:<features>``
- ``classification`` / ``cub`` / ``dtd`` / ``inat``: probe accuracy; sparse-probing AUC at k on codes; metric
  names: ``task:<name>_acc:<features>``, ``task:<name>_sparse_auc128:codes``
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from visae.cache.reader import ActivationCache, open_cache
from visae.config import build_config
from visae.device import pick_device
from visae.errors import ConfigError
from visae.sae.base import SAE
from visae.tasks.base import TaskConfig, TaskResult, write_task_result
from visae.tasks.registry import TASKS, TaskSpec

CacheArg = ActivationCache | str | Path | Mapping[str, ActivationCache | str | Path]
TASK_NAMES = tuple(TASKS)


def task_config(name: str, config: TaskConfig | Mapping[str, Any] | None = None) -> TaskConfig:
    """The validated config of task ``name`` (a mapping is merged over the task's defaults)."""
    spec = TASKS[name]
    if isinstance(config, TaskConfig):
        if not isinstance(config, spec.config_cls):
            raise ConfigError(f"task {name}: expected a {spec.config_cls.__name__}, got "
                              f"{type(config).__name__}")
        return config
    return build_config(spec.config_cls, {**spec.defaults, **dict(config or {})}, source=f"tasks.{name}")


def _open_caches(caches: CacheArg) -> ActivationCache | dict[str, ActivationCache]:
    if isinstance(caches, Mapping):
        return {k: open_cache(v) for k, v in caches.items()}
    return open_cache(caches)


def _inputs(caches: ActivationCache | dict[str, ActivationCache], sae_id: str) -> dict[str, Any]:
    group = caches if isinstance(caches, dict) else {"cache": caches}
    return {"sae": sae_id,
            **{k: {"hash": c.manifest.hash, "path": str(c.path), "backbone": c.manifest.backbone}
                              for k, c in group.items()}}


def run_task(name: str, sae: SAE | str | Path | None, caches: CacheArg,
             config: TaskConfig | Mapping[str, Any] | None = None, out_dir: str | Path | None = None,
             device: str | torch.device = "auto") -> TaskResult:
    """Run task ``name`` for ``sae`` (None: raw features only) on ``caches`` (one cache, or a mapping such as
    ``{"train": …, "val": …}``); write ``<out_dir>/task_<task>.json`` when ``out_dir`` is given."""
    from visae.sae.checkpoint import resolve_sae

    started = time.perf_counter()
    cfg = task_config(name, config)
    resolved = resolve_sae(sae) if sae is not None else None
    model, sae_id = (resolved.model, resolved.sae_id) if resolved is not None else (None, "")
    if model is None and cfg.features != ["raw"]:
        cfg = cfg.model_copy(update={"features": ["raw"]})
    opened = _open_caches(caches)
    result = TASKS[name].runner(model, opened, cfg, pick_device(device))
    if out_dir is not None:
        write_task_result(out_dir, result, cfg, _inputs(opened, sae_id), started)
    return result


def task_rows(name: str, caches: CacheArg, saes: Mapping[str, SAE], config: Mapping[str, Any] | None = None,
              device: str | torch.device = "auto", seed: int | None = None) -> list[dict[str, Any]]:
    """Task ``name`` on raw features once and on each SAE's codes (and reconstructions if configured):
    rows ``{metric, features, value, sae_id}`` (``sae_id`` empty for raw), as a study collects them.

    Raw features are normalized by the first SAE's stored statistics (the same for every SAE of one
    backbone and layer), or by the cache's own when ``saes`` is empty.
    """
    base = dict(config or {})
    if seed is not None:
        base.setdefault("seed", seed)
    cfg = task_config(name, base)
    opened = _open_caches(caches)
    first = next(iter(saes.values()), None)
    rows: list[dict[str, Any]] = []
    if "raw" in cfg.features:
        rows += run_task(name, first, opened, cfg.model_copy(update={"features": ["raw"]}),
                         device=device).rows("")
    sae_kinds = [k for k in cfg.features if k != "raw"]
    if sae_kinds:
        for sae_id, sae in saes.items():
            res = run_task(name, sae, opened, cfg.model_copy(update={"features": sae_kinds}), device=device)
            rows += res.rows(sae_id)
    return rows


__all__ = ["TASKS", "TASK_NAMES", "TaskConfig", "TaskResult", "TaskSpec", "run_task", "task_config",
           "task_rows"]
