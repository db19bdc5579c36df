"""The pre-registered hypotheses H1–H4 (§4.5) and the full metric × task correlation table (Fig. 2b, App. J).

Each hypothesis correlates, across backbones, the per-backbone mean of an SAE-internal metric (over the
configurations in the table) with a per-backbone downstream number, by Spearman's ρ and its two-sided p
as ``scipy.stats.spearmanr`` gives them, against a threshold fixed in advance.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from visae.analysis.stats import backbone_means, spearman
from visae.results.hypotheses import PREREGISTERED, Hypothesis
from visae.results.schema import parse_m7_grid_metric, parse_task_metric

CONFIRMED = "confirmed"
MET_NOT_SIGNIFICANT = "met threshold but p>0.05"
NOT_SUPPORTED = "not supported"
NOT_COMPUTABLE = "not computable"
_TOL = 1e-9  # ρ = 0.6 computed in floating point must still meet a 0.6 threshold

__all__ = ["PREREGISTERED", "Hypothesis", "correlation_matrix", "correlation_table", "evaluate_hypotheses"]

HYPOTHESIS_COLUMNS = ["id", "metric", "task", "threshold", "n", "rho", "p", "p_exact", "verdict", "backbones",
                      "note", "description"]


def verdict(rho: float | None, p: float | None, threshold: float, alpha: float = 0.05) -> str:
    """confirmed (ρ ≥ threshold, p ≤ α) / met threshold but p>α / not supported / not computable."""
    if rho is None:
        return NOT_COMPUTABLE
    if rho + _TOL < threshold:
        return NOT_SUPPORTED
    if p is not None and p <= alpha:
        return CONFIRMED
    return MET_NOT_SIGNIFICANT if alpha == 0.05 else f"met threshold but p>{alpha:g}"


def paired_means(df: pd.DataFrame, metric: str, task: str) -> pd.DataFrame:
    """Per-backbone means of ``metric`` and ``task`` on the backbones that have both (sorted by name)."""
    both = pd.concat({"metric": backbone_means(df, metric), "task": backbone_means(df, task)}, axis=1)
    return both.dropna()


def evaluate_hypotheses(df: pd.DataFrame, hypotheses: Sequence[Hypothesis] = PREREGISTERED) -> pd.DataFrame:
    """One row per hypothesis: n backbones, ρ, p, verdict, and a note when it could not be computed."""
    rows = []
    for h in hypotheses:
        pair = paired_means(df, h.metric, h.task)
        corr = spearman(pair["metric"].to_numpy(), pair["task"].to_numpy())
        note = corr.note
        if len(pair) == 0:
            have = set(df["metric"])
            absent = [m for m in (h.metric, h.task) if m not in have]
            note = f"no rows for {', '.join(absent)}" if absent else "no backbone has both numbers"
        rows.append({"id": h.id, "metric": h.metric, "task": h.task, "threshold": h.threshold, "n": corr.n,
                     "rho": corr.rho, "p": corr.p, "p_exact": corr.p_exact,
                     "verdict": verdict(corr.rho, corr.p, h.threshold, h.alpha),
                     "backbones": ",".join(pair.index), "note": note, "description": h.description})
    return pd.DataFrame(rows, columns=HYPOTHESIS_COLUMNS)


def sae_metrics(df: pd.DataFrame) -> list[str]:
    """SAE-internal metric names in the table (not tasks, not the M7 sensitivity grid), sorted."""
    return sorted(m for m in df["metric"].unique()
                  if parse_task_metric(m) is None and parse_m7_grid_metric(m) is None)


def task_metrics(df: pd.DataFrame) -> list[str]:
    """Downstream task metric names in the table, sorted."""
    return sorted(m for m in df["metric"].unique() if parse_task_metric(m) is not None)


def correlation_table(df: pd.DataFrame, metrics: Sequence[str] | None = None,
                      tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """Every metric × task pair: cross-backbone Spearman ρ, p and n of per-backbone means (tidy)."""
    rows = []
    for metric in metrics if metrics is not None else sae_metrics(df):
        for task in tasks if tasks is not None else task_metrics(df):
            pair = paired_means(df, metric, task)
            corr = spearman(pair["metric"].to_numpy(), pair["task"].to_numpy())
            rows.append({"metric": metric, "task": task, "n": corr.n, "rho": corr.rho, "p": corr.p,
                         "p_exact": corr.p_exact, "note": corr.note})
    return pd.DataFrame(rows, columns=["metric", "task", "n", "rho", "p", "p_exact", "note"])


def correlation_matrix(table: pd.DataFrame) -> pd.DataFrame:
    """The tidy correlation table as a metric × task grid of ρ (NaN where not computable)."""
    if table.empty:
        return pd.DataFrame()
    return table.pivot(index="metric", columns="task", values="rho").astype(float)
