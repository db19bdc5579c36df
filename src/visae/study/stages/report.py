"""The ``report`` job: the HTML report and the feature browser (visae.report), from the results, the
analysis job's tables and the features job's views — it reads, it does not compute."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from visae.results.layout import REPORT_DIR
from visae.study.config import StudyConfig
from visae.study.job import Job
from visae.study.stages.base import Stage, StageParams, make_job


class Params(StageParams):
    """What the report shows beyond the study folder's contents."""

    name: str = Field(description="study name in the title")
    labels: dict[str, str] = Field(description="display name of each backbone, in the study's order")


def plan(cfg: StudyConfig, analysis: Job, features: Job) -> Job:
    """The report job, after the analysis and the feature views."""
    params = Params(name=cfg.name, labels={b.name: b.display for b in cfg.backbones})
    return make_job("report", "report", params, [analysis, features], outputs=(REPORT_DIR,),
                    exact_done=True)


def run(job: Job, p: Params, root: Path, device: str) -> dict[str, Any]:
    """Write ``index.html`` and ``features.html``."""
    from visae.report.write import write_report

    paths = write_report(root, out_dir=root / job.outputs[0], name=p.name, labels=p.labels)
    return {k: str(v) for k, v in paths.items()}


STAGE = Stage("report", Params, run)
