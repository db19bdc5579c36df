"""Codes-lift (App. O): per backbone and task, perf(SAE codes) / perf(raw features), averaged across
configurations, and the cross-backbone Spearman correlation of raw performance with lift."""

from __future__ import annotations

import numpy as np
import pandas as pd

from visae.analysis.stats import spearman
from visae.results.schema import parse_task_metric, task_metric, with_config

LIFT_COLUMNS = ["task", "backbone", "raw", "codes_mean", "lift_mean", "lift_std", "n_configs", "note"]
LIFT_CORR_COLUMNS = ["task", "n", "rho", "p", "p_exact", "lowest_lift", "highest_lift", "note"]


def lifted_tasks(df: pd.DataFrame) -> list[str]:
    """Task names (without the feature suffix) that have both ``:raw`` and ``:codes`` rows."""
    parsed = [p for m in df["metric"].unique() if (p := parse_task_metric(m)) is not None]
    raw = {p.task for p in parsed if p.features == "raw"}
    return sorted(raw & {p.task for p in parsed if p.features == "codes"})


def codes_lift(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, backbone): raw performance, mean codes performance and mean lift over configs.

    The lift of one configuration is its codes value over the backbone's raw value (the mean of its raw
    rows: raw performance is a property of the backbone). A zero or missing raw value gives no lift.
    """
    data = with_config(df)
    rows = []
    for task in lifted_tasks(data):
        raw_rows = data[data["metric"] == task_metric(task, "raw")]
        codes_rows = data[data["metric"] == task_metric(task, "codes")]
        for backbone in sorted(set(raw_rows["backbone"]) | set(codes_rows["backbone"])):
            raw_v = raw_rows.loc[raw_rows["backbone"] == backbone, "value"].to_numpy(dtype=float)
            codes_v = codes_rows.loc[codes_rows["backbone"] == backbone, "value"].to_numpy(dtype=float)
            raw_v, codes_v = raw_v[np.isfinite(raw_v)], codes_v[np.isfinite(codes_v)]
            raw = float(raw_v.mean()) if len(raw_v) else float("nan")
            note = ""
            if not len(raw_v):
                note = "no raw-feature value"
            elif not len(codes_v):
                note = "no codes value"
            elif raw == 0:
                note = "raw performance is 0; lift is undefined"
            lifts = codes_v / raw if not note else np.array([])
            rows.append({"task": task, "backbone": backbone, "raw": raw,
                         "codes_mean": float(codes_v.mean()) if len(codes_v) else float("nan"),
                         "lift_mean": float(lifts.mean()) if len(lifts) else float("nan"),
                         "lift_std": float(lifts.std(ddof=1)) if len(lifts) > 1 else float("nan"),
                         "n_configs": len(codes_v), "note": note})
    return pd.DataFrame(rows, columns=LIFT_COLUMNS)


def lift_correlation(lift: pd.DataFrame) -> pd.DataFrame:
    """Table 8: per task, Spearman ρ (and p) between mean raw performance and mean lift across backbones."""
    rows = []
    for task, sub in lift.groupby("task", sort=True):
        sub = sub[np.isfinite(sub["raw"]) & np.isfinite(sub["lift_mean"])]
        corr = spearman(sub["raw"].to_numpy(), sub["lift_mean"].to_numpy())
        lo = sub.loc[sub["lift_mean"].idxmin()] if len(sub) else None
        hi = sub.loc[sub["lift_mean"].idxmax()] if len(sub) else None
        rows.append({"task": task, "n": corr.n, "rho": corr.rho, "p": corr.p, "p_exact": corr.p_exact,
                     "lowest_lift": f"{lo['backbone']} {lo['lift_mean']:.2f}" if lo is not None else "",
                     "highest_lift": f"{hi['backbone']} {hi['lift_mean']:.2f}" if hi is not None else "",
                     "note": corr.note})
    return pd.DataFrame(rows, columns=LIFT_CORR_COLUMNS)
