"""The analyses reproduce the numbers the paper prints from the inputs the paper prints (Tables 7 and 9)."""

from __future__ import annotations

import pandas as pd
import pytest

from visae.analysis.consistency import rank_consistency, ranking_correlation
from visae.analysis.sensitivity import m7_grid, m7_sensitivity
from visae.results.schema import m7_grid_metric

# Table 9: (metric, BatchTopK ranking, JumpReLU ranking, ρ, p) as printed, rankings best to worst.
TABLE9 = [
    ("m1", "DINOv2, DeiT, CLIP, SigLIP, MAE", "DINOv2, CLIP, DeiT, SigLIP, MAE", 0.900, 0.037),
    ("m2", "CLIP, SigLIP, DINOv2, DeiT, MAE", "CLIP, SigLIP, DINOv2, DeiT, MAE", 1.000, 0.000),
    ("m3", "DINOv2, DeiT, MAE, SigLIP, CLIP", "DINOv2, DeiT, SigLIP, MAE, CLIP", 0.900, 0.037),
    ("m4", "SigLIP, DINOv2, CLIP, DeiT, MAE", "DINOv2, SigLIP, CLIP, DeiT, MAE", 0.900, 0.037),
    ("m5", "CLIP, SigLIP, DINOv2, DeiT, MAE", "CLIP, SigLIP, DINOv2, DeiT, MAE", 1.000, 0.000),
    ("m6", "SigLIP, DINOv2, CLIP, MAE, DeiT", "DINOv2, SigLIP, CLIP, DeiT, MAE", 0.800, 0.104),
    ("m7", "DeiT, DINOv2, MAE, SigLIP, CLIP", "DeiT, DINOv2, MAE, CLIP, SigLIP", 0.900, 0.037),
]

# Table 7: α, β, then DINOv2, CLIP, SigLIP, DeiT, MAE absorption.
TABLE7_BACKBONES = ["DINOv2", "CLIP", "SigLIP", "DeiT", "MAE"]
TABLE7 = [
    (0.7, 0.3, 0.385, 0.562, 0.502, 0.155, 0.521),
    (0.7, 0.5, 0.294, 0.404, 0.408, 0.121, 0.291),
    (0.7, 0.7, 0.098, 0.200, 0.208, 0.038, 0.106),
    (0.8, 0.3, 0.513, 0.653, 0.642, 0.332, 0.645),
    (0.8, 0.5, 0.423, 0.494, 0.547, 0.298, 0.415),
    (0.8, 0.7, 0.223, 0.291, 0.347, 0.211, 0.226),
    (0.9, 0.3, 0.725, 0.796, 0.796, 0.604, 0.785),
    (0.9, 0.5, 0.634, 0.638, 0.702, 0.570, 0.555),
    (0.9, 0.7, 0.434, 0.434, 0.502, 0.483, 0.366),
]


def _rows_from_ranking(metric: str, family: str, ranking: list[str], lower_better: bool) -> list[dict]:
    """Per-configuration rows whose per-backbone means order the backbones as ``ranking`` (best first)."""
    rows = []
    for pos, backbone in enumerate(ranking):
        base = float(pos) if lower_better else float(len(ranking) - pos)
        for j, (e, k) in enumerate([(16, 64), (16, 128), (32, 64)]):
            rows.append({"backbone": backbone, "family": family, "expansion": e, "k": k, "layer": 11,
                         "metric": metric, "value": base + 0.01 * (j - 1)})
    return rows


@pytest.mark.parametrize(("metric", "a", "b", "rho", "p"), TABLE9)
def test_table9_from_rankings(metric: str, a: str, b: str, rho: float, p: float) -> None:
    corr = ranking_correlation(a.split(", "), b.split(", "))
    assert corr.rho is not None and corr.p is not None
    assert round(corr.rho, 3) == rho
    assert round(corr.p, 3) == p


def test_table9_from_a_results_table() -> None:
    rows = []
    for metric, a, b, _, _ in TABLE9:
        lower = metric in ("m2", "m7")
        rows += _rows_from_ranking(metric, "batchtopk", a.split(", "), lower)
        rows += _rows_from_ranking(metric, "jumprelu", b.split(", "), lower)
    table = rank_consistency(pd.DataFrame(rows), "batchtopk", "jumprelu")
    assert list(table["metric"]) == [m for m, *_ in TABLE9]
    for row, (_, a, b, rho, p) in zip(table.itertuples(index=False), TABLE9, strict=True):
        assert row.ranking_a == a and row.ranking_b == b  # best to worst, lower-is-better inverted
        assert round(row.rho, 3) == rho and round(row.p, 3) == p
        assert row.n == 5
    assert not table.loc[table["metric"] == "m2", "higher_is_better"].item()


def test_table9_says_when_n_is_too_small() -> None:
    corr = ranking_correlation(["DINOv2", "CLIP"], ["CLIP", "DINOv2"])
    assert corr.rho is None and corr.p is None and "at least 3" in corr.note


def _table7_results() -> pd.DataFrame:
    rows = []
    for alpha, beta, *vals in TABLE7:
        for backbone, v in zip(TABLE7_BACKBONES, vals, strict=True):
            rows.append({"backbone": backbone, "family": "batchtopk", "expansion": 16, "k": 128, "layer": 11,
                         "metric": m7_grid_metric(alpha, beta), "value": v})
    return pd.DataFrame(rows)


def test_table7_deit_lowest_in_7_of_9() -> None:
    grid = m7_grid(_table7_results())
    assert len(grid) == 9
    table, summary = m7_sensitivity(grid)
    assert summary.text == "DeiT lowest in 7 of 9 settings"
    assert (summary.backbone, summary.wins, summary.n_settings) == ("DeiT", 7, 9)
    # The two exceptions: α = 0.9 with β ∈ {0.5, 0.7}, where MAE is lower (App. N).
    exceptions = table[table["lowest"] != "DeiT"]
    assert list(zip(exceptions["alpha"], exceptions["beta"], exceptions["lowest"], strict=True)) == [
        (0.9, 0.5, "MAE"), (0.9, 0.7, "MAE")]


def test_table9_convergence_filter_leaves_out_and_lists_missed_targets() -> None:
    from visae.analysis.consistency import convergence_filter, rank_consistency_filtered

    metric, a, b, _, _ = TABLE9[0]
    rows = _rows_from_ranking(metric, "batchtopk", a.split(", "), False)
    rows += _rows_from_ranking(metric, "gated", b.split(", "), False)
    for r in rows:  # BatchTopK's L0 is its rule; Gated's is a target it may miss
        r["l0"] = r["k"] + (9.0 if r["family"] == "batchtopk" else 1.5)
    # one gated configuration of the first backbone missed its target: it would otherwise flip the ranking
    first = b.split(", ")[0]
    rows.append({"backbone": first, "family": "gated", "expansion": 32, "k": 128, "layer": 11,
                 "metric": metric, "value": -100.0, "l0": 140.0})
    df = pd.DataFrame(rows)
    table, excluded = rank_consistency_filtered(df, "batchtopk", "gated")
    assert table["ranking_b"].item() == b  # the outlier is gone
    assert len(excluded) == 1 and excluded["backbone"].item() == first and excluded["k"].item() == 128
    assert "12.00 > 2" in excluded["reason"].item()
    kept_all, none = convergence_filter(df, None)
    assert len(kept_all) == len(df) and none.empty
    unfiltered, _ = rank_consistency_filtered(df, "batchtopk", "gated", l0_tolerance=None)
    assert unfiltered["ranking_b"].item() != b
