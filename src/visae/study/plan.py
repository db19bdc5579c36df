"""Planning: turn a StudyConfig into a graph of content-addressed jobs, composed from the stages' planning
fragments (:mod:`visae.study.stages`). Per (backbone, layer) the grid touches: its caches, training groups,
one evaluation per SAE, the raw diagnostic and the tasks; then collect → analysis, features → report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from visae.study.config import TEST_ROLE, BackboneSpec, SAEGrid, StudyConfig
from visae.study.job import Job, Plan
from visae.study.plugins import import_plugins
from visae.study.stages import analysis, cache, collect, features, raw, report, task, train
from visae.study.stages import eval as eval_stage
from visae.study.stages.base import SAERecord

__all__ = ["Job", "Plan", "plan_study"]


def grid_layers(grid: SAEGrid, cfg: StudyConfig) -> list[int]:
    """The layers an SAE block trains on."""
    return list(grid.layers) if grid.layers is not None else list(cfg.layers)


def grid_backbones(grid: SAEGrid, cfg: StudyConfig) -> list[BackboneSpec]:
    """The backbones an SAE block trains on."""
    return [b for b in cfg.backbones if grid.backbones is None or b.name in grid.backbones]


def grid_pairs(cfg: StudyConfig) -> list[tuple[BackboneSpec, int, list[SAEGrid]]]:
    """Every (backbone, layer) the grid touches, in study order, with the SAE blocks on it."""
    pairs: list[tuple[BackboneSpec, int]] = []
    for grid in cfg.saes:
        for b in grid_backbones(grid, cfg):
            for layer in grid_layers(grid, cfg):
                if (b, layer) not in pairs:
                    pairs.append((b, layer))
    return [(b, layer, [g for g in cfg.saes if b in grid_backbones(g, cfg) and layer in grid_layers(g, cfg)])
            for b, layer in pairs]


@dataclass
class _Planner:
    """The jobs planned so far (each cache job once), and what collect and the views need."""

    cfg: StudyConfig
    jobs: list[Job] = field(default_factory=list)
    caches: dict[tuple[str, int, str], Job] = field(default_factory=dict)
    saes: list[SAERecord] = field(default_factory=list)
    evals: list[Job] = field(default_factory=list)
    raws: list[Job] = field(default_factory=list)
    tasks: list[Job] = field(default_factory=list)

    def add(self, job: Job) -> Job:
        self.jobs.append(job)
        return job

    def cache(self, backbone: BackboneSpec, layer: int, role: str) -> Job:
        key = (backbone.name, layer, role)
        if key not in self.caches:
            self.caches[key] = self.add(cache.plan(self.cfg, backbone, layer, role))
        return self.caches[key]

    def ood_caches(self, backbone: BackboneSpec, layer: int, grids: list[SAEGrid]) -> tuple[dict[str, Job], dict[str, Job]]:
        """The OOD caches (and official test-split caches) of a pair whose SAEs compute M6."""
        ood: dict[str, Job] = {}
        tests: dict[str, Job] = {}
        if any("m6" in (g.metrics if g.metrics is not None else self.cfg.metrics) for g in grids):
            for name, spec in self.cfg.data.ood.items():
                ood[name] = self.cache(backbone, layer, name)
                if spec.test_split is not None:
                    tests[name] = self.cache(backbone, layer, name + TEST_ROLE)
        return ood, tests

    def pair(self, backbone: BackboneSpec, layer: int, grids: list[SAEGrid]) -> None:
        """Every job of one (backbone, layer): caches, training, evaluations, raw diagnostic, tasks."""
        train_cache = self.cache(backbone, layer, "train")
        eval_cache = self.cache(backbone, layer, "eval")
        ood, tests = self.ood_caches(backbone, layer, grids)
        layer_saes: list[SAERecord] = []
        train_jobs = []
        for tjob in train.plan(self.cfg, backbone, layer, grids, train_cache):
            train_jobs.append(self.add(tjob))
            for m in train.members(tjob):
                ejob = self.add(eval_stage.plan(self.cfg, backbone, layer, m, tjob, eval_cache, ood, tests))
                self.evals.append(ejob)
                layer_saes.append(m.model_copy(update={"eval": ejob.outputs[0], "eval_job": ejob.id}))
        self.saes.extend(layer_saes)
        if self.cfg.raw_diagnostic:
            self.raws.append(self.add(raw.plan(self.cfg, backbone, layer, eval_cache)))
        for spec in self.cfg.tasks if layer in self.cfg.layers else []:
            tcache = self.cache(backbone, layer, spec.source)
            vcache = self.cache(backbone, layer, spec.val_source) if spec.val_source else None
            self.tasks.append(self.add(task.plan(self.cfg, backbone, layer, spec, tcache, vcache, layer_saes,
                                                 train_jobs)))


def plan_study(cfg: StudyConfig) -> Plan:
    """All jobs of ``cfg`` in dependency order (the study's plugins are imported first: they may register
    backbones whose evaluator pairing enters the plan)."""
    import_plugins(cfg.plugins)
    p = _Planner(cfg)
    for backbone, layer, grids in grid_pairs(cfg):
        p.pair(backbone, layer, grids)
    collected = p.add(collect.plan(p.saes, p.evals, p.raws, p.tasks))
    analysed = p.add(analysis.plan(cfg, collected))
    views = p.add(features.plan(cfg, p.saes, p.evals, collected))
    p.add(report.plan(cfg, analysed, views))
    return Plan(jobs=p.jobs)
