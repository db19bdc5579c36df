"""What each kind of job does, and the protocol around it: skip when done, run, then write ``done.json`` last.

Every runner reads its inputs from folders named in its parameters (relative to the study root) and writes
only inside its own output folder(s), so a killed job leaves at worst an incomplete folder without
``done.json``, which the next run redoes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from visae.errors import StudyError
from visae.study.plan import Job
from visae.study.store import output_done, read_done, write_done

Runner = Callable[[Job, Path, str], dict[str, Any]]

FAILURE_HOOK: Callable[[Job], None] | None = None
"""Test hook: called before each job runs in this process (raise to simulate a crash)."""

FAIL_ENV = "VISAE_STUDY_FAIL"
"""Test hook across processes: ``<kind>[:<times>]`` makes the first <times> (default: every) job runs of
that kind raise, counted in ``<root>/.inject-<kind>``."""


class InjectedFailure(RuntimeError):
    """Raised by the failure-injection hooks."""


def job_done(job: Job, root: Path | str) -> bool:
    """True when every output folder of ``job`` holds its done.json."""
    root = Path(root)
    return all(output_done(root, out, job.id, job.kind) for out in job.outputs)


def _inject(job: Job, root: Path) -> None:
    if FAILURE_HOOK is not None:
        FAILURE_HOOK(job)
    spec = os.environ.get(FAIL_ENV, "")
    if not spec:
        return
    kind, _, times = spec.partition(":")
    if kind != job.kind:
        return
    counter = root / f".inject-{kind}"
    n = int(counter.read_text()) if counter.exists() else 0
    if times and n >= int(times):
        return
    counter.write_text(str(n + 1))
    raise InjectedFailure(f"injected failure in {job.label} ({FAIL_ENV}={spec})")


def import_plugins(plugins: list[str] | tuple[str, ...] = ()) -> None:
    """Import modules that register backbones, image sources or metrics (in whatever process runs a job)."""
    import importlib

    for name in plugins:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise StudyError(f"plugins: cannot import {name!r} ({e}); install it or fix the study's 'plugins'") from e


def execute_job(job: Job, root: str | Path, device: str = "auto", plugins: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run ``job`` unless done; write each output's done.json after its files. Returns the runner's info."""
    root = Path(root)
    import_plugins(plugins)
    if job_done(job, root):
        return read_done(root / job.outputs[0]) or {}
    _inject(job, root)
    runner = RUNNERS.get(job.kind)
    if runner is None:
        raise StudyError(f"job {job.label}: no runner for kind {job.kind!r}")
    t0 = time.perf_counter()
    info = runner(job, root, device) or {}
    record = {"job_id": job.id, "kind": job.kind, "label": job.label, "params": job.params,
              "deps": list(job.deps), "seconds": round(time.perf_counter() - t0, 3), "info": info}
    for out in job.outputs:
        if not output_done(root, out, job.id, job.kind):
            write_done(root / out, record)
    return record


# --- runners ----------------------------------------------------------------------------------------------

def _cache_path(root: Path, out: str) -> Path:
    """The cache folder inside a cache job's output (build_cache names its own sub-folder)."""
    folder = root / out
    rec = read_done(folder)
    if rec is not None and rec.get("info", {}).get("cache"):
        return folder / rec["info"]["cache"]
    if (folder / "manifest.json").exists():
        return folder
    found = sorted(p.parent for p in folder.glob("*/manifest.json"))
    if not found:
        raise StudyError(f"{folder}: no activation cache inside (no */manifest.json); delete the folder and rerun")
    return found[0]


def open_job_cache(root: Path, out: str) -> Any:
    """Open the activation cache a cache job wrote."""
    from visae.cache.reader import open_cache

    return open_cache(_cache_path(root, out))


def run_cache(job: Job, root: Path, device: str) -> dict[str, Any]:
    """Cache one image set's activations at one layer of one backbone."""
    from visae.backbones.registry import load_backbone
    from visae.cache.writer import build_cache
    from visae.datasets.registry import open_source

    p = job.params
    b = p["backbone"]
    backbone = load_backbone(b["name"], device=device, weights_path=b.get("weights_path"),
                             image_size=b.get("image_size"))
    s = p["source"]
    source = open_source(s["spec"], split=s["split"], max_images=s.get("max_images"), seed=s.get("seed", 42))
    out_dir = root / job.outputs[0]
    settings = {"progress": False, **p.get("settings", {})}
    cache_dir = Path(build_cache(backbone, source, p["layer"], out_dir, device=device, **settings))
    return {"cache": str(cache_dir.relative_to(out_dir)) if cache_dir != out_dir else "",
            "n_images": len(source)}


def run_train(job: Job, root: Path, device: str) -> dict[str, Any]:
    """Train every SAE of a group that is not done yet, in one pass over the training cache.

    Checkpoints go to ``train/<job id>/<sae id>`` (with the trainer's resumable state), then each moves to
    ``saes/<sae id>`` and gets its done.json.
    """
    import shutil

    from visae.config import build_config
    from visae.errors import ConfigError
    from visae.sae.train import SAESpec, TrainConfig, train_saes

    p = job.params
    todo = [m for m in p["saes"] if read_done(root / m["out"]) is None]
    if not todo:
        return {"trained": 0}
    cache = open_job_cache(root, p["cache"])
    specs = [SAESpec(family=m["family"], expansion=m["expansion"], k=m["k"], hparams=dict(m.get("hparams", {})),
                     name=m["sae_id"]) for m in todo]
    settings = {"seed": p["seed"], "progress": False, **p["train"], "device": device}
    cfg = build_config(TrainConfig, settings, source=f"study train settings ({job.label})")
    work = root / "train" / job.id
    try:
        paths = train_saes(cache, specs, work, cfg)
    except ConfigError as e:
        if "the saved run trained" not in str(e):
            raise
        shutil.rmtree(work)  # a resumable state of another member set: start this set afresh
        paths = train_saes(cache, specs, work, cfg)
    for m, path in zip(todo, paths, strict=True):
        out = root / m["out"]
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, out)
        write_done(out, {"job_id": job.id, "kind": "sae", "sae_id": m["sae_id"], "params": m})
    shutil.rmtree(work, ignore_errors=True)
    return {"trained": len(todo)}


def run_eval(job: Job, root: Path, device: str) -> dict[str, Any]:
    """Every metric of one SAE in one encoding pass; results in ``<out>/<metric>.json``."""
    from visae.metrics.evaluate import evaluate
    from visae.sae.checkpoint import load_sae

    p = job.params
    sae = load_sae(root / p["sae"])
    cache = open_job_cache(root, p["cache"])
    configs: dict[str, dict[str, Any]] = {k: dict(v) for k, v in p["metric_configs"].items()}
    extras = study_metric_extras(p, root)
    for name, extra in extras.items():
        configs[name] = {**extra, **configs.get(name, {})}
    out = root / job.outputs[0]
    results = evaluate(sae, cache, metrics=p["metrics"], out_dir=out, configs=configs, device=device,
                       group_size=p["group_size"], backbone=p["backbone"])
    return {"values": {k: v.value for k, v in results.items()}}


def study_metric_extras(p: dict[str, Any], root: Path) -> dict[str, dict[str, Any]]:
    """Settings the study supplies to metrics: M6's OOD caches, M5's evaluator backbone."""
    extras: dict[str, dict[str, Any]] = {}
    if "m6" in p["metrics"] and p.get("ood"):
        tests = p.get("ood_test", {})
        extras["m6"] = {"datasets": [
            {"name": name, "train_cache": str(_cache_path(root, out)),
             **({"test_cache": str(_cache_path(root, tests[name]))} if name in tests else {})}
            for name, out in p["ood"].items()]}
    if "m5" in p["metrics"] and p.get("evaluator"):
        ev = p["evaluator"]
        extras["m5"] = {"evaluator": ev["name"]}
        if ev.get("weights_path"):
            extras["m5"]["evaluator_weights"] = ev["weights_path"]
        if ev.get("image_size"):
            extras["m5"]["evaluator_image_size"] = ev["image_size"]
    return extras


def run_raw(job: Job, root: Path, device: str) -> dict[str, Any]:
    """Raw-backbone Moran's I diagnostic (App. G) on the evaluation cache: ``raw.json`` + per-channel table."""
    from visae.config import build_config
    from visae.device import pick_device
    from visae.io import atomic_write_json
    from visae.metrics.m1_spatial import write_feature_table
    from visae.metrics.raw_spatial import CHANNELS_TABLE, RawConfig, compute_raw

    p = job.params
    cache = open_job_cache(root, p["cache"])
    cfg = build_config(RawConfig, dict(p.get("config") or {}), source="metric_configs.raw")
    dev = pick_device(device)
    grid_hw = (cache.layout.grid_h, cache.layout.grid_w)
    batches = ((acts.to(dev), grid_hw) for _, acts in cache.iter_images(group_size=64, normalize=False))
    result, means, count = compute_raw(batches, cfg)
    out = root / job.outputs[0]
    write_feature_table(out / CHANNELS_TABLE, means, count)
    atomic_write_json(out / "raw.json", {"metric": "raw", "value": result.value,
                                         "result": result.model_dump(mode="json"), "config": cfg.to_dict(),
                                         "inputs": {"cache": cache.manifest.hash, "backbone": p["backbone"]}})
    return {"value": result.value}


def run_task(job: Job, root: Path, device: str) -> dict[str, Any]:
    """A downstream task on raw features once and on each SAE's codes; rows in ``<out>/task.json``."""
    from visae.io import atomic_write_json
    from visae.sae.checkpoint import load_sae
    from visae.tasks import task_rows

    p = job.params
    task = p["task"]
    cache = open_job_cache(root, p["cache"])
    caches: Any = {"train": cache, "val": open_job_cache(root, p["val_cache"])} if p.get("val_cache") else cache
    saes = {s["sae_id"]: load_sae(root / s["out"]) for s in p["saes"]}
    config = dict(task.get("config", {}))
    if not task.get("on_codes", True):
        config["features"] = ["raw"]
    rows = task_rows(task["kind"], caches, saes=saes, config=config, device=device, seed=p["seed"])
    atomic_write_json(root / job.outputs[0] / "task.json", {"task": task, "rows": rows})
    return {"rows": len(rows)}


def run_collect(job: Job, root: Path, device: str) -> dict[str, Any]:
    """Gather every result JSON into ``results/results.parquet`` (tidy; visae.analysis.schema)."""
    from visae.study.results import collect_results

    df = collect_results(root, job.params)
    return {"rows": len(df)}


def run_analysis(job: Job, root: Path, device: str) -> dict[str, Any]:
    """Variance decomposition, hypotheses, correlations, codes-lift and consistency tables."""
    from visae.study.results import run_study_analysis

    return run_study_analysis(root, job.params)


def run_report(job: Job, root: Path, device: str) -> dict[str, Any]:
    """The HTML report and the feature browser."""
    from visae.report.html import write_report

    paths = write_report(root, out_dir=root / job.outputs[0], params=job.params, device=device)
    return {k: str(v) for k, v in paths.items()}


RUNNERS: dict[str, Runner] = {
    "cache": run_cache, "train": run_train, "eval": run_eval, "raw": run_raw, "task": run_task,
    "collect": run_collect, "analysis": run_analysis, "report": run_report,
}
