"""The report's tables (paper Tables 3, 4, 6–9 and the hypotheses), with the verdicts they print; each reads
the results or the analysis job's tables and raises NotEnoughData when its inputs are missing."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from visae.report.data import NotEnoughData, ReportData
from visae.results.names import HEADLINE


def _analysis_table(d: ReportData, name: str, why: str) -> pd.DataFrame:
    t = d.analysis.get(name)
    if not isinstance(t, pd.DataFrame) or t.empty:
        raise NotEnoughData(why)
    return t


def table_variance(d: ReportData) -> pd.DataFrame:
    """Table 3 (with the interaction and the seed share when the study trained several seeds)."""
    t = _analysis_table(d, "variance_decomposition", "needs ≥ 2 backbones × ≥ 2 configurations")
    t = t[t["metric"].isin([*HEADLINE, "raw"])]
    cols = ["metric", "n_obs", "eta2_backbone", "eta2_config", "eta2_resid", "p_backbone", "p_config", "note"]
    if "eta2_seed" in t and t["eta2_seed"].notna().any():
        cols[4:5] = ["eta2_interaction", "eta2_seed"]
        cols.insert(2, "n_seeds")
    return t[cols]


def _interval_text(mean: float, low: float | None, high: float | None, n: int) -> str:
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"{mean:.3f} (n = {n})"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}] (n = {n})"


def table_uncertainty(d: ReportData) -> pd.DataFrame:
    """Per backbone and headline metric: the mean over SAEs with its 95 % t-interval over SAEs, and the
    median width of the per-SAE bootstrap intervals over images (how much the image sample alone moves a
    number)."""
    from visae.uncertainty import mean_interval

    res = d.results[d.results["metric"].isin([*HEADLINE, "raw"])]
    if d.layer is not None:
        res = res[res["layer"] == d.layer]
    if d.family is not None:
        res = res[(res["family"] == d.family) | (res["metric"] == "raw")]
    res = res[np.isfinite(res["value"].astype(float))]
    if res.empty:
        raise NotEnoughData("no headline metric values")
    has_ci = {"ci_low", "ci_high"} <= set(res.columns)
    rows = []
    for (b, metric), g in res.groupby(["backbone", "metric"], sort=True):
        values = g["value"].astype(float).to_numpy()
        iv = mean_interval(values, 0.95)
        width = (g["ci_high"].astype(float) - g["ci_low"].astype(float)).dropna() if has_ci else pd.Series([])
        rows.append({"backbone": d.label(str(b)), "metric": metric,
                     "mean over SAEs [95 % "
                     "t-interval]": _interval_text(float(values.mean()), iv.low, iv.high, iv.n),
                     "median bootstrap width over images": f"{width.median():.3f}" if len(width) else "—"})
    return pd.DataFrame(rows)


def table_raw(d: ReportData) -> pd.DataFrame:
    """Table 4: raw-backbone Moran's I, null, z and a verdict per backbone."""
    res = d.results[(d.results["metric"] == "raw")]
    if d.layer is not None:
        res = res[res["layer"] == d.layer]
    if res.empty:
        raise NotEnoughData("no raw-backbone diagnostic rows (raw_diagnostic: true in the study)")
    det = d.details
    rows = []
    for b in d.backbones(res):
        sel = ((det["backbone"] == b) & (det["layer"] == d.layer) if d.layer is not None
               else det["backbone"] == b)

        def detail(name: str, sel: Any = sel) -> float:
            v = det.loc[sel & (det["metric"] == name), "value"]
            return float(v.iloc[0]) if len(v) else math.nan

        mean_i = float(res.loc[res["backbone"] == b, "value"].mean())
        null, z = detail("raw.null_expectation"), detail("raw.z")
        near = (abs(z) < 2) if math.isfinite(z) else False
        tiny = math.isfinite(null) and abs(mean_i - null) < 0.01
        verdict = "null-indistinguishable" if near else ("near-null effect size" if tiny
                                                         else "strongly non-random")
        rows.append({"backbone": d.label(b), "mean raw I": mean_i, "null E[I]": null, "raw z": z,
                     "conclusion": verdict})
    return pd.DataFrame(rows)


def table_m6(d: ReportData) -> pd.DataFrame:
    """Table 6: per backbone and OOD dataset, probe accuracies and preservation (mean ± std over configs)."""
    det = d.details
    sub = det[det["metric"].str.startswith("m6.datasets.")]
    if d.family is not None:
        sub = sub[(sub["family"] == d.family) & (sub["layer"] == d.layer)]
    if sub.empty:
        raise NotEnoughData("no M6 per-dataset numbers (add OOD sets under data.ood and m6 to metrics)")
    parts = sub["metric"].str.slice(len("m6.datasets.")).str.rsplit(".", n=1, expand=True)
    sub = sub.assign(dataset=parts[0], field=parts[1])
    fields = [f for f in ("acc_raw", "acc_recon", "preservation", "acc_codes", "sparse_auc")
              if f in set(sub["field"])] or sorted(set(sub["field"]))
    rows = []
    for (b, ds), g in sub.groupby(["backbone", "dataset"], sort=False):
        row: dict[str, Any] = {"backbone": d.label(str(b)), "dataset": ds}
        for f in fields:
            v = g.loc[g["field"] == f, "value"].astype(float)
            v = v[np.isfinite(v)]
            if f == "acc_raw":
                row["raw"] = f"{v.mean():.3f}" if len(v) else "—"
            else:
                row[f.replace("acc_", "")] = (f"{v.mean():.3f}"
                                              + (f" ± {v.std(ddof=1):.3f}" if len(v) > 1 else "")
                                              if len(v) else "—")
        rows.append(row)
    return pd.DataFrame(rows)


def table_m7(d: ReportData) -> pd.DataFrame:
    """Table 7 (backbones by display name)."""
    t = _analysis_table(d, "m7_sensitivity", "no M7 α × β grid rows (m7:alpha=…:beta=…)")
    t = t.rename(columns={c: d.label(c) for c in t.columns if c in d.labels})
    if "lowest" in t:
        t["lowest"] = [", ".join(d.label(x.strip()) for x in str(v).split(",") if x.strip())
                       for v in t["lowest"]]
    return t


def _with_labels(d: ReportData, t: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Backbone names inside the text cells of ``columns`` replaced by display names (controls marked)."""
    import re

    names = sorted({str(b) for b in d.results.get("backbone", [])} | set(d.labels) | set(d.controls), key=len,
                   reverse=True)
    if not names:
        return t
    pattern = re.compile("|".join(rf"(?<![\w:-]){re.escape(n)}(?![\w-])" for n in names))
    out = t.copy()
    for c in columns:
        if c in out:
            out[c] = [pattern.sub(lambda m: d.label(m.group(0)), v) if isinstance(v, str) else v
                      for v in out[c]]
    return out


def table_lift(d: ReportData) -> pd.DataFrame:
    """Table 8."""
    t = _analysis_table(d, "codes_lift_correlation", "needs tasks run on raw features and on SAE codes")
    return _with_labels(d, t, ["lowest_lift", "highest_lift"])


def table_consistency(d: ReportData) -> pd.DataFrame:
    """Table 9."""
    t = _analysis_table(d, "rank_consistency",
                        "needs two SAE families on the same backbones (e.g. a jumprelu block)")
    t = _with_labels(d, t, ["ranking_a", "ranking_b"])
    return t[t["metric"].isin(HEADLINE)] if t["metric"].isin(HEADLINE).any() else t


def table_consistency_excluded(d: ReportData) -> pd.DataFrame:
    """What Table 9's convergence filter left out."""
    t = _analysis_table(d, "rank_consistency_excluded", "the convergence filter left nothing out")
    return _with_labels(d, t, ["backbone"])


def table_hypotheses(d: ReportData) -> pd.DataFrame:
    """Hypothesis verdicts."""
    t = _analysis_table(d, "hypotheses", "no hypotheses evaluated")
    cols = ["id", "metric", "task", "threshold", "n", "rho", "p", "p_exact", "verdict", "note"]
    if "p_exact" not in t:
        cols.remove("p_exact")
    if "backbones" in t:  # the n backbones by display name (controls marked)
        t = t.assign(backbones=[", ".join(d.label(b) for b in str(v).split(",") if b)
                                for v in t["backbones"].fillna("")])
        cols.insert(5, "backbones")
    return t[cols]


RECOVERY_FIELDS = (("recovery", "F1"), ("recovery.mcc", "MCC"), ("recovery.feature_recall", "recall@τ"),
                   ("recovery.dead", "dead"), ("recovery.absorption", "absorption"))
"""The recovery numbers of the synthetic table (``recovery`` itself is the SynthSAEBench F1)."""


def has_recovery(d: ReportData) -> bool:
    """True when the study scored SAEs against a planted ground truth (synthetic presets)."""
    return "metric" in d.results and bool((d.results["metric"] == "recovery").any())


def table_recovery(d: ReportData) -> pd.DataFrame:
    """Recovery of the planted features per family, width and K (rows) and preset (columns): F1 and MCC, the
    share of atoms recovered at the stated |cos|, dead latents, absorbed share of the planted children."""
    rows_all = pd.concat([d.results, d.details], ignore_index=True)
    sub = rows_all[rows_all["metric"].isin([m for m, _ in RECOVERY_FIELDS])]
    if sub.empty:
        raise NotEnoughData("no recovery results (synthetic presets with 'recovery' in metrics)")
    rows = []
    for (fam, x, k), g in sub.groupby(["family", "expansion", "k"], sort=True):
        row: dict[str, Any] = {"family": fam, "width": f"{x:g}×", "K": int(k)}
        for b, gb in g.groupby("backbone", sort=False):
            for metric, label in RECOVERY_FIELDS:
                v = gb.loc[gb["metric"] == metric, "value"].astype(float)
                v = v[np.isfinite(v)]
                if metric == "recovery.absorption" and v.empty:
                    continue  # a preset without a hierarchy
                fmt = "{:.0f}" if metric == "recovery.dead" else "{:.3f}"
                row[f"{d.label(str(b))} {label}"] = fmt.format(v.mean()) if len(v) else "—"
        rows.append(row)
    return pd.DataFrame(rows)
