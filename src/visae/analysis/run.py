"""Run every analysis on a study's tidy results table and write the tables as CSV and Markdown."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import Field

from visae.analysis.consistency import rank_consistency_filtered
from visae.analysis.hypotheses import (
    PREREGISTERED,
    Hypothesis,
    correlation_matrix,
    correlation_table,
    evaluate_hypotheses,
)
from visae.analysis.lift import codes_lift, lift_correlation
from visae.analysis.sensitivity import layer_ablation, m7_grid, m7_sensitivity
from visae.analysis.variance import variance_decomposition
from visae.config import FrozenConfig
from visae.errors import ConfigError, StudyError
from visae.io import atomic_write_text, atomic_write_with, check_output_dir
from visae.results.layout import NOTES_FILE, RESULTS_DIR, RESULTS_FILE
from visae.results.schema import primary_slice, select, validate_results


class AnalysisConfig(FrozenConfig):
    """Which slice of the results each analysis reads; None picks it from the table."""

    family: str | None = Field(None, description="main SAE family (None: batchtopk if present, else the "
                                                 "most common)")
    layer: int | None = Field(None,
                              description="main layer (None: the layer with most rows of the main family)")
    compare_families: list[str] | None = Field(
        None, description="families whose backbone rankings are compared with the main one (App. Q); None: "
                          "all others")
    l0_tolerance: float | None = Field(
        2.0, ge=0, description="rank consistency's convergence filter (App. Q): configurations of target-L0 "
                               "families (jumprelu, gated) with |L0 − k| above this are left out and listed; "
                               "None keeps every configuration")
    ablation_layers: list[int] | None = Field(
        None, description="two layers for the layer ablation (App. D); None: the other layer present and "
                          "the main one")
    subset_exclude: list[str] = Field(
        default_factory=lambda: ["mae"],
        description="backbones left out of the restricted variance decomposition (§5.7: non-MAE); a backbone "
                    "is left out when its name equals or starts with an entry (case-insensitive)")
    hypotheses: list[Hypothesis] = Field(default_factory=lambda: list(PREREGISTERED),
                                         description="hypotheses to test (default: the paper's H1–H4, §4.5)")


def results_file(path: str | Path) -> Path:
    """The results table a path names: the file itself, ``<dir>/results.parquet`` or a study's
    ``<dir>/results/results.parquet``."""
    p = Path(path)
    if p.is_dir():
        top = (p / RESULTS_FILE).is_file() or not (p / RESULTS_DIR / RESULTS_FILE).is_file()
        p = p / RESULTS_FILE if top else p / RESULTS_DIR / RESULTS_FILE
    return p


def load_results(path: str | Path) -> pd.DataFrame:
    """Read ``results.parquet`` (a file, or a folder holding one; ``.csv`` also accepted) and validate it."""
    p = results_file(path)
    if not p.is_file():
        from visae.results.table import eval_records, not_a_study

        if Path(path).is_dir() and eval_records(Path(path)):
            raise StudyError(not_a_study(Path(path), "visae analyze"))
        raise StudyError(f"{p}: results table not found; pass a results.parquet or the study folder "
                         "holding one")
    try:
        df = pd.read_csv(p) if p.suffix == ".csv" else pd.read_parquet(p)
    except Exception as e:  # pyarrow raises several unrelated types for a bad file
        raise StudyError(f"{p}: cannot read the results table ({e})") from None
    return validate_results(df, source=str(p))


def _cell(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) >= 1e4 or 0 < abs(x) < 1e-3 else f"{x:.3f}"
    return str(x).replace("|", "\\|").replace("\n", " ")


def to_markdown(df: pd.DataFrame, index: bool = False) -> str:
    """A GitHub Markdown table (floats to 3 decimals, missing values as —)."""
    frame = df.reset_index() if index else df
    if frame.empty:
        return "_(no rows)_\n"
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def _exclude(backbones: list[str], patterns: list[str]) -> list[str]:
    pats = [p.lower() for p in patterns]
    return [b for b in backbones if not any(b.lower() == p or b.lower().startswith(p) for p in pats)]


def with_m5d(hypotheses: list[Hypothesis], metrics: set[str]) -> list[Hypothesis]:
    """The hypotheses, plus each one on ``m5`` asked of ``m5d`` too (id + "d") when the table has m5d and no
    hypothesis names it: §5.5's question asked of both (docs/ablations.md)."""
    if "m5d" not in metrics or any(h.metric == "m5d" for h in hypotheses):
        return list(hypotheses)
    out: list[Hypothesis] = []
    for h in hypotheses:
        out.append(h)
        if h.metric == "m5":
            out.append(h.model_copy(update={"id": f"{h.id}d", "metric": "m5d",
                                            "description": f"{h.description} — asked of M5d"}))
    return out


def check_filters(df: pd.DataFrame, cfg: AnalysisConfig) -> None:
    """ConfigError naming the filter (--family / --layer) and the values that exist when it leaves no SAE
    rows."""
    sae = df[~df["family"].isin(["", "raw"])]
    families = sorted(str(f) for f in sae["family"].unique())
    if cfg.family is not None and cfg.family not in families:
        raise ConfigError(f"--family {cfg.family}: no results of that SAE family; the table has "
                          f"{', '.join(families) or 'no SAE rows'}")
    if cfg.layer is not None:
        pool = sae[sae["family"] == cfg.family] if cfg.family is not None else sae
        layers = sorted(int(x) for x in pool["layer"].dropna().unique())
        if cfg.layer not in layers:
            of = f" of family {cfg.family}" if cfg.family is not None else ""
            raise ConfigError(f"--layer {cfg.layer}: no SAE results at that layer{of}; the table has "
                              f"layer(s) {', '.join(map(str, layers)) or 'none'}")


def analyze(df: pd.DataFrame, config: AnalysisConfig | None = None) -> dict[str, Any]:
    """Every analysis of the paper on a validated results table: a dict of tables (DataFrames) and notes."""
    cfg = config or AnalysisConfig()
    df = validate_results(df)
    auto_family, auto_layer = primary_slice(df)
    family = cfg.family if cfg.family is not None else auto_family
    layer = cfg.layer if cfg.layer is not None else auto_layer
    check_filters(df, cfg)
    main = select(df, family=family, layer=layer)
    notes: list[str] = [f"main slice: family={family}, layer={layer}, {main['backbone'].nunique()} "
                        f"backbone(s), {len(main)} row(s)"]
    out: dict[str, Any] = {}
    out["variance_decomposition"] = variance_decomposition(main)
    all_b = sorted(main["backbone"].unique())
    subset = _exclude(all_b, cfg.subset_exclude)
    if subset != all_b:
        out["variance_decomposition_subset"] = variance_decomposition(main, backbones=subset)
        notes.append(f"restricted variance decomposition on {', '.join(subset)}")
    out["hypotheses"] = evaluate_hypotheses(main, with_m5d(cfg.hypotheses, set(main["metric"])))
    corr = correlation_table(main)
    out["correlations"] = corr
    out["correlation_matrix"] = correlation_matrix(corr)
    lift = codes_lift(main)
    out["codes_lift"] = lift
    out["codes_lift_correlation"] = lift_correlation(lift)

    families = sorted(set(df["family"]) - {"", "raw"})
    others = cfg.compare_families if cfg.compare_families is not None else [f for f in families
                                                                            if f != family]
    if family is not None and others:
        layer_rows = select(df, layer=layer)
        pairs = [rank_consistency_filtered(layer_rows, family, other, l0_tolerance=cfg.l0_tolerance)
                 for other in others]
        out["rank_consistency"] = pd.concat([t for t, _ in pairs], ignore_index=True)
        excluded = pd.concat([e for _, e in pairs], ignore_index=True).drop_duplicates()
        out["rank_consistency_excluded"] = excluded.reset_index(drop=True)
        off = cfg.l0_tolerance is None
        notes.append("rank consistency: convergence filter off (l0_tolerance=None)" if off
                     else f"rank consistency: {len(excluded)} configuration(s) outside |L0 − target| ≤ "
                          f"{cfg.l0_tolerance:g} left out (rank_consistency_excluded)")
    else:
        notes.append("rank consistency: one SAE family only; nothing to compare")

    grid = m7_grid(main)
    if len(grid):
        table, summary = m7_sensitivity(grid)
        out["m7_sensitivity"] = table
        notes.append(f"M7 sensitivity: {summary.text}")

    layers = sorted(int(x) for x in select(df, family=family)["layer"].dropna().unique())
    ablation = cfg.ablation_layers
    if ablation is None and len(layers) >= 2 and layer is not None:
        ablation = [min(x for x in layers if x != layer), layer]
    if ablation is not None:
        out["layer_ablation"] = layer_ablation(select(df, family=family), layers=tuple(ablation))
    else:
        notes.append("layer ablation: one layer only; nothing to compare")
    out["notes"] = notes
    return out


TITLES = {
    "variance_decomposition": "Variance decomposition (App. B, Table 3): η² of backbone, "
                              "configuration, residual",
    "variance_decomposition_subset": "Variance decomposition on a backbone subset (§5.7)",
    "hypotheses": "Pre-registered hypotheses H1–H4 (§4.5)",
    "correlations": "Metric × task Spearman correlations (Fig. 2b, App. J)",
    "correlation_matrix": "Metric × task ρ grid",
    "codes_lift": "Codes lift per backbone and task (App. O)",
    "codes_lift_correlation": "Raw performance vs codes lift (App. O, Table 8)",
    "rank_consistency": "Cross-family rank consistency (App. Q, Table 9)",
    "rank_consistency_excluded": "Configurations left out of the rank consistency by the convergence filter "
                                 "(|L0 − target| > tolerance)",
    "m7_sensitivity": "M7 absorption over the α × β grid (App. N, Table 7)",
    "layer_ablation": "Layer ablation (App. D)",
}


def _to_parquet(table: pd.DataFrame, path: Path, index: bool) -> None:
    table.to_parquet(path, index=index)


def write_analysis(results: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write each table as ``<name>.csv``, ``<name>.md`` and ``<name>.parquet`` (what :func:`read_analysis`
    reads back, types intact) and all of them in ``analysis.md``."""
    out = Path(out_dir)
    written: list[Path] = []
    sections = ["# Analysis\n", *[f"- {n}" for n in results.get("notes", [])], ""]
    for name, title in TITLES.items():
        table = results.get(name)
        if not isinstance(table, pd.DataFrame):
            continue
        index = name == "correlation_matrix"
        csv_path, md_path = out / f"{name}.csv", out / f"{name}.md"
        atomic_write_text(csv_path, table.to_csv(index=index))
        md = f"## {title}\n\n{to_markdown(table, index=index)}"
        atomic_write_text(md_path, md)
        pq_path = out / f"{name}.parquet"
        atomic_write_with(pq_path, partial(_to_parquet, table, index=index))
        sections.append(md)
        written += [csv_path, md_path, pq_path]
    summary = out / "analysis.md"
    atomic_write_text(summary, "\n".join(sections))
    written.append(summary)
    return written


def read_analysis(out_dir: str | Path) -> dict[str, Any]:
    """The tables an analysis wrote (by name, as DataFrames) and its ``notes``; empty when absent."""
    import json

    out = Path(out_dir)
    tables: dict[str, Any] = {name: pd.read_parquet(out / f"{name}.parquet") for name in TITLES
                              if (out / f"{name}.parquet").is_file()}
    notes_path = out / NOTES_FILE
    if notes_path.is_file():
        tables["notes"] = list(json.loads(notes_path.read_text(encoding="utf-8")).get("notes", []))
    return tables


def analyze_path(results_path: str | Path, out_dir: str | Path | None = None,
                 config: AnalysisConfig | None = None) -> tuple[dict[str, Any], list[Path]]:
    """Load a results table, analyse it and write the tables (default: ``analysis/`` beside the results)."""
    p = Path(results_path)
    base = p if p.is_dir() else p.parent  # a study folder gets <study>/analysis
    if out_dir is not None:
        check_output_dir(out_dir)
    results = analyze(load_results(p), config)
    return results, write_analysis(results, Path(out_dir) if out_dir is not None else base / "analysis")
