"""Variance decomposition against statsmodels' anova_lm and against a planted backbone effect."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from statsmodels.stats.anova import anova_lm

from visae.analysis.variance import variance_decomposition
from visae.results.schema import with_config

BACKBONES = ["clip", "deit", "dinov2", "mae", "siglip"]
CONFIGS = [(e, k) for e in (8, 16, 32) for k in (64, 128, 192, 256)]


def study(seed: int, backbone_sd: float, config_sd: float, noise_sd: float,
          metric: str = "m1") -> pd.DataFrame:
    """A 5 × 12 grid: value = backbone effect + configuration effect + noise."""
    rng = np.random.default_rng(seed)
    b_eff = dict(zip(BACKBONES, rng.normal(0, backbone_sd, len(BACKBONES)), strict=True))
    c_eff = {c: v for c, v in zip(CONFIGS, rng.normal(0, config_sd, len(CONFIGS)), strict=True)}
    rows = [{"backbone": b, "family": "batchtopk", "expansion": e, "k": k, "layer": 11, "metric": metric,
             "value": b_eff[b] + c_eff[(e, k)] + rng.normal(0, noise_sd)}
            for b in BACKBONES for (e, k) in CONFIGS]
    return pd.DataFrame(rows)


def statsmodels_eta2(df: pd.DataFrame) -> dict[str, float]:
    data = with_config(df)
    table = anova_lm(smf.ols("value ~ C(backbone) + C(config)", data=data).fit())
    total = table["sum_sq"].sum()
    return {"backbone": table.loc["C(backbone)", "sum_sq"] / total,
            "config": table.loc["C(config)", "sum_sq"] / total,
            "resid": table.loc["Residual", "sum_sq"] / total,
            "p_backbone": table.loc["C(backbone)", "PR(>F)"], "f_config": table.loc["C(config)", "F"]}


@pytest.mark.parametrize("drop", [0, 7])
def test_agrees_with_statsmodels(drop: int) -> None:
    df = study(1, backbone_sd=1.0, config_sd=0.5, noise_sd=0.3)
    if drop:  # an incomplete grid (some SAEs missing): Type I sums of squares, backbone first
        df = df.drop(np.random.default_rng(0).choice(len(df), drop, replace=False))
    ours = variance_decomposition(df).iloc[0]
    ref = statsmodels_eta2(df)
    assert ours["eta2_backbone"] == pytest.approx(ref["backbone"], abs=1e-10)
    assert ours["eta2_config"] == pytest.approx(ref["config"], abs=1e-10)
    assert ours["eta2_resid"] == pytest.approx(ref["resid"], abs=1e-10)
    assert ours["p_backbone"] == pytest.approx(ref["p_backbone"], rel=1e-6)
    assert ours["f_config"] == pytest.approx(ref["f_config"], rel=1e-8)
    assert ours["eta2_backbone"] + ours["eta2_config"] + ours["eta2_resid"] == pytest.approx(1.0)
    assert (ours["n_backbones"], ours["n_configs"], ours["n_obs"]) == (5, 12, 60 - drop)


def test_planted_backbone_share() -> None:
    # Deterministic effects so that the planted shares are known exactly; small noise on top.
    b_eff = dict(zip(BACKBONES, [-2.0, -1.0, 0.0, 1.0, 2.0], strict=True))
    c_eff = dict(zip(CONFIGS, np.linspace(-0.5, 0.5, 12), strict=True))
    rng = np.random.default_rng(3)
    rows = [{"backbone": b, "family": "batchtopk", "expansion": e, "k": k, "layer": 11, "metric": "m5",
             "value": b_eff[b] + c_eff[(e, k)] + rng.normal(0, 0.1)} for b in BACKBONES for (e, k) in CONFIGS]
    ss_b = 12 * sum(v**2 for v in b_eff.values())
    ss_c = 5 * sum(v**2 for v in c_eff.values())
    ss_noise = (5 - 1) * (12 - 1) * 0.1**2  # expected residual SS of the additive fit
    planted = ss_b / (ss_b + ss_c + ss_noise)
    ours = variance_decomposition(pd.DataFrame(rows)).iloc[0]
    assert ours["eta2_backbone"] == pytest.approx(planted, abs=0.01)
    assert ours["eta2_config"] == pytest.approx(ss_c / (ss_b + ss_c + ss_noise), abs=0.01)


def test_subset_and_task_rows() -> None:
    df = study(2, 1.0, 0.2, 0.1)
    raw_task = pd.DataFrame([{"backbone": b, "family": "raw", "expansion": np.nan, "k": np.nan, "layer": 11,
                              "metric": "task:retrieval_r1:raw", "value": 0.5} for b in BACKBONES])
    out = variance_decomposition(pd.concat([df, raw_task]), backbones=["clip", "deit", "dinov2", "siglip"])
    assert list(out["metric"]) == ["m1"]  # raw-feature task rows carry no configuration
    assert out.iloc[0]["n_backbones"] == 4 and out.iloc[0]["n_obs"] == 48


def test_one_level_factor_gives_no_number() -> None:
    df = study(4, 1.0, 0.5, 0.1)
    one = variance_decomposition(df[df["backbone"] == "clip"]).iloc[0]
    assert pd.isna(one["eta2_backbone"]) and "backbone has 1 level" in one["note"]
    assert not pd.isna(one["eta2_config"])
    single = df[(df["expansion"] == 16) & (df["k"] == 64)]
    row = variance_decomposition(single).iloc[0]
    assert pd.isna(row["eta2_config"]) and "config has 1 level" in row["note"]
    assert pd.isna(row["f_backbone"]) and "no residual degrees of freedom" in row["note"]


def test_seeds_separate_seed_noise_from_the_configuration_effect() -> None:
    """Three seeds per cell: the interaction becomes estimable and the residual is the seed noise;
    every share equals statsmodels' full-factorial anova_lm."""
    rng = np.random.default_rng(5)
    b_eff = dict(zip(BACKBONES, rng.normal(0, 1.0, 5), strict=True))
    c_eff = dict(zip(CONFIGS, rng.normal(0, 0.5, 12), strict=True))
    rows = [{"backbone": b, "family": "batchtopk", "expansion": e, "k": k, "layer": 11, "metric": "m1",
             "seed": s, "value": b_eff[b] + c_eff[(e, k)] + rng.normal(0, 0.05) + rng.normal(0, 0.2)}
            for b in BACKBONES for (e, k) in CONFIGS for s in (1, 2, 3)]
    df = pd.DataFrame(rows)
    ours = variance_decomposition(df).iloc[0]
    table = anova_lm(smf.ols("value ~ C(backbone) + C(config) + C(backbone):C(config)",
                             data=with_config(df)).fit())
    total = table["sum_sq"].sum()
    assert ours["n_seeds"] == 3 and ours["n_obs"] == 180
    assert ours["eta2_backbone"] == pytest.approx(table.loc["C(backbone)", "sum_sq"] / total, abs=1e-10)
    assert ours["eta2_config"] == pytest.approx(table.loc["C(config)", "sum_sq"] / total, abs=1e-10)
    assert ours["eta2_interaction"] == pytest.approx(table.loc["C(backbone):C(config)",
                                                               "sum_sq"] / total, abs=1e-10)
    assert ours["eta2_seed"] == pytest.approx(table.loc["Residual", "sum_sq"] / total, abs=1e-10)
    assert ours["p_config"] == pytest.approx(table.loc["C(config)", "PR(>F)"], rel=1e-6)
    # the seed share is the within-cell sum of squares (closed form)
    within = df.groupby(["backbone", "expansion",
                         "k"])["value"].apply(lambda v: ((v - v.mean()) ** 2).sum()).sum()
    assert ours["eta2_seed"] == pytest.approx(within / ((df["value"] - df["value"].mean()) ** 2).sum())


def test_one_seed_per_cell_says_seed_noise_is_in_the_residual() -> None:
    ours = variance_decomposition(study(2, 1.0, 0.5, 0.3)).iloc[0]
    assert ours["n_seeds"] == 1 and ours["eta2_seed"] is None and "seed noise" in ours["note"]
