"""The paper's figures, drawn from a study's own results with matplotlib (Agg).

Each ``fig_*`` function takes the :class:`~visae.report.data.ReportData` and returns a matplotlib Figure,
or raises :class:`~visae.report.data.NotEnoughData` whose message the report shows in the figure's place.
"""

from __future__ import annotations

import base64
import io
import math
import textwrap
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from visae.report.data import NotEnoughData, ReportData
from visae.results.names import HEADLINE, METRIC_NAMES


def to_png_b64(fig: Figure, dpi: int = 110) -> str:
    """Render a figure to a base64 PNG and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _colors(names: list[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {n: cmap(i % 10) for i, n in enumerate(names)}


def _means(df: pd.DataFrame, metric: str) -> pd.Series:
    sub = df[(df["metric"] == metric) & np.isfinite(df["value"].to_numpy(dtype=float))]
    return sub.groupby("backbone")["value"].mean()


def fig_profile(d: ReportData) -> Figure:
    """Fig. 1a: per-backbone profile over M1–M7, min–max normalized across backbones (1 = best)."""
    main = d.main
    metrics = [m for m in HEADLINE if m in set(main["metric"])]
    backbones = d.backbones(main[main["metric"].isin(metrics)])
    if not metrics or len(backbones) < 2:
        raise NotEnoughData(f"needs ≥ 2 backbones with headline metrics (have {len(backbones)} backbone(s), "
                            f"metrics {metrics or 'none'})")
    from visae.results.schema import higher_is_better

    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    colors = _colors(backbones)
    norm = {}
    for m in metrics:
        s = _means(main, m).reindex(backbones)
        lo, hi = s.min(), s.max()
        v = (s - lo) / (hi - lo) if hi > lo else s * 0 + 0.5
        norm[m] = v if higher_is_better(m) else 1 - v
    x = np.arange(len(metrics))
    for b in backbones:
        ax.plot(x, [norm[m].get(b, np.nan) for m in metrics], marker="o", label=d.label(b), color=colors[b])
    ax.set_xticks(x, [METRIC_NAMES.get(m, m).split(" ", 1)[0] for m in metrics])
    ax.set_ylabel("normalized score (1 = best)")
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=min(5, len(backbones)), loc="upper center", bbox_to_anchor=(0.5, -0.12))
    ax.set_title(f"Metric profile per backbone ({d.family}, layer {d.layer})")
    return fig


def m1_feature_scores(d: ReportData) -> dict[str, tuple[np.ndarray, float]]:
    """Per backbone (main slice): the per-feature mean Moran's I of evaluable features, and the null E[I]."""
    import json

    out: dict[str, tuple[list[np.ndarray], float]] = {}
    for s in d.saes:
        if s.get("family") != d.family or s.get("layer") != d.layer:
            continue
        folder = d.root / s["eval"]
        table, meta = folder / "m1_features.parquet", folder / "m1.json"
        if not table.exists() or not meta.exists():
            continue
        rec = json.loads(meta.read_text(encoding="utf-8"))
        min_valid = int(rec.get("config", {}).get("min_valid_images", 50))
        null = rec.get("result", {}).get("null_expectation")
        t = pd.read_parquet(table)
        vals = t.loc[t["n_valid_images"] >= min_valid, "mean_I"].to_numpy(dtype=float)
        vals = vals[np.isfinite(vals)]
        lst, _ = out.setdefault(s["backbone"], ([], float(null) if null is not None else math.nan))
        lst.append(vals)
    return {b: (np.concatenate(v) if v else np.array([]), null) for b, (v, null) in out.items()}


def _wrap(label: str, width: int = 20) -> str:
    """A tick label broken into lines of at most ``width`` characters (words kept whole)."""
    return "\n".join(textwrap.wrap(label, width, break_long_words=False, break_on_hyphens=False)) or label


def tick_labels_overlap(fig: Figure, ax: Any) -> bool:
    """Whether any two of ``ax``'s x tick labels overlap once drawn."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def fit_tick_labels(fig: Figure, ax: Any) -> None:
    """Rotate ``ax``'s x tick labels (30°, 60°, then 90°) until no two overlap; then fit the layout."""
    for angle in (30, 60, 90):
        if not tick_labels_overlap(fig, ax):
            break
        for t in ax.get_xticklabels():
            t.set_rotation(angle)
            t.set_ha("right")
    fig.tight_layout()


def fig_moran_distributions(d: ReportData) -> Figure:
    """Fig. 1b: per-feature Moran's I distribution per backbone against the spatial-random null."""
    scores = {b: v for b, v in m1_feature_scores(d).items() if len(v[0])}
    if not scores:
        raise NotEnoughData("no per-feature Moran's I (m1_features.parquet with evaluable features) in the "
                            "main slice")
    backbones = [b for b in d.backbones() if b in scores] + [b for b in scores if b not in d.labels]
    backbones = list(dict.fromkeys(backbones))
    fig, ax = plt.subplots(figsize=(max(7.5, 1.6 * len(backbones)), 3.8))
    data = [scores[b][0] for b in backbones]
    parts = ax.violinplot(data, showmedians=True)
    colors = _colors(backbones)
    bodies: list[Any] = parts["bodies"]  # type: ignore[assignment]
    for body, b in zip(bodies, backbones, strict=True):
        body.set_facecolor(colors[b])
        body.set_alpha(0.6)
    for i, b in enumerate(backbones):
        null = scores[b][1]
        if np.isfinite(null):
            ax.hlines(null, i + 0.6, i + 1.4, colors="k", linestyles="--", linewidth=1,
                      label="null E[I] = −1/(P−1)" if i == 0 else "_nolegend_")
    ax.set_xticks(np.arange(1, len(backbones) + 1),
                  [f"{_wrap(d.label(b))}\n(n={len(scores[b][0])})" for b in backbones], fontsize=8)
    ax.set_xlabel("backbone (n = evaluable features, all SAEs of the slice pooled)")
    ax.set_ylabel("per-feature mean Moran's I")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    ax.set_title("Per-feature Moran's I against the spatial-random null")
    fit_tick_labels(fig, ax)
    return fig


def fig_fvu_preservation(d: ReportData) -> Figure:
    """Fig. 2a: per-configuration FVU (M2) against downstream preservation (M3)."""
    main = d.main
    wide = main[main["metric"].isin(["m2", "m3"])].pivot_table(index=["backbone", "sae_id"], columns="metric",
                                                                   values="value").reset_index()
    if "m2" not in wide or "m3" not in wide or wide[["m2", "m3"]].dropna().empty:
        raise NotEnoughData("needs M2 and M3 for at least one SAE")
    wide = wide.dropna(subset=["m2", "m3"])
    backbones = d.backbones(wide)
    colors = _colors(backbones)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for b in backbones:
        sub = wide[wide["backbone"] == b]
        ax.scatter(sub["m2"], sub["m3"], label=d.label(b), color=colors[b], s=28)
    ax.set_xlabel("M2 FVU (lower is better)")
    ax.set_ylabel("M3 preservation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("FVU vs downstream preservation")
    return fig


def _heatmap(ax: Any, mat: pd.DataFrame, vmin: float = -1, vmax: float = 1, cmap: str = "RdBu_r") -> Any:
    im = ax.imshow(mat.to_numpy(dtype=float), vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto")
    ax.set_xticks(range(mat.shape[1]), [str(c) for c in mat.columns], rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(mat.shape[0]), [str(r) for r in mat.index], fontsize=8)
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            v = mat.iat[i, j]
            ax.text(j, i, "—" if not np.isfinite(v) else f"{v:.2f}", ha="center", va="center", fontsize=7)
    return im


def _headline_only(table: pd.DataFrame, col: str = "metric") -> pd.DataFrame:
    keep = [m for m in table[col] if m in HEADLINE or m == "raw"]
    return table[table[col].isin(keep)]


def fig_correlation_heatmap(d: ReportData) -> Figure:
    """Fig. 2b: cross-backbone Spearman ρ of each metric with each downstream task."""
    corr = d.analysis.get("correlations")
    if not isinstance(corr, pd.DataFrame) or corr.empty:
        raise NotEnoughData("no downstream task results to correlate with (add 'tasks' to the study)")
    corr = _headline_only(corr)
    mat = corr.pivot(index="metric", columns="task", values="rho").astype(float)
    if mat.empty or not np.isfinite(mat.to_numpy()).any():
        raise NotEnoughData("every metric × task correlation needs ≥ 3 backbones with both numbers")
    fig, ax = plt.subplots(figsize=(1.2 + 1.0 * mat.shape[1], 0.8 + 0.45 * mat.shape[0]))
    im = _heatmap(ax, mat)
    fig.colorbar(im, ax=ax, label="Spearman ρ")
    ax.set_title("Metric × task correlations (across backbones)")
    return fig


def fig_variance(d: ReportData) -> Figure:
    """Fig. 3: η² of backbone, configuration and residual per metric."""
    var = d.analysis.get("variance_decomposition")
    if not isinstance(var, pd.DataFrame) or var.empty:
        raise NotEnoughData("no variance decomposition (needs results of ≥ 2 backbones × ≥ 2 configurations)")
    var = _headline_only(var).dropna(subset=["eta2_backbone"])
    if var.empty:
        raise NotEnoughData("variance decomposition not computable: " + "; ".join(
            str(n) for n in d.analysis["variance_decomposition"]["note"].dropna().unique()[:3]))
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    x = np.arange(len(var))
    bottom = np.zeros(len(var))
    for col, label, color in (("eta2_backbone", "backbone", "#1f77b4"),
                              ("eta2_config", "configuration", "#ff7f0e"),
                              ("eta2_resid", "residual", "#bbbbbb")):
        vals = var[col].astype(float).fillna(0).to_numpy()
        ax.bar(x, vals, bottom=bottom, label=label, color=color)
        bottom += vals
    ax.set_xticks(x, [METRIC_NAMES.get(m, m) for m in var["metric"]], rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("η² (share of variance)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title("Variance decomposition across SAE configurations")
    return fig


def fig_layer_ablation(d: ReportData) -> Figure:
    """Fig. 4: each metric at the two layers, per backbone."""
    abl = d.analysis.get("layer_ablation")
    if not isinstance(abl, pd.DataFrame) or abl.empty:
        raise NotEnoughData("needs SAEs of the main family at two layers (a layer ablation block in "
                            "the study)")
    abl = _headline_only(abl)
    layer_cols = [c for c in abl.columns if c.startswith("layer_")]
    metrics = [m for m in HEADLINE if m in set(abl["metric"])]
    if not metrics or len(layer_cols) != 2:
        raise NotEnoughData("layer ablation has no headline metric")
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.3 * len(metrics), 3), squeeze=False)
    for ax, m in zip(axes[0], metrics, strict=True):
        sub = abl[abl["metric"] == m]
        x = np.arange(len(sub))
        for j, col in enumerate(layer_cols):
            ax.bar(x + (j - 0.5) * 0.38, sub[col].astype(float), width=0.38, label=col.replace("_", " "))
        ax.set_xticks(x, [d.label(b) for b in sub["backbone"]], rotation=40, ha="right", fontsize=7)
        ax.set_title(METRIC_NAMES.get(m, m), fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Layer ablation")
    fig.tight_layout()
    return fig


def fig_probing_curves(d: ReportData) -> Figure:
    """Fig. 6: sparse-probing AUC against the feature budget k, one panel per backbone, one line per
    config."""
    main = d.main
    curve = main[main["metric"].str.startswith("m4@k=")].copy()
    if curve.empty:
        raise NotEnoughData("no M4 curve (m4@k=… rows) in the main slice")
    curve["budget"] = curve["metric"].str.slice(5).astype(int)
    backbones = d.backbones(curve)
    fig, axes = plt.subplots(1, len(backbones), figsize=(3.2 * len(backbones), 3), squeeze=False, sharey=True)
    for ax, b in zip(axes[0], backbones, strict=True):
        sub = curve[curve["backbone"] == b]
        for (e, k), g in sub.groupby(["expansion", "k"]):
            g = g.sort_values("budget")
            ax.plot(g["budget"], g["value"], marker=".", label=f"{e:g}× K={k:g}")
        ax.set_xscale("log", base=2)
        ax.set_title(d.label(b), fontsize=9)
        ax.set_xlabel("features k")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean one-vs-rest AUC")
    axes[0][-1].legend(fontsize=6)
    fig.suptitle("Sparse probing curves")
    fig.tight_layout()
    return fig


def fig_task_panels(d: ReportData) -> Figure:
    """Fig. 7: per task, each metric's cross-backbone Spearman ρ."""
    corr = d.analysis.get("correlations")
    if not isinstance(corr, pd.DataFrame) or corr.empty:
        raise NotEnoughData("no downstream task results to correlate with")
    corr = _headline_only(corr)
    corr = corr[np.isfinite(corr["rho"].astype(float))]
    if corr.empty:
        raise NotEnoughData("every metric × task correlation needs ≥ 3 backbones with both numbers")
    tasks = sorted(corr["task"].unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(2.8 * len(tasks), 3), squeeze=False, sharey=True)
    for ax, t in zip(axes[0], tasks, strict=True):
        sub = corr[corr["task"] == t].set_index("metric").reindex([m for m in HEADLINE
                                                                   if m in set(corr["metric"])])
        rho = sub["rho"].astype(float).fillna(0)
        ax.bar(range(len(rho)), rho, color=["#1f77b4" if r >= 0 else "#d62728" for r in rho])
        ax.set_xticks(range(len(rho)), [m.upper() for m in rho.index], fontsize=7)
        ax.axhline(0, color="k", linewidth=0.6)
        ax.set_ylim(-1.05, 1.05)
        ax.set_title(t.replace("task:", ""), fontsize=8)
    axes[0][0].set_ylabel("Spearman ρ")
    fig.suptitle("Per-task metric correlations")
    fig.tight_layout()
    return fig
