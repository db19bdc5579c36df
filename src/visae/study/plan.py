"""Planning: turn a StudyConfig into a graph of content-addressed jobs, composed from the stages' planning
fragments (:mod:`visae.study.stages`). Per (backbone, layer) the grid touches: its caches, training groups,
one evaluation per SAE, the raw diagnostic and the tasks; then collect → analysis, features → report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from visae.sae.existing import ExistingSAE
from visae.study.config import TEST_ROLE, BackboneSpec, SAEGrid, StudyConfig
from visae.study.job import Job, Plan
from visae.study.plugins import import_plugins
from visae.study.stages import analysis, cache, checkpoint, collect, features, raw, report, task, train
from visae.study.stages import eval as eval_stage
from visae.study.stages.base import SAERecord

__all__ = ["Job", "Plan", "plan_study"]


def grid_layers(grid: SAEGrid, cfg: StudyConfig) -> list[int]:
    """The layers an SAE block trains on."""
    return list(grid.layers) if grid.layers is not None else list(cfg.layers)


def grid_backbones(grid: SAEGrid, cfg: StudyConfig) -> list[BackboneSpec]:
    """The backbones an SAE block trains on."""
    return [b for b in cfg.backbones if grid.backbones is None or b.name in grid.backbones]


Existing = list[tuple[BackboneSpec, int, ExistingSAE]]


def existing_saes(grid: SAEGrid, cfg: StudyConfig) -> Existing:
    """The existing checkpoints of a block with their backbone and layer (the block's first layer unless the
    checkpoint names one); empty for a block that trains."""
    if grid.trains:
        return []
    backbones = {b.name: b for b in grid_backbones(grid, cfg)}
    first = grid_layers(grid, cfg)[0]
    return [(backbones[item.backbone], item.layer if item.layer is not None else first, item)
            for item in grid.existing(list(backbones))]


def _touches(grid: SAEGrid, existing: Existing, cfg: StudyConfig) -> list[tuple[BackboneSpec, int]]:
    if grid.trains:
        return [(b, layer) for b in grid_backbones(grid, cfg) for layer in grid_layers(grid, cfg)]
    return list(dict.fromkeys((b, layer) for b, layer, _ in existing))


def grid_pairs(cfg: StudyConfig, existing: dict[int, Existing] | None = None,
               ) -> list[tuple[BackboneSpec, int, list[SAEGrid]]]:
    """Every (backbone, layer) the grid touches, in study order, with the SAE blocks on it (``existing``: each
    block's :func:`existing_saes` by index, computed when not given)."""
    found = existing if existing is not None else {i: existing_saes(g, cfg) for i, g in enumerate(cfg.saes)}
    touched = {i: _touches(g, found[i], cfg) for i, g in enumerate(cfg.saes)}
    pairs = list(dict.fromkeys(pair for i in range(len(cfg.saes)) for pair in touched[i]))
    return [(b, layer, [g for i, g in enumerate(cfg.saes) if (b, layer) in touched[i]]) for b, layer in pairs]


@dataclass
class _Planner:
    """The jobs planned so far (each cache job once), and what collect and the views need."""

    cfg: StudyConfig
    existing: dict[int, Existing] = field(default_factory=dict)
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

    def ood_caches(self, backbone: BackboneSpec, layer: int,
                   grids: list[SAEGrid]) -> tuple[dict[str, Job], dict[str, Job]]:
        """The OOD caches (and official test-split caches) of a pair whose SAEs compute M6."""
        ood: dict[str, Job] = {}
        tests: dict[str, Job] = {}
        if any("m6" in (g.metrics if g.metrics is not None else self.cfg.metrics) for g in grids):
            for name, spec in self.cfg.data.ood.items():
                ood[name] = self.cache(backbone, layer, name)
                if spec.test_split is not None:
                    tests[name] = self.cache(backbone, layer, name + TEST_ROLE)
        return ood, tests

    def sae_jobs(self, backbone: BackboneSpec, layer: int, grids: list[SAEGrid]) -> list[Job]:
        """The jobs that provide the pair's SAEs: training groups (over the training cache, planned only
        when a block trains) and one checkpoint job per existing SAE."""
        training = [g for g in grids if g.trains]
        jobs = list(train.plan(self.cfg, backbone, layer, training, self.cache(backbone, layer, "train"))
                    ) if training else []
        seen: set[str] = set()
        for i, grid in enumerate(self.cfg.saes):
            for b, at, item in self.existing.get(i, []) if grid in grids else []:
                if (b, at) == (backbone, layer):
                    job = checkpoint.plan(self.cfg, backbone, layer, grid, item)
                    if job.id not in seen:
                        seen.add(job.id)
                        jobs.append(job)
        return jobs

    def pair(self, backbone: BackboneSpec, layer: int, grids: list[SAEGrid]) -> None:
        """Every job of one (backbone, layer): caches, training or checkpoints, evaluations, raw diagnostic,
        tasks."""
        if any(g.trains for g in grids):
            self.cache(backbone, layer, "train")  # planned first, as it is needed first
        eval_cache = self.cache(backbone, layer, "eval")
        ood, tests = self.ood_caches(backbone, layer, grids)
        layer_saes: list[SAERecord] = []
        train_jobs = []
        for tjob in self.sae_jobs(backbone, layer, grids):
            train_jobs.append(self.add(tjob))
            for m in (train.members(tjob) if tjob.kind == "train" else checkpoint.members(tjob)):
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
    p = _Planner(cfg, existing={i: existing_saes(g, cfg) for i, g in enumerate(cfg.saes)})
    for backbone, layer, grids in grid_pairs(cfg, p.existing):
        p.pair(backbone, layer, grids)
    collected = p.add(collect.plan(p.saes, p.evals, p.raws, p.tasks, stability=cfg.stability))
    analysed = p.add(analysis.plan(cfg, collected))
    views = p.add(features.plan(cfg, p.saes, p.evals, collected))
    p.add(report.plan(cfg, analysed, views))
    return Plan(jobs=p.jobs)
