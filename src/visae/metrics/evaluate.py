"""``visae.evaluate``: run named metrics on one SAE over one evaluation cache, in one encoding pass."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from visae.cache.reader import ActivationCache, open_cache
from visae.config import build_config
from visae.device import pick_device
from visae.errors import ConfigError
from visae.io import check_output_dir
from visae.metrics.base import METRICS, EvalContext, Metric, MetricConfig, MetricResult
from visae.metrics.encode import PooledCollector, PooledFeatures, encode_stream
from visae.results.record import write_result_record
from visae.sae.base import SAE
from visae.uncertainty import BootstrapConfig


def metric_class(name: str) -> type[Metric[Any]]:
    """The registered class for a metric name, importing its module if needed (ConfigError when unknown)."""
    return METRICS[name]


def metric_names(metrics: str | Sequence[str], field: str = "metrics",
                 example: str = "metrics=['m1', 'm2'] (--metrics m1,m2)") -> list[str]:
    """The metrics asked for, as a list: ``"m1,m2"`` or ``["m1", "m2"]`` (order kept, duplicates dropped);
    an empty request or an unknown name is a ConfigError naming ``field`` (the CLI's ``--metrics`` and the
    API share this check)."""
    if isinstance(metrics, str):
        items = [n.strip() for n in metrics.split(",")]
    elif isinstance(metrics, Sequence) and all(isinstance(n, str) for n in metrics):
        items = [n.strip() for n in metrics]
    else:
        raise ConfigError(f"{field}: expected metric names (e.g. 'm1,m2' or ['m1', 'm2']), got {metrics!r}")
    names = list(dict.fromkeys(n for n in items if n))
    if not names:
        raise ConfigError(f"{field}: no metric named; give e.g. {example}")
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ConfigError(f"{field}: unknown metric(s) {', '.join(unknown)}; known: "
                          f"{', '.join(METRICS.names())}")
    return names


def evaluate(
    sae: SAE | str | Path | None,
    cache: ActivationCache | str | Path,
    metrics: str | Sequence[str] = ("m1", "m2"),
    out_dir: str | Path | None = None,
    configs: Mapping[str, MetricConfig | Mapping[str, Any]] | None = None,
    device: str | torch.device | None = "auto",
    group_size: int = 64,
    backbone: str | None = None,
    strict: bool = False,
    force: bool = False,
    bootstrap: BootstrapConfig | Mapping[str, Any] | None = None,
    allow_other_size: bool = False,
    sae_options: Mapping[str, Any] | None = None,
) -> dict[str, MetricResult]:
    """Compute ``metrics`` for ``sae`` on ``cache``; write ``<out_dir>/<metric>.json`` when ``out_dir`` is
    given.

    Every metric shares one streaming pass over the cache: codes are computed once per evaluation.
    ``sae=None`` runs the raw-backbone diagnostic alone (``metrics=["raw"]``). An SAE trained on another
    backbone or layer than the cache's is a VisaeWarning (``strict``: a ConfigError). An ``out_dir`` holding
    results of another SAE or cache is refused with an OutputConflictError unless ``force`` (they are
    replaced).
    ``bootstrap`` sets the intervals beside each headline (default: 200 Poisson replicates over images,
    95 %; ``{"n_boot": 0}`` turns them off). An SAE whose training images had another patch grid (image
    size) than the cache's is a ConfigError unless ``allow_other_size``. A headline that comes out NaN
    is reported as None with a note saying so.
    ``sae_options`` are handed to the family's :meth:`~visae.sae.base.SAE.with_options` (Matryoshka:
    ``{"prefix": 768}`` evaluates the nested dictionary of the first 768 features); the results' SAE id
    then names them.
    """
    from visae.sae.checkpoint import sae_fingerprint

    metrics = metric_names(metrics)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ConfigError(f"group_size: expected a positive number of images per group, got {group_size!r}")
    unused = [name for name in (configs or {}) if name not in metrics]
    if unused:
        raise ConfigError(f"configs: settings for {', '.join(unused)}, which "
                          f"{'is' if len(unused) == 1 else 'are'} not among the metrics run "
                          f"({', '.join(metrics)}); add "
                          f"{'it' if len(unused) == 1 else 'them'} to the metrics or drop the settings")
    dev = pick_device(device)
    out_path = check_output_dir(out_dir) if out_dir is not None else None
    loaded, sae_id, provenance = _load(sae, metrics)
    if sae_options and loaded is not None:
        loaded = loaded.with_options(**sae_options)
        sae_id += "#" + ",".join(f"{k}={v}" for k, v in sorted(sae_options.items()))
    cache_obj = open_cache(cache)
    sae_model, sae_id = (loaded, sae_id) if loaded is not None else _passthrough(cache_obj)
    sae_hash = "none" if loaded is None else sae_fingerprint(sae_model)
    check_pairing(sae, cache_obj, strict)
    check_geometry(sae, cache_obj, allow_other_size)
    check_classes(metrics, cache_obj)
    if out_path is not None:
        check_previous_results(out_path, sae_hash, cache_obj.manifest.hash, force)
    boot = bootstrap if isinstance(bootstrap, BootstrapConfig) else build_config(
        BootstrapConfig, dict(bootstrap or {}), source="bootstrap")
    ctx = EvalContext(sae=sae_model, cache=cache_obj, device=dev, out_dir=out_path, sae_id=sae_id,
                      backbone=backbone or cache_obj.manifest.backbone,
                      extras={"sae_provenance": provenance, "sae_hash": sae_hash}, bootstrap=boot)
    instances = {name: _instantiate(name, (configs or {}).get(name, {}), ctx) for name in metrics}
    started = time.perf_counter()
    results: dict[str, MetricResult] = {}
    # pooled features go to a temporary folder ($TMPDIR) as they are made: flat memory at any cache size
    with tempfile.TemporaryDirectory(prefix="visae-pooled-") as spill:
        pooled = _stream(list(instances.values()), ctx, group_size, Path(spill))
        for name, metric in instances.items():
            finalize_started = time.perf_counter()
            results[name] = _explained(metric.finalize(pooled))
            if out_path is not None:
                write_result(out_path / f"{name}.json", results[name], metric.config, ctx,
                             seconds=time.perf_counter() - finalize_started,
                             stream_seconds=time.perf_counter() - started)
                write_saebench(out_path / f"{name}.json", sae_model if loaded is not None else None)
        del pooled  # its memory maps close before the folder goes
    return results


def write_saebench(record_path: Path, sae: SAE | None) -> Path:
    """The same numbers in SAEBench's shape: ``<folder>/saebench/<metric>.json`` beside a record
    (visae.results.saebench), with the SAE's config."""
    from visae.results.saebench import write_saebench as write
    from visae.sae.checkpoint import sae_config

    cfg = None
    if sae is not None:
        cfg = {k: v for k, v in sae_config(sae).items() if k not in ("normalization", "provenance")}
    return write(record_path, sae_cfg=cfg)


def _explained(result: MetricResult) -> MetricResult:
    """A NaN or infinite headline never goes out silently: it becomes None with a note saying what it was."""
    import math

    if result.value is None or math.isfinite(result.value):
        return result
    why = f"the computation gave {result.value} (non-finite inputs or a degenerate evaluation set)"
    return result.model_copy(update={"value": None, "note": f"{result.note}; {why}" if result.note else why})


def check_classes(metrics: Sequence[str], cache: ActivationCache) -> None:
    """ConfigError when a metric that fits class probes runs on an evaluation set of fewer classes than it
    needs (a one-class image set)."""
    import numpy as np

    have = len(np.unique(cache.labels))
    short = [m for m in metrics if have < getattr(metric_class(m), "min_classes", 0)]
    if short:
        raise ConfigError(f"{cache.path}: the evaluation images hold {have} class(es), but "
                          f"{', '.join(short)} fit{'s' if len(short) == 1 else ''} class probes that need at "
                          f"least {max(metric_class(m).min_classes for m in short)}; evaluate on images of "
                          f"several classes, or drop {', '.join(short)} from the metrics")


def training_geometry(sae: SAE | str | Path | None) -> dict[str, Any]:
    """Patch grid and image size of the images a local SAE was trained on ({} when unknown): read from its
    training cache's manifest (named by the checkpoint's provenance)."""
    import json

    import yaml

    if not isinstance(sae, (str, Path)) or not Path(sae).exists():
        return {}
    path = Path(sae)
    cfg_path = (path.parent if path.is_file() else path) / "config.yaml"
    try:
        cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else None
        prov = cfg.get("provenance") if isinstance(cfg, dict) else None
        caches = prov.get("cache") if isinstance(prov, dict) else None
        first = caches[0] if isinstance(caches, list) and caches else caches
        if not isinstance(first, str):
            return {}
        manifest = json.loads((Path(first) / "manifest.json").read_text(encoding="utf-8"))
        layout = manifest["layout"]
        grid = (int(layout["grid_h"]), int(layout["grid_w"]))
        return {"grid": grid, "image_size": grid[0] * int(layout["patch_size"]), "cache": first}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError):
        return {}


def check_geometry(sae: SAE | str | Path | None, cache: ActivationCache,
                   allow_other_size: bool = False) -> None:
    """ConfigError when ``sae`` was trained on images of another patch grid (image size) than ``cache``
    holds, unless ``allow_other_size`` (then a VisaeWarning): positions and scales of its features would not
    match."""
    geo = training_geometry(sae)
    lay = cache.layout
    if "grid" not in geo or geo["grid"] == (lay.grid_h, lay.grid_w):
        return
    gh, gw = geo["grid"]
    message = (f"SAE {sae} was trained on images of {geo['image_size']} px ({gh}×{gw} patches, cache "
               f"{geo['cache']}), but the cache {cache.path} holds {lay.grid_h * lay.patch_size} px images "
               f"({lay.grid_h}×{lay.grid_w} patches)")
    if not allow_other_size:
        raise ConfigError(message + f"; evaluate on images of {geo['image_size']} px (--image-size "
                          f"{geo['image_size']}), or pass --allow-other-size (allow_other_size=True) to "
                          "evaluate at this size anyway")
    import warnings

    from visae.errors import VisaeWarning

    warnings.warn(message + " (allowed: --allow-other-size)", VisaeWarning, stacklevel=3)


def _instantiate(name: str, given: MetricConfig | Mapping[str, Any], ctx: EvalContext) -> Metric[Any]:
    """Metric ``name`` with its config (a typed config as it is, a mapping validated over the defaults)."""
    cls = metric_class(name)
    config = given if isinstance(given, MetricConfig) else build_config(cls.config_cls, dict(given),
                                                                          source=f"metrics.{name}")
    return cls(config, ctx)


def _stream(instances: list[Metric[Any]], ctx: EvalContext, group_size: int,
            spill_dir: Path | None = None) -> PooledFeatures | None:
    """The one encoding pass: every streaming metric sees each group; the pooled features are collected
    (into files in ``spill_dir`` when given)."""
    needs_pooled = any(metric.needs_pooled for metric in instances)
    collector = PooledCollector(spill_dir) if needs_pooled else None
    streaming = [metric for metric in instances if metric.needs_stream]
    if collector is None and not streaming:
        return None
    # Codes stay sparse unless a metric declares that it reads the dense [n, P, F] view.
    dense = any(getattr(metric, "needs_dense_codes", False) for metric in instances)
    for batch in encode_stream(ctx.sae, ctx.cache, group_size=group_size, device=ctx.device,
                               dense_codes=dense):
        for metric in streaming:
            metric.update(batch)
        if collector is not None:
            collector.update(batch)
    return collector.result() if collector is not None else None


def write_result(path: Path, result: MetricResult, config: MetricConfig, ctx: EvalContext,
                 seconds: float, stream_seconds: float) -> None:
    """One metric's result record (visae.results.record): value, every summary number, config, inputs."""
    write_result_record(
        path, result.metric, result.value, result.model_dump(mode="json"), config.to_dict(),
        inputs={"sae": ctx.sae_id, "sae_hash": ctx.extras.get("sae_hash", ""),
                "cache": ctx.cache.manifest.hash,
                "cache_path": str(ctx.cache.path), "backbone": ctx.backbone,
                "sae_provenance": ctx.extras.get("sae_provenance") or None},
        seconds={"finalize": seconds, "total": stream_seconds})


NO_SAE = "none (raw backbone activations)"


def _load(sae: SAE | str | Path | None, metrics: Sequence[str]) -> tuple[SAE | None, str, dict[str, Any]]:
    """The SAE to encode with, its id in results and where its files came from (None: raw diagnostic only)."""
    from visae.sae.checkpoint import resolve_sae

    if sae is None:
        need = [m for m in metrics if m != "raw"]
        if need:
            raise ConfigError(f"metrics {', '.join(need)} need an SAE (--sae PATH); without one only the "
                              "raw-backbone diagnostic runs (--metrics raw)")
        return None, NO_SAE, {}
    resolved = resolve_sae(sae, with_provenance=True)  # a model, a local path or repo:subfolder@revision
    return resolved.model, resolved.sae_id, resolved.provenance


def _passthrough(cache: ActivationCache) -> tuple[SAE, str]:
    """Without an SAE only the raw diagnostic runs: a one-feature pass-through SAE carrying the cache's own
    normalization feeds it (``raw`` reads the normalized activations, not the codes)."""
    from visae.sae.registry import make_sae

    passthrough = make_sae("relu", cache.d_model, d_sae=1)
    passthrough.set_normalization(torch.as_tensor(cache.mean_d, dtype=torch.float32), cache.std)
    return passthrough, NO_SAE


def trained_on(sae: SAE | str | Path | None) -> dict[str, Any]:
    """Backbone and layer a local SAE checkpoint says it was trained on ({} when unknown): its config.yaml
    provenance, else its training cache's manifest (older checkpoints) or the release repo it came from."""
    import json

    import yaml

    if not isinstance(sae, (str, Path)):
        return {}
    path = Path(sae)
    if not path.exists():  # a hub reference: its files in the local cache (the evaluation fetched them)
        from visae.errors import VisaeError
        from visae.sae.hub import locate_sae, parse_sae_ref, release_backbone

        try:
            ref = parse_sae_ref(str(sae))
            if ref.hub and release_backbone(ref.target):
                return {"backbone": release_backbone(ref.target)}
            path = locate_sae(ref, hash_files=False).path
        except VisaeError:
            return {}
    cfg_path = (path.parent if path.is_file() else path) / "config.yaml"
    try:
        cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else None
    except (OSError, yaml.YAMLError):
        cfg = None
    prov = cfg.get("provenance") if isinstance(cfg, dict) else None
    out: dict[str, Any] = {k: prov[k] for k in ("backbone", "layer")
                           if k in prov} if isinstance(prov, dict) else {}
    if "layer" not in out and isinstance(prov, dict) and isinstance(prov.get("cache"), str):
        try:  # older checkpoints: read the training cache's manifest when it is still there
            manifest = json.loads((Path(prov["cache"]) / "manifest.json").read_text(encoding="utf-8"))
            out.setdefault("backbone", manifest["backbone"])
            out.setdefault("layer", manifest["layer"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    if "backbone" not in out:
        from visae.sae.existing import checkpoint_backbone

        found = checkpoint_backbone(path)
        if found is not None:
            out["backbone"] = found
    return out


def check_pairing(sae: SAE | str | Path | None, cache: ActivationCache, strict: bool = False) -> str | None:
    """Say so when an SAE was trained on another backbone or layer than ``cache`` holds (VisaeWarning;
    ``strict``: ConfigError). Returns the message, or None when they match or the SAE's origin is unknown."""
    from visae.backbones.registry import backbone_entry

    def canonical(name: str) -> str:
        entry = backbone_entry(name)
        return entry.name if entry is not None else name

    origin = trained_on(sae)
    m = cache.manifest
    if "backbone" not in origin:
        return None
    same_layer = origin.get("layer") in (None, m.layer)
    if canonical(str(origin["backbone"])) == canonical(m.backbone) and same_layer:
        return None
    at = f"{origin['backbone']}" + (f" layer {origin['layer']}" if "layer" in origin else "")
    message = (f"SAE {sae} was trained on {at} activations, but the cache {cache.path} holds {m.backbone} "
               f"layer {m.layer}; its codes there mean little. Evaluate on a cache of {at}")
    if strict:
        raise ConfigError(message + " (refused: --strict)")
    import warnings

    from visae.errors import VisaeWarning

    warnings.warn(message + " (--strict refuses this)", VisaeWarning, stacklevel=3)
    return message


def _record_inputs(path: Path) -> dict[str, Any] | None:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and data.get("metric") in METRICS and isinstance(data.get("inputs"), dict):
        return data["inputs"]
    return None


def check_previous_results(out_dir: Path, sae_hash: str, cache_hash: str, force: bool = False) -> list[Path]:
    """Refuse an output folder holding metric results of another SAE or cache, unless ``force``: then those
    results (``<metric>.json``, the metric's tables ``<metric>_*`` and ``saebench/<metric>.json``) are
    removed. Returns what was removed."""
    if not out_dir.is_dir():
        return []
    stale: list[tuple[Path, str]] = []
    for record in sorted(out_dir.glob("*.json")):
        inputs = _record_inputs(record)
        if inputs is None:
            continue
        diffs = []
        if inputs.get("cache") not in (None, cache_hash):
            diffs.append(f"cache {inputs.get('cache')} → {cache_hash}")
        if inputs.get("sae_hash") not in (None, "", sae_hash):
            diffs.append(f"SAE {inputs.get('sae')} (hash {inputs.get('sae_hash')}) → hash {sae_hash}")
        if diffs:
            stale.append((record, "; ".join(diffs)))
    if stale and not force:
        from visae.errors import OutputConflictError

        record, diff = stale[0]
        raise OutputConflictError(f"{out_dir}: holds results of another SAE or cache ({record.name}: "
                                  f"{diff}); pass --force (force=True) to replace them, or write to another "
                                  "--out folder")
    from visae.results.saebench import SAEBENCH_DIR

    removed = []
    for record, _ in stale:
        shaped = out_dir / SAEBENCH_DIR / record.name  # its SAEBench-shaped copy goes with it
        for p in [record, *out_dir.glob(f"{record.stem}_*"), shaped]:
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
