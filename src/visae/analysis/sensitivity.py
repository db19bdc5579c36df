"""M7 threshold sensitivity (App. N, Table 7) and the layer ablation (App. D)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from visae.analysis.hypotheses import sae_metrics
from visae.results.schema import parse_m7_grid_metric


@dataclass(frozen=True)
class SensitivitySummary:
    """Which backbone has the lowest absorption most often over the α × β grid."""

    backbone: str | None
    wins: int
    n_settings: int
    text: str


def m7_grid(df: pd.DataFrame) -> pd.DataFrame:
    """Per-backbone mean absorption at every (α, β) from ``m7:alpha=…:beta=…`` rows: columns alpha, beta,
    one column per backbone (sorted), one row per setting (sorted by α then β)."""
    rows = []
    for metric in df["metric"].unique():
        ab = parse_m7_grid_metric(metric)
        if ab is None:
            continue
        sub = df[(df["metric"] == metric) & np.isfinite(df["value"].to_numpy(dtype=float))]
        for backbone, value in sub.groupby("backbone")["value"].mean().items():
            rows.append({"alpha": ab[0], "beta": ab[1], "backbone": backbone, "value": value})
    if not rows:
        return pd.DataFrame(columns=["alpha", "beta"])
    long = pd.DataFrame(rows)
    wide = long.pivot_table(index=["alpha", "beta"], columns="backbone", values="value").reset_index()
    wide.columns.name = None
    return wide.sort_values(["alpha", "beta"]).reset_index(drop=True)


def m7_sensitivity(grid: pd.DataFrame, tol: float = 0.0) -> tuple[pd.DataFrame, SensitivitySummary]:
    """Add the lowest-absorption backbone(s) per setting to a :func:`m7_grid` table and summarise.

    Values within ``tol`` of the minimum tie (all tied backbones are listed and each scores a win).
    Returns the table (with a ``lowest`` column) and e.g. "DeiT lowest in 7 of 9 settings".
    """
    backbones = [c for c in grid.columns if c not in ("alpha", "beta", "lowest")]
    table = grid.copy()
    lowest: list[str] = []
    wins: dict[str, int] = dict.fromkeys(backbones, 0)
    for _, row in grid.iterrows():
        vals = pd.to_numeric(row[backbones], errors="coerce").astype(float)
        vals = vals[np.isfinite(vals.to_numpy())]
        if vals.empty:
            lowest.append("")
            continue
        best = [str(b) for b, v in vals.items() if v <= vals.min() + tol]
        lowest.append(", ".join(best))
        for b in best:
            wins[b] += 1
    table["lowest"] = lowest
    n = int(sum(1 for x in lowest if x))
    if n == 0 or not backbones:
        return table, SensitivitySummary(None, 0, n, "no M7 sensitivity grid in the results")
    top = max(backbones, key=lambda b: (wins[b], -backbones.index(b)))
    if len(backbones) < 2:
        return table, SensitivitySummary(top, wins[top], n, f"only one backbone ({top}); nothing to compare")
    return table, SensitivitySummary(top, wins[top], n, f"{top} lowest in {wins[top]} of {n} settings")


def layer_ablation(df: pd.DataFrame, layers: Sequence[int] = (3, 11),
                   metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """App. D: per metric and backbone, the mean over configurations at each layer and the difference
    (last layer minus first); backbones missing a layer get NaN and a note."""
    if len(layers) != 2:
        raise ValueError(f"layer_ablation compares two layers, got {list(layers)}")
    first, last = int(layers[0]), int(layers[1])
    names = list(metrics) if metrics is not None else sae_metrics(df)
    cols = ["metric", "backbone", f"layer_{first}", f"layer_{last}", "difference", "note"]
    rows = []
    for metric in names:
        sub = df[(df["metric"] == metric) & df["layer"].isin([first, last])
                 & np.isfinite(df["value"].to_numpy(dtype=float))]
        means = sub.groupby(["backbone", "layer"])["value"].mean()
        for backbone in sorted(sub["backbone"].unique()):
            a = float(means.get((backbone, float(first)), np.nan))
            b = float(means.get((backbone, float(last)), np.nan))
            missing = [str(lay) for lay, v in ((first, a), (last, b)) if not np.isfinite(v)]
            rows.append({"metric": metric, "backbone": backbone, cols[2]: a, cols[3]: b, "difference": b - a,
                         "note": f"no rows at layer {', '.join(missing)}" if missing else ""})
    return pd.DataFrame(rows, columns=cols)
