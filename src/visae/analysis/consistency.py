"""Cross-family rank consistency (App. Q, Table 9): do two SAE families rank the backbones alike?

Per metric, each family's per-backbone means (over its configurations) give a ranking best to worst —
descending for higher-is-better metrics, ascending for lower-is-better ones (M2 FVU, M7 absorption) — and
Spearman's ρ and p (``scipy.stats.spearmanr``) compare the two. Inverting both rankings leaves ρ unchanged,
so ρ is also the correlation of the raw means.

Before ranking, the paper's convergence filter (App. Q) drops the configurations of target-L0 families
(JumpReLU, Gated: families whose L0 is steered to ``k`` rather than fixed by the sparsity rule) whose
measured L0 is more than 2 from the target; :func:`convergence_filter` returns what it dropped so that the
report can list it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from visae.analysis.hypotheses import sae_metrics
from visae.analysis.stats import Correlation, backbone_means, spearman
from visae.results.schema import higher_is_better

CONSISTENCY_COLUMNS = ["metric", "family_a", "family_b", "ranking_a", "ranking_b", "n", "rho", "p", "p_exact",
                       "higher_is_better", "note"]
EXCLUDED_COLUMNS = ["family", "backbone", "layer", "expansion", "k", "l0", "reason"]
L0_TOLERANCE = 2.0
"""The paper's convergence window: |L0 − target| ≤ 2 (App. Q, Table 9)."""


def targets_l0(family: str) -> bool:
    """Whether ``family``'s L0 is a training target (a registered family with ``target_l0``); unknown
    families are never filtered."""
    from visae.errors import ConfigError
    from visae.sae.registry import SAE_FAMILIES

    try:
        return bool(getattr(SAE_FAMILIES[family], "target_l0", False))
    except ConfigError:
        return False


def convergence_filter(df: pd.DataFrame, tolerance: float | None = L0_TOLERANCE,
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(kept, excluded)``: rows of target-L0 families whose configuration's measured ``l0`` lies more
    than ``tolerance`` from its ``k`` are dropped (all metrics of that SAE). ``excluded`` has one row per
    dropped configuration (:data:`EXCLUDED_COLUMNS`). Rows without ``k`` or ``l0`` are kept;
    ``tolerance=None`` keeps everything."""
    empty = pd.DataFrame(columns=EXCLUDED_COLUMNS)
    if tolerance is None or "l0" not in df.columns or df.empty:
        return df, empty
    fams = {f: targets_l0(str(f)) for f in df["family"].unique()}
    l0 = pd.to_numeric(df["l0"], errors="coerce")
    k = pd.to_numeric(df["k"], errors="coerce")
    off = df["family"].map(fams).astype(bool) & k.notna() & l0.notna() & ((l0 - k).abs() > tolerance)
    if not off.any():
        return df, empty
    keys = [c for c in ("family", "backbone", "layer", "expansion", "k", "l0") if c in df.columns]
    excluded = df.loc[off, keys].drop_duplicates().reset_index(drop=True)
    excluded["reason"] = [f"|L0 − target| = {abs(float(r.l0) - float(r.k)):.2f} > {tolerance:g}"
                          if math.isfinite(float(r.l0)) else "no L0" for r in excluded.itertuples()]
    return df.loc[~off], excluded.reindex(columns=EXCLUDED_COLUMNS)


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
                     metrics: Sequence[str] | None = None,
                     l0_tolerance: float | None = L0_TOLERANCE) -> pd.DataFrame:
    """Table 9: per metric, the two families' backbone rankings and their Spearman ρ, p on shared backbones.

    ``df`` should hold one layer. Configurations of target-L0 families that missed their target by more
    than ``l0_tolerance`` are left out first (:func:`convergence_filter`; None keeps all);
    :func:`rank_consistency_filtered` also returns what was left out.
    """
    return rank_consistency_filtered(df, family_a, family_b, metrics, l0_tolerance)[0]


def rank_consistency_filtered(df: pd.DataFrame, family_a: str, family_b: str,
                              metrics: Sequence[str] | None = None,
                              l0_tolerance: float | None = L0_TOLERANCE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(table, excluded)``: :func:`rank_consistency` and the configurations its filter left out."""
    pair = df[df["family"].isin([family_a, family_b])]
    # the metrics both families were evaluated on, before the filter (a metric whose configurations were
    # all left out still gets its row, saying so)
    names = (list(metrics) if metrics is not None
             else sorted(set(sae_metrics(pair[pair["family"] == family_a]))
                         & set(sae_metrics(pair[pair["family"] == family_b]))))
    df, excluded = convergence_filter(pair, l0_tolerance)
    a_rows, b_rows = df[df["family"] == family_a], df[df["family"] == family_b]
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
            if len(excluded):
                note += (f" after the convergence filter left out {len(excluded)} configuration(s) "
                         f"(|L0 − target| > {l0_tolerance:g})")
        rows.append({"metric": metric, "family_a": family_a, "family_b": family_b,
                     "ranking_a": ", ".join(rank_a), "ranking_b": ", ".join(rank_b), "n": corr.n,
                     "rho": corr.rho, "p": corr.p, "p_exact": corr.p_exact, "higher_is_better": hib,
                     "note": note})
    return pd.DataFrame(rows, columns=CONSISTENCY_COLUMNS), excluded
