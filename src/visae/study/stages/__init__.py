"""The study's stages, one module per job kind, in pipeline order. Each module holds its ``Params`` model
(the job's parameters, which enter its id), its planning fragment ``plan(...)`` and its ``run``:

========== ============================================================================================
cache      one per (backbone, layer, image set): that set's activations at that layer
train      one per (backbone, layer, family, training settings): every SAE of the group in one pass
checkpoint one per existing SAE a block names: its reference folder (hub commit, file hashes); no training
eval       one per SAE: every metric in one encoding pass (+ the OOD caches for M6)
raw        one per (backbone, layer): the raw-backbone Moran's I diagnostic (App. G)
task       one per (task, backbone, main layer): the task on raw features and on each SAE's codes
collect    every result record → results/results.parquet (+ details, the SAE index)
analysis   variance decomposition, hypotheses, correlations, codes lift, consistency → analysis/
features   Fig. 5 activation maps and the feature browser's views → features/
report     the HTML report and the feature browser → report/
========== ============================================================================================

A new kind: a module with ``Params``, ``plan`` and ``run`` and ``STAGE = Stage(kind, Params, run)``, listed
in :data:`STAGES`; :func:`visae.study.plan.plan_study` calls its ``plan``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from visae.errors import StudyError
from visae.study.job import Job
from visae.study.plugins import import_plugins
from visae.study.protocol import execute_job
from visae.study.stages import analysis, cache, checkpoint, collect, features, raw, report, task, train
from visae.study.stages import eval as eval_stage
from visae.study.stages.base import Stage

STAGES: dict[str, Stage[Any]] = {m.STAGE.kind: m.STAGE for m in (
    cache, train, checkpoint, eval_stage, raw, task, collect, analysis, features, report)}
"""Every job kind's stage, by kind."""


def run_job(job: Job, root: str | Path, device: str = "auto",
            plugins: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run ``job`` through the job protocol (skip when done, done.json last); the executors call this."""
    import_plugins(plugins)
    stage = STAGES.get(job.kind)
    if stage is None:
        raise StudyError(f"job {job.label}: no stage for kind {job.kind!r}; known: {', '.join(STAGES)}")
    root = Path(root)
    return execute_job(job, root, lambda: stage.execute(job, root, device))
