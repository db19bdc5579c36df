"""``visae.evaluate``: run named metrics on one SAE over one evaluation cache, in one encoding pass."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from visae.cache.reader import ActivationCache, open_cache
from visae.config import build_config
from visae.device import pick_device
from visae.metrics.base import METRICS, EvalContext, Metric, MetricConfig, MetricResult
from visae.metrics.encode import PooledCollector, encode_stream
from visae.results.record import write_result_record
from visae.sae.base import SAE


def metric_class(name: str) -> type[Metric[Any]]:
    """The registered class for a metric name, importing its module if needed (ConfigError when unknown)."""
    return METRICS[name]


def evaluate(
    sae: SAE | str | Path,
    cache: ActivationCache | str | Path,
    metrics: Sequence[str] = ("m1", "m2"),
    out_dir: str | Path | None = None,
    configs: Mapping[str, MetricConfig | Mapping[str, Any]] | None = None,
    device: str | torch.device | None = "auto",
    group_size: int = 64,
    backbone: str | None = None,
) -> dict[str, MetricResult]:
    """Compute ``metrics`` for ``sae`` on ``cache``; write ``<out_dir>/<metric>.json`` when ``out_dir`` is given.

    Every metric shares one streaming pass over the cache: codes are computed once per evaluation.
    """
    from visae.sae.checkpoint import resolve_sae

    provenance: dict[str, Any] = {}
    if isinstance(sae, (str, Path)):
        from visae.sae.checkpoint import load_sae_with_provenance

        sae_model, provenance = load_sae_with_provenance(sae)  # a local path or repo:subfolder@revision
        sae_id = str(sae)
    else:
        sae_model, sae_id = resolve_sae(sae)
    cache_obj = open_cache(cache)
    dev = pick_device(device)
    out_path = Path(out_dir) if out_dir is not None else None
    ctx = EvalContext(sae=sae_model, cache=cache_obj, device=dev, out_dir=out_path, sae_id=sae_id,
                      backbone=backbone or cache_obj.manifest.backbone, extras={"sae_provenance": provenance})
    instances: dict[str, Metric[Any]] = {}
    for name in metrics:
        cls = metric_class(name)
        given = (configs or {}).get(name, {})
        cfg = given if isinstance(given, MetricConfig) else build_config(cls.config_cls, dict(given), source=f"metrics.{name}")
        instances[name] = cls(cfg, ctx)

    started = time.perf_counter()
    collector = PooledCollector() if any(m.needs_pooled for m in instances.values()) else None
    if collector is not None or any(m.needs_stream for m in instances.values()):
        # Codes stay sparse unless a metric declares that it reads the dense [n, P, F] view.
        dense = any(getattr(m, "needs_dense_codes", False) for m in instances.values())
        for batch in encode_stream(sae_model, cache_obj, group_size=group_size, device=dev, dense_codes=dense):
            for m in instances.values():
                if m.needs_stream:
                    m.update(batch)
            if collector is not None:
                collector.update(batch)
    pooled = collector.result() if collector is not None else None

    results: dict[str, MetricResult] = {}
    for name, m in instances.items():
        t0 = time.perf_counter()
        results[name] = m.finalize(pooled)
        if out_path is not None:
            write_result(out_path / f"{name}.json", results[name], m.config, ctx,
                         seconds=time.perf_counter() - t0, stream_seconds=time.perf_counter() - started)
    return results


def write_result(path: Path, result: MetricResult, config: MetricConfig, ctx: EvalContext,
                 seconds: float, stream_seconds: float) -> None:
    """One metric's result record (visae.results.record): value, every summary number, config, inputs."""
    write_result_record(
        path, result.metric, result.value, result.model_dump(mode="json"), config.to_dict(),
        inputs={"sae": ctx.sae_id, "cache": ctx.cache.manifest.hash, "cache_path": str(ctx.cache.path),
                "backbone": ctx.backbone, "sae_provenance": ctx.extras.get("sae_provenance") or None},
        seconds={"finalize": seconds, "total": stream_seconds})
