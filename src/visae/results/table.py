"""Result records → rows of the tidy results table, and reading/writing the table.

``results/results.parquet`` holds the headline rows (schema: :mod:`visae.results.schema`);
``results/details.parquet`` holds every secondary number (``m2.mean_l0`` …) with the same columns.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from visae.io import atomic_write_with
from visae.results.layout import DETAILS_FILE, RESULTS_DIR, RESULTS_FILE
from visae.results.schema import higher_is_better, m7_grid_metric, task_metric

COLUMNS = ["backbone", "family", "expansion", "k", "layer", "metric", "value", "higher_is_better", "sae_id",
           "grid", "l0", "sae_config", "seed", "ci_low", "ci_high"]
_CURVE_FIELDS = ("curve", "auc_curve", "aucs")
_INTERVAL_FIELDS = ("ci_low", "ci_high", "ci_level", "ci_method")
_SKIP_FIELDS = {"metric", "value", "higher_is_better", "note", *_INTERVAL_FIELDS}


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


def _m4_curve_rows(val: Any) -> list[tuple[str, float, bool | None]]:
    if isinstance(val, dict):
        return [(f"m4@k={int(float(k))}", float(auc), True) for k, auc in val.items()
                if _num(auc) is not None]
    return [(f"m4@k={int(item['k'])}", float(item["auc"]), True) for item in val
            if isinstance(item, dict) and _num(item.get("k")) is not None
            and _num(item.get("auc")) is not None]


def _m7_grid_rows(val: Any) -> list[tuple[str, float, bool | None]]:
    items = val if isinstance(val, list) else [
        {"alpha": float(a.split(",")[0]), "beta": float(a.split(",")[1]), "rate": r}
        for a, r in val.items() if "," in a]
    rows: list[tuple[str, float, bool | None]] = []
    for item in items:
        rate = _num(item.get("rate", item.get("value", item.get("absorption"))))
        if _num(item.get("alpha")) is not None and _num(item.get("beta")) is not None and rate is not None:
            rows.append((m7_grid_metric(float(item["alpha"]), float(item["beta"])), rate, False))
    return rows


def metric_rows(name: str, record: Mapping[str, Any]) -> list[tuple[str, float, bool | None]]:
    """(metric, value, higher_is_better) rows of one result record: the headline, the M4 curve as
    ``m4@k=<k>``, the M7 grid as ``m7:alpha=…:beta=…``, then every secondary number as ``<metric>.<field>``
    (those go to ``details.parquet``, see :func:`is_detail`)."""
    result = record.get("result", {}) or {}
    value = record.get("value", result.get("value"))
    head = _num(value)
    rows: list[tuple[str, float, bool | None]] = [
        (name, math.nan if head is None else head, result.get("higher_is_better"))]
    flat: dict[str, float] = {}
    for field, val in result.items():
        if field in _SKIP_FIELDS:
            continue
        if name == "m4" and field in _CURVE_FIELDS and isinstance(val, (dict, list)):
            rows.extend(_m4_curve_rows(val))
        elif name == "m7" and field in ("grid", "sensitivity") and isinstance(val, (list, dict)):
            rows.extend(_m7_grid_rows(val))
        else:
            _flatten(f"{name}.{field}", val, flat)
    rows.extend((k, v, None) for k, v in flat.items())
    return rows


def interval_of(record: Mapping[str, Any]) -> dict[str, float]:
    """``ci_low``/``ci_high`` of a record's headline (NaN when it carries no interval)."""
    result = record.get("result", {}) or {}
    return {k: math.nan if _num(result.get(k)) is None else float(result[k]) for k in ("ci_low", "ci_high")}


def _with_interval(rows: list[dict[str, Any]], name: str, record: Mapping[str, Any]) -> None:
    for row in rows:
        row.update(interval_of(record) if row["metric"] == name
                   else {"ci_low": math.nan, "ci_high": math.nan})


def is_detail(metric: str) -> bool:
    """Secondary numbers (``m2.mean_l0``, ``m6.datasets.dtd.preservation`` …) that stay out of the main
    table."""
    head = metric.split(":", 1)[0].split("@", 1)[0]
    return "." in head


def read_record(path: Path) -> dict[str, Any] | None:
    """A result JSON as a dict, or None when absent or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _direction(metric: str, hib: bool | None) -> bool:
    return higher_is_better(metric) if hib is None else bool(hib)


def sae_rows(eval_dir: Path, sae: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows of every result record in one SAE's evaluation folder; ``sae`` is its index entry
    (sae_id, backbone, layer, family, expansion, k, grid, train)."""
    base = {"backbone": sae["backbone"], "family": sae["family"], "expansion": float(sae["expansion"]),
            "k": float(sae["k"]), "layer": int(sae["layer"]), "sae_id": sae["sae_id"],
            "grid": sae.get("grid", ""),
            "seed": math.nan if sae.get("seed") is None else float(sae["seed"]),
            "sae_config": json.dumps({"family": sae["family"], "expansion": sae["expansion"], "k": sae["k"],
                                      "train": sae.get("train", {}),
                                      **({"source": sae["source"]} if sae.get("source") else {}),
                                      **({"seed": sae["seed"]} if sae.get("seed") is not None else {})},
                                     sort_keys=True)}
    l0 = math.nan
    rows: list[dict[str, Any]] = []
    for path in sorted(eval_dir.glob("*.json")):
        rec = read_record(path) if path.name != "done.json" else None
        if rec is None:
            continue
        name = str(rec.get("metric", path.stem))
        record_rows = [{**base, "metric": metric, "value": value, "higher_is_better": _direction(metric, hib)}
                       for metric, value, hib in metric_rows(name, rec)]
        _with_interval(record_rows, name, rec)
        rows.extend(record_rows)
        for row in record_rows:
            if row["metric"] in ("m2.mean_l0", "m2.l0") and math.isnan(l0):
                l0 = row["value"]
    for r in rows:
        r["l0"] = l0
    return rows


def raw_rows(record: Mapping[str, Any], backbone: str, layer: int) -> list[dict[str, Any]]:
    """Rows of one raw-backbone diagnostic record (family ``raw``, no SAE)."""
    rows = [{"backbone": backbone, "family": "raw", "expansion": math.nan, "k": math.nan, "layer": int(layer),
             "metric": metric, "value": value, "sae_id": "", "grid": "",
             "higher_is_better": _direction(metric, hib),
             "l0": math.nan, "sae_config": "", "seed": math.nan} for metric, value,
            hib in metric_rows("raw", record)]
    _with_interval(rows, "raw", record)
    return rows


def task_record_rows(record: Mapping[str, Any], task: str, backbone: str, layer: int,
                     saes: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows of one task record (``{"rows": [{metric, features, value, sae_id}]}``); ``saes`` by id."""
    rows = []
    for row in record.get("rows", []):
        sid = row.get("sae_id") or ""
        meta = saes.get(sid)
        rows.append({
            "backbone": backbone, "layer": int(layer),
            "metric": task_metric(str(row.get("metric", task)), row["features"]),
            "value": math.nan if row.get("value") is None else float(row["value"]),
            "higher_is_better": True, "sae_id": sid,
            "family": meta["family"] if meta else "raw",
            "expansion": float(meta["expansion"]) if meta else math.nan,
            "k": float(meta["k"]) if meta else math.nan, "grid": meta.get("grid", "") if meta else "",
            "l0": math.nan, "sae_config": ""})
    return rows


def split_details(rows: list[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(headline table, details table) of tidy rows."""
    full = pd.DataFrame(rows, columns=COLUMNS)
    mask = full["metric"].map(is_detail).astype(bool)
    return full[~mask].reset_index(drop=True), full[mask].reset_index(drop=True)


def write_results(df: pd.DataFrame, path: Path) -> None:
    """Write a results table as parquet, atomically."""
    atomic_write_with(path, lambda tmp: df.to_parquet(tmp, index=False))


def read_results(study_dir: Path | str, details: bool = False) -> pd.DataFrame:
    """The study's results table, or its secondary numbers (empty, with the columns, when absent);
    StudyError naming the file when it is not a readable parquet table."""
    path = Path(study_dir) / RESULTS_DIR / (DETAILS_FILE if details else RESULTS_FILE)
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    try:
        return pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several unrelated types for a damaged file
        from visae.errors import StudyError

        raise StudyError(f"{path}: cannot read the results table ({type(e).__name__}: {e}); delete it and "
                         "rerun 'visae study run' on the study's YAML to collect it again") from None


def eval_records(folder: Path) -> list[str]:
    """Names of the ``visae eval`` result records (``<metric>.json`` with inputs) directly in ``folder``."""
    names = []
    for path in sorted(folder.glob("*.json")):
        rec = read_record(path)
        if rec is not None and "metric" in rec and isinstance(rec.get("inputs"), dict):
            names.append(path.name)
    return names


def not_a_study(folder: Path, command: str) -> str:
    """Why ``folder`` is not a study folder, for ``command``'s error: what it holds and what is expected."""
    from visae.results.layout import STUDY_YAML

    expected = (f"'{command}' needs a study folder, the out_dir of 'visae study run' (it holds {STUDY_YAML} "
                f"and {RESULTS_DIR}/{RESULTS_FILE})")
    records = eval_records(folder) if folder.is_dir() else []
    if records:
        return (f"{folder}: holds 'visae eval' results of one SAE ({', '.join(records[:4])}), not a study; "
                f"{expected}. Cross-backbone analyses and the report compare many SAEs: run them as a study "
                "(see studies/demo.yaml); one SAE's numbers are in those JSON files and in the 'visae "
                "eval' table")
    return f"{folder}: not a study folder (no {STUDY_YAML}, no {RESULTS_DIR}/{RESULTS_FILE}); {expected}"


def is_study(folder: Path) -> bool:
    """True when ``folder`` looks like a study folder (its study.yaml or its results/ folder exists)."""
    from visae.results.layout import STUDY_YAML

    return (folder / STUDY_YAML).is_file() or (folder / RESULTS_DIR).is_dir()
