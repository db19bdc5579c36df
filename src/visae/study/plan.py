"""Planning: turn a StudyConfig into a graph of content-addressed jobs.

A job's id is a hash of its kind, its parameters and its inputs' ids, so the same grid planned twice
gives the same ids, and a job whose folder holds a matching ``done.json`` is skipped. Jobs:

- ``cache``  one per (backbone, layer, image set): activations of that set at that layer;
- ``train``  one per (backbone, layer, family, training settings): every SAE of the group in one pass over
  the training cache (each SAE has its own folder and ``done.json``, so a grown grid trains only the new ones);
- ``eval``   one per SAE: every metric in one encoding pass over the evaluation cache (+ OOD caches for M6);
- ``raw``    one per (backbone, layer): the raw-backbone Moran's I diagnostic (App. G);
- ``task``   one per (task, backbone, layer): the task on raw features and on each SAE's codes;
- ``collect`` → ``results.parquet``; ``analysis`` → variance decomposition, hypotheses, tables;
  ``report`` → the HTML report and the feature browser.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from visae.io import hash_json
from visae.study.config import TEST_ROLE, BackboneSpec, SAEGrid, StudyConfig

PLAN_VERSION = 1


@dataclass(frozen=True)
class Job:
    """One unit of work; ``outputs`` are folders under the study root, each done when its done.json says so."""

    id: str
    kind: str
    label: str
    params: dict[str, Any]
    deps: tuple[str, ...]
    outputs: tuple[str, ...]
    wants_gpu: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    """Jobs in a valid execution order (every job after its dependencies)."""

    jobs: list[Job]

    def by_id(self) -> dict[str, Job]:
        """Jobs keyed by id."""
        return {j.id: j for j in self.jobs}

    def of_kind(self, kind: str) -> list[Job]:
        """Jobs of one kind, in plan order."""
        return [j for j in self.jobs if j.kind == kind]


def _job(kind: str, label: str, params: dict[str, Any], deps: list[Job], out_prefix: str | None,
         wants_gpu: bool = False, outputs: tuple[str, ...] | None = None, **meta: Any) -> Job:
    job_id = hash_json({"v": PLAN_VERSION, "kind": kind, "params": params, "deps": sorted(d.id for d in deps)})
    outs = outputs if outputs is not None else (f"{out_prefix}/{job_id}",)
    return Job(id=job_id, kind=kind, label=label, params=params, deps=tuple(d.id for d in deps),
               outputs=outs, wants_gpu=wants_gpu, meta=meta)


def sae_id_for(params: dict[str, Any], cache_job: Job) -> str:
    """Content id of one SAE: its family, size, K, training settings and the training cache's id."""
    return hash_json({"v": PLAN_VERSION, "sae": params, "cache": cache_job.id})


def _grid_layers(grid: SAEGrid, cfg: StudyConfig) -> list[int]:
    return list(grid.layers) if grid.layers is not None else list(cfg.layers)


def _grid_backbones(grid: SAEGrid, cfg: StudyConfig) -> list[BackboneSpec]:
    return [b for b in cfg.backbones if grid.backbones is None or b.name in grid.backbones]


def plan_study(cfg: StudyConfig) -> Plan:
    """All jobs of ``cfg`` in dependency order (the study's plugins are imported first: they may register
    backbones whose evaluator pairing enters the plan)."""
    from visae.study.jobs import import_plugins

    import_plugins(cfg.plugins)
    jobs: list[Job] = []
    caches: dict[tuple[str, int, str], Job] = {}

    def cache_job(backbone: BackboneSpec, layer: int, role: str) -> Job:
        key = (backbone.name, layer, role)
        if key not in caches:
            params = {
                "backbone": backbone.model_dump(mode="json", exclude={"label", "evaluator"}),
                "layer": layer,
                "source": cfg.source(role).to_dict(),
                "settings": dict(cfg.cache),
            }
            job = _job("cache", f"cache {backbone.name} L{layer} {role}", params, [], "caches", wants_gpu=True,
                       backbone=backbone.name, layer=layer, role=role)
            caches[key] = job
            jobs.append(job)
        return caches[key]

    # Which (backbone, layer) pairs the grid touches, and the SAEs on each.
    pairs: list[tuple[BackboneSpec, int]] = []
    for grid in cfg.saes:
        for b in _grid_backbones(grid, cfg):
            for layer in _grid_layers(grid, cfg):
                if (b, layer) not in pairs:
                    pairs.append((b, layer))

    eval_jobs: list[Job] = []
    sae_records: list[dict[str, Any]] = []
    task_jobs: list[Job] = []
    raw_jobs: list[Job] = []
    for b, layer in pairs:
        train_cache = cache_job(b, layer, "train")
        eval_cache = cache_job(b, layer, "eval")
        pair_grids = [g for g in cfg.saes if b in _grid_backbones(g, cfg) and layer in _grid_layers(g, cfg)]
        wants_m6 = any("m6" in (g.metrics if g.metrics is not None else cfg.metrics) for g in pair_grids)
        ood_caches: dict[str, Job] = {}
        ood_tests: dict[str, Job] = {}
        if wants_m6:
            for name, spec in cfg.data.ood.items():
                ood_caches[name] = cache_job(b, layer, name)
                if spec.test_split is not None:
                    ood_tests[name] = cache_job(b, layer, name + TEST_ROLE)
        # Training groups: same family and same effective training settings share one pass.
        groups: dict[str, list[dict[str, Any]]] = {}
        for grid in cfg.saes:
            if b not in _grid_backbones(grid, cfg) or layer not in _grid_layers(grid, cfg):
                continue
            train_settings = {**cfg.train, **grid.train}
            gkey = hash_json({"family": grid.family, "train": train_settings, "hparams": grid.hparams})
            for expansion in grid.expansions:
                for k in grid.ks:
                    sae_params = {"family": grid.family, "expansion": expansion, "k": k, "train": train_settings,
                                  **({"hparams": dict(grid.hparams)} if grid.hparams else {})}
                    sid = sae_id_for(sae_params, train_cache)
                    rec = {"sae_id": sid, "out": f"saes/{sid}", "grid": grid.name, "backbone": b.name,
                           "layer": layer, "metrics": list(grid.metrics if grid.metrics is not None else cfg.metrics),
                           **sae_params}
                    group = groups.setdefault(gkey, [])
                    if all(r["sae_id"] != sid for r in group):
                        group.append(rec)
        layer_saes: list[dict[str, Any]] = []
        for members in groups.values():
            family = members[0]["family"]
            params = {"cache": train_cache.outputs[0], "backbone": b.name, "layer": layer, "family": family,
                      "train": members[0]["train"], "saes": members, "seed": cfg.seed}
            tjob = _job("train", f"train {b.name} L{layer} {family} ×{len(members)}", params, [train_cache], None,
                        wants_gpu=True, outputs=tuple(m["out"] for m in members), backbone=b.name, layer=layer)
            jobs.append(tjob)
            for m in members:
                sae_ood = ood_caches if "m6" in m["metrics"] else {}
                sae_ood_tests = ood_tests if "m6" in m["metrics"] else {}
                deps = [tjob, eval_cache, *sae_ood.values(), *sae_ood_tests.values()]
                eparams = {
                    "sae": m["out"], "sae_id": m["sae_id"], "cache": eval_cache.outputs[0],
                    "ood": {k: v.outputs[0] for k, v in sae_ood.items()},
                    **({"ood_test": {k: v.outputs[0] for k, v in sae_ood_tests.items()}} if sae_ood_tests else {}),
                    "backbone": b.name, "evaluator": _evaluator_spec(cfg, b),
                    "metrics": m["metrics"], "metric_configs": cfg.metric_configs,
                    "group_size": cfg.eval_group_size, "seed": cfg.seed,
                }
                ejob = _job("eval", f"eval {b.name} L{layer} {family} {m['expansion']}x k{m['k']}", eparams, deps,
                            "evals", wants_gpu=True, backbone=b.name, layer=layer, sae_id=m["sae_id"])
                jobs.append(ejob)
                eval_jobs.append(ejob)
                rec = {**m, "eval": ejob.outputs[0], "eval_job": ejob.id}
                layer_saes.append(rec)
                sae_records.append(rec)
        if cfg.raw_diagnostic:
            rparams = {"cache": eval_cache.outputs[0], "backbone": b.name, "layer": layer,
                       "config": cfg.metric_configs.get("raw", {})}
            rjob = _job("raw", f"raw M1 {b.name} L{layer}", rparams, [eval_cache], "raw", wants_gpu=False,
                        backbone=b.name, layer=layer)
            jobs.append(rjob)
            raw_jobs.append(rjob)
        for task in cfg.tasks if layer in cfg.layers else []:
            tcache = cache_job(b, layer, task.source)
            vcache = cache_job(b, layer, task.val_source) if task.val_source else None
            train_jobs = [j for j in jobs if j.kind == "train" and j.meta.get("backbone") == b.name
                          and j.meta.get("layer") == layer]
            tparams = {"task": task.to_dict(), "cache": tcache.outputs[0],
                       "val_cache": vcache.outputs[0] if vcache else None, "backbone": b.name, "layer": layer,
                       "saes": ([{"sae_id": s["sae_id"], "out": s["out"]} for s in layer_saes]
                                if task.on_codes else []), "seed": cfg.seed}
            tj = _job("task", f"task {task.name} {b.name} L{layer}", tparams,
                      [tcache, *([vcache] if vcache else []), *train_jobs], "tasks",
                      wants_gpu=True, backbone=b.name, layer=layer, task=task.name)
            jobs.append(tj)
            task_jobs.append(tj)

    inputs = [*eval_jobs, *raw_jobs, *task_jobs]
    cparams = {"saes": sae_records, "raw": [{"out": j.outputs[0], "backbone": j.meta["backbone"],
                                             "layer": j.meta["layer"]} for j in raw_jobs],
               "tasks": [{"out": j.outputs[0], "backbone": j.meta["backbone"], "layer": j.meta["layer"],
                          "task": j.meta["task"]} for j in task_jobs]}
    collect = _job("collect", "collect results", cparams, inputs, None, outputs=("results",))
    jobs.append(collect)
    aparams = {"results": "results", "hypotheses": [h.to_dict() for h in cfg.hypotheses],
               "main_layers": list(cfg.layers)}
    analysis = _job("analysis", "analysis", aparams, [collect], None, outputs=("analysis",))
    jobs.append(analysis)
    rparams = {"results": "results", "analysis": "analysis", "name": cfg.name,
               "labels": {b.name: b.display for b in cfg.backbones},
               "browser_features": cfg.browser_features, "saes": sae_records,
               "caches": {f"{k[0]}|{k[1]}|{k[2]}": v.outputs[0] for k, v in caches.items()},
               "sources": {"eval": cfg.data.eval.to_dict()}, "device": cfg.device}
    report = _job("report", "report", rparams, [analysis], None, outputs=("report",))
    jobs.append(report)
    return Plan(jobs=jobs)


def _evaluator_spec(cfg: StudyConfig, backbone: BackboneSpec) -> dict[str, Any] | None:
    name = cfg.evaluator_for(backbone)
    if name is None:
        return None
    for b in cfg.backbones:
        if b.name == name:
            return b.model_dump(mode="json", exclude={"label", "evaluator"})
    return {"name": name, "weights_path": None, "image_size": None}
