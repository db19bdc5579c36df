"""What the report reads, and nothing else: the results tables, the SAE index, the analysis job's tables
and the features job's views — all files of the study folder (layout: :mod:`visae.results.layout`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from visae.results.layout import (
    ANALYSIS_DIR,
    BROWSER_FILE,
    FEATURES_DIR,
    FIG5_FILE,
    RESULTS_DIR,
    SAE_INDEX_FILE,
    STUDY_YAML,
)


class NotEnoughData(Exception):
    """A figure or table cannot be drawn from the results; the message says what is missing."""


@dataclass
class ReportData:
    """Everything the figures and tables read."""

    root: Path
    results: pd.DataFrame
    """Validated tidy results (visae.results.schema)."""
    details: pd.DataFrame
    """Secondary numbers (``m2.mean_l0`` …), same columns."""
    analysis: dict[str, Any]
    """The analysis job's tables by name (visae.analysis.run.read_analysis) and its ``notes``."""
    family: str | None
    layer: int | None
    labels: dict[str, str] = field(default_factory=dict)
    saes: list[dict[str, Any]] = field(default_factory=list)
    """The study's SAEs (results/saes.json: sae_id, out, eval, backbone, layer, family, expansion, k)."""
    fig5: dict[str, Any] = field(default_factory=dict)
    """The features job's Fig. 5 cells (features/fig5.json); empty when it has not run."""
    browser: dict[str, Any] = field(default_factory=dict)
    """The features job's browser entries (features/browser.json); empty when it has not run."""
    controls: dict[str, str] = field(default_factory=dict)
    """Control backbones (random weights, ``shuffled:``: the spatial null) → what each one controls for."""

    @property
    def main(self) -> pd.DataFrame:
        """Rows of the main family and layer."""
        from visae.results.schema import select

        return select(self.results, family=self.family, layer=self.layer)

    def label(self, backbone: str) -> str:
        """Display name of a backbone; a control is marked ``[control]`` unless its name says so already."""
        name = self.labels.get(backbone, backbone)
        if backbone in self.controls and "control" not in name.lower():
            name += " [control]"
        return name

    def backbones(self, df: pd.DataFrame | None = None) -> list[str]:
        """Backbones in display order (the study's order when known)."""
        present = list(dict.fromkeys((df if df is not None else self.results)["backbone"]))
        order = [b for b in self.labels if b in present]
        return order + sorted(b for b in present if b not in order)


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def study_names(root: Path) -> tuple[str, dict[str, str]]:
    """The study's name and backbone display names from its ``study.yaml`` (the folder name and no labels
    when absent)."""
    path = root / STUDY_YAML
    if not path.is_file():
        return root.name, {}
    from visae.config import read_yaml

    data = read_yaml(path)
    labels = {}
    for b in data.get("backbones") or []:
        if isinstance(b, dict) and "name" in b:
            labels[str(b["name"])] = str(b.get("label") or b["name"])
        elif isinstance(b, str):
            labels[b] = b
    return str(data.get("name") or root.name), labels


def control_backbones(names: list[str]) -> dict[str, str]:
    """The controls among backbone names (:func:`visae.backbones.registry.control_of`) → what each controls
    for."""
    from visae.backbones.registry import control_of

    out = {}
    for name in names:
        try:
            what = control_of(name)
        except Exception:  # a name the registry cannot parse is simply not a known control
            what = None
        if what:
            out[name] = what
    return out


def load_report_data(root: Path, labels: dict[str, str] | None = None) -> ReportData:
    """Results, details, SAE index, analysis tables and feature views of a study folder."""
    from visae.analysis.run import read_analysis
    from visae.results.schema import primary_slice, validate_results
    from visae.results.table import read_results

    df = read_results(root)
    det = read_results(root, details=True)
    family: str | None = None
    layer: int | None = None
    if len(df):
        df = validate_results(df)
        family, layer = primary_slice(df)
    if len(det):
        det = validate_results(det, source="details table")
    return ReportData(root=root, results=df, details=det, analysis=read_analysis(root / ANALYSIS_DIR),
                      family=family, layer=layer, labels=dict(labels or {}),
                      saes=list(_json(root / RESULTS_DIR / SAE_INDEX_FILE).get("saes", [])),
                      fig5=_json(root / FEATURES_DIR / FIG5_FILE),
                      browser=_json(root / FEATURES_DIR / BROWSER_FILE),
                      controls=control_backbones([*dict.fromkeys([*(labels or {}),
                                                                  *df.get("backbone", [])])]))
