"""Collecting a study's results into one tidy table (``results/results.parquet``, schema in
:mod:`visae.analysis.schema`) and running the analyses on it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from visae.io import atomic_write_json, atomic_write_with

RESULTS_DIR = "results"
RESULTS_FILE = "results.parquet"
DETAILS_FILE = "details.parquet"
ANALYSIS_DIR = "analysis"
COLUMNS = ["backbone", "family", "expansion", "k", "layer", "metric", "value", "higher_is_better", "sae_id",
           "grid", "l0", "sae_config"]


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x)


def _flatten(prefix: str, obj: Any, out: dict[str, float]) -> None:
    """Numbers inside a result, keyed by dotted path (lists of numbers are skipped: not tidy values)."""
    v = _num(obj)
    if v is not None:
        out[prefix] = v
    elif isinstance(obj, dict):
        for k, val in obj.items():
            _flatten(f"{prefix}.{k}", val, out)


def metric_rows(name: str, record: dict[str, Any]) -> list[tuple[str, float, bool | None]]:
    """(metric, value, higher_is_better) rows of one ``<metric>.json``: the headline, the M4 curve as
    ``m4@k=<k>``, the M7 grid as ``m7:alpha=…:beta=…``, then every secondary number as ``<metric>.<field>``
    (those go to ``details.parquet``, see :func:`is_detail`)."""
    from visae.analysis.schema import m7_grid_metric

    result = record.get("result", {}) or {}
    value = record.get("value", result.get("value"))
    hib = result.get("higher_is_better")
    head = _num(value)
    rows: list[tuple[str, float, bool | None]] = [(name, math.nan if head is None else head, hib)]
    skip = {"metric", "value", "higher_is_better", "note"}
    flat: dict[str, float] = {}
    for field, val in result.items():
        if field in skip:
            continue
        if name == "m4" and field in ("curve", "auc_curve", "aucs") and isinstance(val, dict):
            for k, auc in val.items():
                if _num(auc) is not None:
                    rows.append((f"m4@k={int(float(k))}", float(auc), True))
            continue
        if name == "m4" and field in ("curve", "auc_curve", "aucs") and isinstance(val, list):
            for item in val:
                if isinstance(item, dict) and _num(item.get("k")) is not None and _num(item.get("auc")) is not None:
                    rows.append((f"m4@k={int(item['k'])}", float(item["auc"]), True))
            continue
        if name == "m7" and field in ("grid", "sensitivity") and isinstance(val, (list, dict)):
            items = val if isinstance(val, list) else [
                {"alpha": float(a.split(",")[0]), "beta": float(a.split(",")[1]), "rate": r}
                for a, r in val.items() if "," in a]
            for item in items:
                rate = _num(item.get("rate", item.get("value", item.get("absorption"))))
                if _num(item.get("alpha")) is not None and _num(item.get("beta")) is not None and rate is not None:
                    rows.append((m7_grid_metric(float(item["alpha"]), float(item["beta"])), rate, False))
            continue
        _flatten(f"{name}.{field}", val, flat)
    rows.extend((k, v, None) for k, v in flat.items())
    return rows


def is_detail(metric: str) -> bool:
    """Secondary numbers (``m2.mean_l0``, ``m6.datasets.dtd.preservation`` …) that stay out of the main table."""
    head = metric.split(":", 1)[0].split("@", 1)[0]
    return "." in head


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def collect_results(root: Path, params: dict[str, Any], write: bool = True) -> pd.DataFrame:
    """Tidy results of every SAE evaluation, raw diagnostic and task of the plan; written atomically."""
    from visae.analysis.schema import higher_is_better, task_metric

    rows: list[dict[str, Any]] = []
    sae_meta: dict[str, dict[str, Any]] = {}
    for s in params.get("saes", []):
        sae_meta[s["sae_id"]] = s
        base = {"backbone": s["backbone"], "family": s["family"], "expansion": float(s["expansion"]),
                "k": float(s["k"]), "layer": int(s["layer"]), "sae_id": s["sae_id"], "grid": s.get("grid", ""),
                "sae_config": json.dumps({"family": s["family"], "expansion": s["expansion"], "k": s["k"],
                                          "train": s.get("train", {})}, sort_keys=True)}
        eval_dir = root / s["eval"]
        l0 = math.nan
        sae_rows: list[dict[str, Any]] = []
        for path in sorted(eval_dir.glob("*.json")):
            if path.name == "done.json":
                continue
            rec = _read_json(path)
            if rec is None:
                continue
            name = str(rec.get("metric", path.stem))
            for metric, value, hib in metric_rows(name, rec):
                sae_rows.append({**base, "metric": metric, "value": value,
                                 "higher_is_better": higher_is_better(metric) if hib is None else bool(hib)})
                if metric in ("m2.mean_l0", "m2.l0") and math.isnan(l0):
                    l0 = value
        for r in sae_rows:
            r["l0"] = l0
        rows.extend(sae_rows)
    for r in params.get("raw", []):
        rec = _read_json(root / r["out"] / "raw.json")
        if rec is None:
            continue
        for metric, value, hib in metric_rows("raw", rec):
            rows.append({"backbone": r["backbone"], "family": "raw", "expansion": math.nan, "k": math.nan,
                         "layer": int(r["layer"]), "metric": metric, "value": value, "sae_id": "", "grid": "",
                         "higher_is_better": higher_is_better(metric) if hib is None else bool(hib),
                         "l0": math.nan, "sae_config": ""})
    for t in params.get("tasks", []):
        rec = _read_json(root / t["out"] / "task.json")
        if rec is None:
            continue
        for row in rec.get("rows", []):
            metric = task_metric(str(row.get("metric", t["task"])), row["features"])
            sid = row.get("sae_id") or ""
            meta = sae_meta.get(sid)
            rows.append({
                "backbone": t["backbone"], "layer": int(t["layer"]), "metric": metric,
                "value": math.nan if row.get("value") is None else float(row["value"]),
                "higher_is_better": True, "sae_id": sid,
                "family": meta["family"] if meta else "raw",
                "expansion": float(meta["expansion"]) if meta else math.nan,
                "k": float(meta["k"]) if meta else math.nan, "grid": meta.get("grid", "") if meta else "",
                "l0": math.nan, "sae_config": ""})
    full = pd.DataFrame(rows, columns=COLUMNS)
    detail_mask = full["metric"].map(is_detail).astype(bool)
    df = full[~detail_mask].reset_index(drop=True)
    if write:
        write_results(df, root / RESULTS_DIR / RESULTS_FILE)
        write_results(full[detail_mask].reset_index(drop=True), root / RESULTS_DIR / DETAILS_FILE)
    return df


def write_results(df: pd.DataFrame, path: Path) -> None:
    """Write the results table as parquet, atomically."""
    atomic_write_with(path, lambda tmp: df.to_parquet(tmp, index=False))


def read_results(study_dir: Path | str, details: bool = False) -> pd.DataFrame:
    """The study's results table, or its secondary numbers (empty, with the columns, when absent)."""
    path = Path(study_dir) / RESULTS_DIR / (DETAILS_FILE if details else RESULTS_FILE)
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    return pd.read_parquet(path)


def run_study_analysis(root: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Every analysis of the paper on the results table (visae.analysis.run); tables to ``analysis/``."""
    from visae.analysis.hypotheses import Hypothesis
    from visae.analysis.run import AnalysisConfig, analyze, write_analysis

    df = read_results(root)
    out = root / ANALYSIS_DIR
    if df.empty:
        atomic_write_json(out / "notes.json", {"notes": ["no results yet"]})
        return {"tables": [], "notes": ["no results yet"]}
    hyps = params.get("hypotheses") or []
    cfg = AnalysisConfig(hypotheses=[Hypothesis(**h) for h in hyps]) if hyps else AnalysisConfig()
    results = analyze(df, cfg)
    write_analysis(results, out)
    notes = [str(n) for n in results.get("notes", [])]
    atomic_write_json(out / "notes.json", {"notes": notes})
    return {"tables": sorted(k for k, v in results.items() if isinstance(v, pd.DataFrame)), "notes": notes}
