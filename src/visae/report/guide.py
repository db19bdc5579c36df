"""The practitioner guide (App. P, Fig. 8): per task, the best backbone and its supporting metric."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from visae.report.data import NotEnoughData, ReportData
from visae.results.names import HEADLINE, METRIC_NAMES


def practitioner_guide(d: ReportData) -> pd.DataFrame:
    """App. P from the results: per task, the best backbone and the supporting metric with the highest |ρ|."""
    from visae.results.schema import parse_task_metric

    corr = d.analysis.get("correlations")
    main = d.main
    tasks = sorted({tm.task for m in main["metric"].unique() if (tm := parse_task_metric(m)) is not None})
    if not tasks:
        raise NotEnoughData("no downstream task results")
    rows = []
    for task in tasks:
        pref = f"task:{task}:raw" if f"task:{task}:raw" in set(main["metric"]) else f"task:{task}:codes"
        means = main[main["metric"] == pref].groupby("backbone")["value"].mean().dropna()
        best = str(means.idxmax()) if len(means) else "—"
        support, rho, p = "—", math.nan, math.nan
        if isinstance(corr, pd.DataFrame) and not corr.empty:
            sub = corr[(corr["task"] == pref) & corr["metric"].isin(HEADLINE)].copy()
            sub = sub[np.isfinite(sub["rho"].astype(float))]
            if len(sub):
                top = sub.loc[sub["rho"].astype(float).abs().idxmax()]
                support = METRIC_NAMES.get(str(top["metric"]), str(top["metric"]))
                rho, p = float(top["rho"]), float(top["p"])
        rows.append({"task": task, "recommended backbone": d.label(best) if best != "—" else best,
                     "its score": float(means.max()) if len(means) else math.nan,
                     "supporting metric": support, "ρ": rho, "p": p, "n backbones": len(means)})
    return pd.DataFrame(rows)
