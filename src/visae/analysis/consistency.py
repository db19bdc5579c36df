"""Cross-family rank consistency (App. Q, Table 9): do two SAE families rank the backbones alike?

Per metric, each family's per-backbone means (over its configurations) give a ranking best to worst —
descending for higher-is-better metrics, ascending for lower-is-better ones (M2 FVU, M7 absorption) — and
Spearman's ρ and p (``scipy.stats.spearmanr``) compare the two. Inverting both rankings leaves ρ unchanged,
so ρ is also the correlation of the raw means.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from visae.analysis.hypotheses import sae_metrics
from visae.analysis.stats import Correlation, backbone_means, spearman
from visae.results.schema import higher_is_better

CONSISTENCY_COLUMNS = ["metric", "family_a", "family_b", "ranking_a", "ranking_b", "n", "rho", "p", "p_exact",
                       "higher_is_better", "note"]


def ranking(means: pd.Series, higher_better: bool) -> list[str]:
    """Backbone names best to worst (ties broken by name, for a stable order)."""
    frame = pd.DataFrame({"name": means.index.astype(str), "value": means.to_numpy(dtype=float)})
    frame = frame.sort_values(["value", "name"], ascending=[not higher_better, True], kind="mergesort")
    return frame["name"].tolist()


def ranking_correlation(ranking_a: Sequence[str], ranking_b: Sequence[str]) -> Correlation:
    """Spearman ρ and p between two best-to-worst rankings, over the items both contain."""
    common = [x for x in ranking_a if x in set(ranking_b)]
    pos_b = {x: i for i, x in enumerate(ranking_b)}
    pos_a = {x: i for i, x in enumerate(ranking_a)}
    return spearman([pos_a[x] for x in common], [pos_b[x] for x in common])


def rank_consistency(df: pd.DataFrame, family_a: str = "batchtopk", family_b: str = "jumprelu",
                     metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Table 9: per metric, the two families' backbone rankings and their Spearman ρ, p on shared backbones.

    ``df`` should hold one layer; filter configurations beforehand if some did not reach their target
    (the paper keeps JumpReLU runs with |L0 − target| ≤ 2).
    """
    a_rows, b_rows = df[df["family"] == family_a], df[df["family"] == family_b]
    names = (list(metrics) if metrics is not None
             else sorted(set(sae_metrics(a_rows)) & set(sae_metrics(b_rows))))
    rows = []
    for metric in names:
        mean_a, mean_b = backbone_means(a_rows, metric), backbone_means(b_rows, metric)
        shared = sorted(set(mean_a.index) & set(mean_b.index))
        hib = higher_is_better(metric)
        rank_a, rank_b = ranking(mean_a[shared], hib), ranking(mean_b[shared], hib)
        corr = spearman(mean_a[shared].to_numpy(), mean_b[shared].to_numpy())
        note = corr.note
        if not shared:
            note = f"no backbone has {metric} under both {family_a} and {family_b}"
        rows.append({"metric": metric, "family_a": family_a, "family_b": family_b,
                     "ranking_a": ", ".join(rank_a), "ranking_b": ", ".join(rank_b), "n": corr.n,
                     "rho": corr.rho, "p": corr.p, "p_exact": corr.p_exact, "higher_is_better": hib,
                     "note": note})
    return pd.DataFrame(rows, columns=CONSISTENCY_COLUMNS)
