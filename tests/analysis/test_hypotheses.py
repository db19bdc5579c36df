"""Hypotheses H1–H4, the correlation table, codes lift, layer ablation, the schema and `visae analyze`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from visae.analysis.hypotheses import (
    CONFIRMED,
    MET_NOT_SIGNIFICANT,
    NOT_COMPUTABLE,
    NOT_SUPPORTED,
    correlation_table,
    evaluate_hypotheses,
    verdict,
)
from visae.analysis.lift import codes_lift, lift_correlation
from visae.analysis.sensitivity import layer_ablation
from visae.errors import StudyError
from visae.results.schema import parse_m7_grid_metric, parse_task_metric, task_metric, validate_results

BACKBONES = ["clip", "deit", "dinov2", "mae", "siglip"]
CONFIGS = [(16, 64), (16, 128), (32, 64)]


def sae_rows(metric: str, by_backbone: dict[str, float], family: str = "batchtopk",
             layer: int = 11) -> list[dict]:
    """Rows for every configuration whose per-backbone mean is exactly ``by_backbone``."""
    return [{"backbone": b, "family": family, "expansion": e, "k": k, "layer": layer, "metric": metric,
             "value": v + 0.01 * (j - 1)} for b, v in by_backbone.items() for j, (e, k) in enumerate(CONFIGS)]


def raw_rows(metric: str, by_backbone: dict[str, float]) -> list[dict]:
    """Backbone-level rows (no configuration)."""
    return [{"backbone": b, "family": "raw", "expansion": np.nan, "k": np.nan, "layer": 11, "metric": metric,
             "value": v} for b, v in by_backbone.items()]


def ranks(order: list[int]) -> dict[str, float]:
    return {b: float(r) for b, r in zip(BACKBONES, order, strict=True)}


def planted_study() -> pd.DataFrame:
    base = [1, 2, 3, 4, 5]
    # ρ 0.9
    rows = sae_rows("m1", ranks(base)) + raw_rows("task:segmentation_miou:raw", ranks([1, 2, 3, 5, 4]))
    rows += sae_rows("m5", ranks(base)) + raw_rows("task:cub_acc:raw", ranks([3, 1, 5, 2, 4]))  # ρ 0.3
    rows += sae_rows("m3", ranks(base)) + raw_rows("task:retrieval_r1:raw", ranks([3, 2, 1, 4, 5]))  # ρ 0.6
    return pd.DataFrame(rows)


def test_hypotheses_match_the_papers_printed_statistics() -> None:
    out = evaluate_hypotheses(planted_study()).set_index("id")
    assert round(out.loc["H1", "rho"], 3) == 0.900 and round(out.loc["H1", "p"], 3) == 0.037
    assert out.loc["H1", "verdict"] == CONFIRMED
    assert round(out.loc["H2", "rho"], 3) == 0.300 and round(out.loc["H2", "p"], 3) == 0.624
    assert out.loc["H2", "verdict"] == NOT_SUPPORTED
    assert round(out.loc["H3", "rho"], 3) == 0.600 and round(out.loc["H3", "p"], 3) == 0.285
    assert out.loc["H3", "verdict"] == MET_NOT_SIGNIFICANT
    assert out.loc["H4", "verdict"] == NOT_COMPUTABLE and pd.isna(out.loc["H4", "rho"])
    assert "no rows for m4, task:inat_sparse_auc128:codes" in out.loc["H4", "note"]
    assert out.loc["H1", "n"] == 5


def test_too_few_backbones_is_not_computable() -> None:
    df = planted_study()
    out = evaluate_hypotheses(df[df["backbone"].isin(["clip", "deit"])]).set_index("id")
    assert out.loc["H1", "verdict"] == NOT_COMPUTABLE and pd.isna(out.loc["H1", "rho"])
    assert "at least 3" in out.loc["H1", "note"]


def test_verdict_rules() -> None:
    assert verdict(0.7, 0.04, 0.7) == CONFIRMED
    assert verdict(0.6000000000000001 - 2e-16, 0.285, 0.6) == MET_NOT_SIGNIFICANT
    assert verdict(0.69, 0.01, 0.7) == NOT_SUPPORTED
    assert verdict(None, None, 0.7) == NOT_COMPUTABLE


def test_correlation_table_covers_every_pair() -> None:
    table = correlation_table(planted_study())
    assert len(table) == 3 * 3
    row = table[(table["metric"] == "m1") & (table["task"] == "task:segmentation_miou:raw")].iloc[0]
    assert row["rho"] == pytest.approx(0.9)


def test_codes_lift_inversion_is_found() -> None:
    raw = {"clip": 0.4, "deit": 0.7, "dinov2": 0.55, "mae": 0.33, "siglip": 0.5}
    lift = {"clip": 1.05, "deit": 0.99, "dinov2": 1.01, "mae": 1.18, "siglip": 1.03}  # weaker raw → more lift
    rows = raw_rows("task:retrieval_r1:raw", raw)
    rows += sae_rows("task:retrieval_r1:codes", {b: raw[b] * lift[b] for b in BACKBONES})
    per = codes_lift(pd.DataFrame(rows))
    got = per.set_index("backbone")["lift_mean"]
    for b in BACKBONES:
        assert got[b] == pytest.approx(lift[b])
    corr = lift_correlation(per).iloc[0]
    assert corr["task"] == "retrieval_r1" and corr["rho"] == pytest.approx(-1.0)
    assert corr["lowest_lift"] == "deit 0.99" and corr["highest_lift"] == "mae 1.18"


def test_layer_ablation() -> None:
    rows = sae_rows("m4", {"clip": 0.6, "dinov2": 0.7}, layer=3)
    rows += sae_rows("m4", {"clip": 0.8, "dinov2": 0.9})
    rows += sae_rows("m4", {"siglip": 0.85})
    out = layer_ablation(pd.DataFrame(rows), layers=(3, 11)).set_index("backbone")
    assert out.loc["clip", "difference"] == pytest.approx(0.2)
    assert np.isnan(out.loc["siglip", "layer_3"]) and "no rows at layer 3" in out.loc["siglip", "note"]


def test_schema_names_missing_columns() -> None:
    with pytest.raises(StudyError, match="missing column\\(s\\) family, layer"):
        validate_results(pd.DataFrame({"backbone": ["a"], "expansion": [8], "k": [64], "metric": ["m1"],
                                       "value": [0.1]}))
    assert parse_task_metric("task:retrieval_r1:codes").task == "retrieval_r1"
    assert parse_task_metric("m1") is None and parse_task_metric("task:x:other") is None
    assert task_metric("cub_acc", "raw") == "task:cub_acc:raw"
    assert parse_m7_grid_metric("m7:alpha=0.7:beta=0.3") == (0.7, 0.3)


def test_cli_writes_tables(tmp_path) -> None:
    from visae.cli import app

    df = planted_study()
    df = pd.concat([df, pd.DataFrame(sae_rows("m1", ranks([2, 1, 3, 4, 5]), family="jumprelu"))])
    df.to_parquet(tmp_path / "results.parquet")
    res = CliRunner().invoke(app, ["analyze", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "H1: m1 → task:segmentation_miou:raw: ρ = 0.900, p = 0.037, n = 5: confirmed" in res.output
    out = tmp_path / "analysis"
    for name in ("variance_decomposition", "variance_decomposition_subset", "hypotheses", "correlations",
                 "rank_consistency"):
        assert (out / f"{name}.csv").is_file() and (out / f"{name}.md").is_file()
    assert "| H1 |" in (out / "hypotheses.md").read_text()
    assert "## Pre-registered hypotheses" in (out / "analysis.md").read_text()
    bad = CliRunner().invoke(app, ["analyze", str(tmp_path / "nowhere")])
    assert bad.exit_code == 2 and "results table not found" in bad.output
