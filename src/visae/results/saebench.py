"""Results the field can read: every ``visae eval`` record also as a SAEBench-shaped JSON file.

SAEBench writes one JSON per evaluation with ``eval_type_id``, ``eval_config``, ``eval_id``,
``datetime_epoch_millis``, ``eval_result_metrics`` (metric groups), ``eval_result_details`` (per-feature
rows), ``eval_result_unstructured`` and the SAE's config. visae's version groups the numbers by the
protocol's four dimensions (:data:`DIMENSIONS`) and adds visae's version and commit and the SAE's
provenance. ``visae eval --out DIR`` writes ``DIR/saebench/<metric>.json``;
:func:`export_results` (``visae saebench RESULTS OUT``) converts the records of any folder (an eval folder,
a study) the same way. The JSON Schemas under ``schemas/`` are generated from the models here
(``scripts/make_schemas.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from visae.errors import ConfigError
from visae.io import atomic_write_json

SAEBENCH_DIR = "saebench"
Dimension = Literal["spatial_coherence", "reconstruction", "concept_detection", "disentanglement", "other"]
DIMENSIONS: dict[str, Dimension] = {
    "m1": "spatial_coherence", "raw": "spatial_coherence",
    "m2": "reconstruction", "m3": "reconstruction",
    "m4": "concept_detection", "m5": "concept_detection", "m6": "concept_detection",
    "m7": "disentanglement",
}
"""Metric → the protocol dimension it measures (paper §4); plugins and tasks go to ``other``."""
FEATURE_TABLES = {"m1": "m1_features.parquet", "m5": "m5_features.parquet", "raw": "raw_channels.parquet"}
"""Metrics whose per-feature table becomes ``eval_result_details``."""

Number = float | int | bool | None
Detail = Number | str | list[Number]
"""A per-feature value: a number, a label, or a short list (M5's top images and their weights)."""


class ResultRecord(BaseModel):
    """visae's own result record (``<metric>.json`` written by ``visae eval``; see visae.results.record)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(description="registry name of the metric or task (m1 … m7, raw, task_*)")
    value: float | None = Field(description="the headline number; null when it could not be computed")
    result: dict[str, Any] = Field(description="every summary number of the metric's typed result")
    config: dict[str, Any] = Field(description="the metric's configuration")
    inputs: dict[str, Any] = Field(description="SAE id and hash, cache hash and path, backbone, provenance")
    seconds: dict[str, float] = Field(description="wall-clock seconds (finalize, total)")
    visae_version: str = Field(description="visae version that wrote the record")


class SAEBenchResult(BaseModel):
    """One evaluation in SAEBench's result shape (``BaseEvalOutput``), with visae's groups and provenance."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    eval_type_id: str = Field(description="'visae_<metric>', e.g. visae_m2")
    eval_config: dict[str, Any] = Field(description="the metric's configuration")
    eval_id: str = Field(description="unique id of this evaluation (a UUID)")
    datetime_epoch_millis: int = Field(description="when the record was converted, ms since the epoch")
    eval_result_metrics: dict[Dimension, dict[str, Number]] = Field(
        description="the metric's numbers under its protocol dimension: spatial_coherence, reconstruction, "
                    "concept_detection, disentanglement (other: plugins)")
    eval_result_details: list[dict[str, Detail]] = Field(
        default_factory=list, description="one row per feature where the metric has them (M1, M5, raw)")
    eval_result_unstructured: dict[str, Any] | None = Field(
        None, description="the metric's nested results (curves, grids, per-dataset numbers)")
    sae_bench_commit_hash: str = Field(description="not SAEBench: 'visae <version>' that wrote the result")
    sae_lens_id: str | None = Field(None, description="the SAE's id or path as evaluated")
    sae_lens_release_id: str | None = Field(None, description="hub repo of the SAE, when it came from one")
    sae_lens_version: str | None = Field(None, description="unused by visae (null)")
    sae_cfg_dict: dict[str, Any] = Field(description="the SAE's config (family, sizes, k …) and provenance")
    visae_version: str = Field(description="visae version")
    visae_commit: str | None = Field(None, description="git commit of the visae source (a checkout)")
    cache: dict[str, Any] = Field(default_factory=dict, description="evaluation cache: hash, path, backbone")


@lru_cache(maxsize=1)
def visae_commit() -> str | None:
    """The git commit of the visae source tree, or None (an installed wheel)."""
    here = Path(__file__).resolve()
    try:
        out = subprocess.run(["git", "-C", str(here.parent), "rev-parse", "--show-toplevel", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split()
    if out.returncode != 0 or len(lines) != 2:
        return None
    # only when this file is part of that checkout (not a wheel inside some other repository's venv)
    top = Path(lines[0]).resolve()
    return lines[1] if (top / "src" / "visae" / "results" / here.name).resolve() == here else None


def _numbers(obj: Any, prefix: str = "") -> tuple[dict[str, Number], dict[str, Any]]:
    """Flat scalar fields, and the nested ones kept as they are."""
    flat: dict[str, Number] = {}
    nested: dict[str, Any] = {}
    for k, v in (obj or {}).items():
        if isinstance(v, bool | int | float) or v is None:
            flat[prefix + k] = v
        elif isinstance(v, dict | list):
            nested[prefix + k] = v
    return flat, nested


def _details(folder: Path, metric: str) -> list[dict[str, Detail]]:
    name = FEATURE_TABLES.get(metric)
    if name is None or not (folder / name).is_file():
        return []
    import pandas as pd

    table = pd.read_parquet(folder / name)
    return [{str(k): (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
            for row in json.loads(table.to_json(orient="records"))]


def _sae_config(inputs: dict[str, Any]) -> dict[str, Any]:
    """The SAE's visae config (a local checkpoint's config.yaml) plus provenance; what is known otherwise."""
    cfg: dict[str, Any] = {}
    sae = str(inputs.get("sae") or "")
    path = Path(sae)
    try:
        cfg_path = path / "config.yaml" if path.is_dir() else None
    except OSError:
        cfg_path = None
    if cfg_path is not None and cfg_path.is_file():
        import yaml

        try:
            loaded = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            loaded = None
        if isinstance(loaded, dict):
            cfg = {k: v for k, v in loaded.items() if k != "normalization"}
    cfg.setdefault("sae_hash", inputs.get("sae_hash"))
    if inputs.get("sae_provenance"):
        cfg["provenance_of_files"] = inputs["sae_provenance"]
    return cfg


def saebench_result(record: dict[str, Any], folder: Path | None = None,
                    sae_cfg: dict[str, Any] | None = None) -> SAEBenchResult:
    """The SAEBench-shaped result of one visae record (``folder``: where its per-feature tables are;
    ``sae_cfg``: the evaluated SAE's config when the record's SAE is not a local visae folder)."""
    from visae import __version__

    rec = ResultRecord.model_validate(record)
    flat, nested = _numbers(rec.result)
    flat.pop("metric", None)
    dimension: Dimension = DIMENSIONS.get(rec.metric, "other")
    prov = rec.inputs.get("sae_provenance") or {}
    return SAEBenchResult(
        eval_type_id=f"visae_{rec.metric}", eval_config=dict(rec.config), eval_id=str(uuid.uuid4()),
        datetime_epoch_millis=int(time.time() * 1000),
        eval_result_metrics={dimension: {"value": rec.value,
                                         **{k: v for k, v in flat.items() if k != "value"}}},
        eval_result_details=_details(folder, rec.metric) if folder is not None else [],
        eval_result_unstructured=nested or None,
        sae_bench_commit_hash=f"visae {rec.visae_version}",
        sae_lens_id=str(rec.inputs.get("sae")) if rec.inputs.get("sae") is not None else None,
        sae_lens_release_id=str(prov.get("repo")) if isinstance(prov, dict) and prov.get("repo") else None,
        sae_cfg_dict={**(sae_cfg or {}), **_sae_config(rec.inputs)}, visae_version=__version__,
        visae_commit=visae_commit(),
        cache={k: rec.inputs.get(k) for k in ("cache", "cache_path", "backbone")})


def write_saebench(record_path: Path, out: Path | None = None,
                   sae_cfg: dict[str, Any] | None = None) -> Path:
    """Write the SAEBench-shaped file of the record at ``record_path`` (default:
    ``<its folder>/saebench/<metric>.json``); return its path."""
    record = json.loads(record_path.read_text(encoding="utf-8"))
    result = saebench_result(record, record_path.parent, sae_cfg)
    dest = out if out is not None else record_path.parent / SAEBENCH_DIR / f"{record_path.stem}.json"
    atomic_write_json(dest, result.model_dump(mode="json"))
    return dest


def is_record(data: Any) -> bool:
    """Whether a loaded JSON document is a visae result record."""
    return isinstance(data, dict) and {"metric", "value", "result", "inputs"} <= set(data)


def export_results(results: Path | str, out: Path | str) -> list[Path]:
    """Every visae result record under ``results`` (an eval folder or a study) as SAEBench JSON under
    ``out``, keeping the relative paths; ConfigError when there is none."""
    root, out_root = Path(results), Path(out)
    if not root.is_dir():
        raise ConfigError(f"{root}: no such folder (give a 'visae eval' output folder or a study folder)")
    written = []
    for dir_name, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != SAEBENCH_DIR)
        for f in sorted(files):
            if not f.endswith(".json"):
                continue
            path = Path(dir_name, f)
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if is_record(data):
                written.append(write_saebench(path, out_root / path.relative_to(root)))
    if not written:
        raise ConfigError(f"{root}: no visae result records (<metric>.json from 'visae eval') in it")
    return written


SCHEMAS: dict[str, type[BaseModel]] = {"visae_result_record": ResultRecord, "saebench_result": SAEBenchResult}
"""Schema file stem → model (``schemas/<stem>.schema.json``)."""


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of every result model, as committed under ``schemas/``."""
    out = {}
    for stem, model in SCHEMAS.items():
        schema = model.model_json_schema()
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://visae.dev/schemas/{stem}.schema.json"
        out[stem] = schema
    return out


__all__ = ["DIMENSIONS", "SAEBENCH_DIR", "ResultRecord", "SAEBenchResult", "export_results", "json_schemas",
           "saebench_result", "write_saebench"]
