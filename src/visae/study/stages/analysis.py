"""The ``analysis`` job: every analysis of the paper on the results table (visae.analysis.run) — variance
decomposition, hypotheses, correlations, codes lift, consistency — as tables in ``analysis/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from visae.results.hypotheses import Hypothesis
from visae.results.layout import ANALYSIS_DIR, NOTES_FILE
from visae.study.config import StudyConfig
from visae.study.job import Job
from visae.study.stages.base import Stage, StageParams, make_job


class Params(StageParams):
    """What the analysis tests."""

    hypotheses: list[Hypothesis] = Field(description="the study's hypotheses (empty: the paper's H1–H4)")


def plan(cfg: StudyConfig, collect: Job) -> Job:
    """The analysis job, after collect."""
    return make_job("analysis", "analysis", Params(hypotheses=list(cfg.hypotheses)), [collect],
                    outputs=(ANALYSIS_DIR,), exact_done=True)


def run(job: Job, p: Params, root: Path, device: str) -> dict[str, Any]:
    """Analyse ``results/results.parquet``; tables, ``analysis.md`` and ``notes.json`` to the output
    folder."""
    import pandas as pd

    from visae.analysis.run import AnalysisConfig, analyze, write_analysis
    from visae.io import atomic_write_json
    from visae.results.table import read_results

    df = read_results(root)
    out = root / job.outputs[0]
    if df.empty:
        atomic_write_json(out / NOTES_FILE, {"notes": ["no results yet"]})
        return {"tables": [], "notes": ["no results yet"]}
    cfg = AnalysisConfig(hypotheses=list(p.hypotheses)) if p.hypotheses else AnalysisConfig()
    results = analyze(df, cfg)
    write_analysis(results, out)
    notes = [str(n) for n in results.get("notes", [])]
    atomic_write_json(out / NOTES_FILE, {"notes": notes})
    return {"tables": sorted(k for k, v in results.items() if isinstance(v, pd.DataFrame)), "notes": notes}


STAGE = Stage("analysis", Params, run)
