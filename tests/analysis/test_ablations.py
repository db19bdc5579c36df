"""The ablation verdicts on planted results tables: known differences, gaps, hypotheses and stabilities."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from visae.analysis.ablations import (
    grid_ablation,
    m5d_ablation,
    stability_ablation,
    whiten_kind,
    whitening_ablation,
)
from visae.results.hypotheses import Hypothesis


def row(backbone: str, metric: str, value: float, sae_id: str = "", seed: int | None = None,
        whiten: str | None = None, k: int = 16, family: str = "batchtopk", **extra: float) -> dict:
    train = {"whiten": whiten} if whiten else {}
    cfg = {"family": family, "expansion": 4, "k": k, "train": train,
           **({"seed": seed} if seed is not None else {})}
    return {"backbone": backbone, "family": family, "expansion": 4.0, "k": float(k), "layer": 11,
            "metric": metric, "value": value, "sae_id": sae_id, "grid": "main", "higher_is_better": True,
            "l0": math.nan,
            "sae_config": json.dumps(cfg, sort_keys=True), "seed": math.nan if seed is None else float(seed),
            "ci_low": extra.get("ci_low", math.nan), "ci_high": extra.get("ci_high", math.nan)}


def test_whitening_pairs_twins_and_reports_the_planted_shift() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for b in ("a", "b", "c"):
        for k in (8, 16, 32):
            base = rng.normal(0.5, 0.1)
            rows.append(row(b, "m2", base, f"{b}{k}", k=k))
            rows.append(row(b, "m2", base + 0.1 + rng.normal(0, 0.01), f"{b}{k}w", k=k, whiten="zca"))
            rows.append(row(b, "m1", base, f"{b}{k}", k=k))
            rows.append(row(b, "m1", base + rng.normal(0, 0.01), f"{b}{k}w", k=k, whiten="zca"))
    verdict, table = whitening_ablation(pd.DataFrame(rows), metrics=["m1", "m2"])
    m2 = table.set_index("metric").loc["m2"]
    assert m2["n_pairs"] == 9 and m2["difference"] == pytest.approx(0.1, abs=0.01)
    assert m2["low"] > 0 and m2["verdict"] == "higher with whitening"
    assert table.set_index("metric").loc["m1", "verdict"] == "no detectable change"
    assert "m2 higher under zca" in verdict
    assert whiten_kind(json.dumps({"train": {"whiten": "pca"}})) == "pca" and whiten_kind("") == "none"


def test_whitening_without_whitened_saes() -> None:
    verdict, table = whitening_ablation(pd.DataFrame([row("a", "m2", 0.3, "x")]))
    assert table.empty and "train.whiten" in verdict


def test_grid_gap_with_and_without_resampling() -> None:
    res, det = [], []
    for i in range(4):
        for b, native, resampled in (("dino", 0.60, 0.50), ("clip", 0.45, 0.48), ("mae", 0.30, 0.31),
                                     ("shuffled:dino", -0.02, 0.05)):
            res.append(row(b, "m1", resampled + 0.01 * i, f"{b}{i}"))
            det.append(row(b, "m1.native_mean_i", native + 0.01 * i, f"{b}{i}"))
    verdict, table = grid_ablation(pd.DataFrame(res), pd.DataFrame(det))
    assert list(table["backbone"]) == ["dino", "clip", "mae", "shuffled:dino"]
    assert table.loc[3, "shift"] == pytest.approx(0.07) and "null shuffled:dino by +0.070" in verdict
    assert table.loc[0, "gap_to_next_native"] == pytest.approx(0.15)
    assert table.loc[0, "gap_to_next_resampled"] == pytest.approx(0.02)
    assert "+0.150" in verdict and "+0.020" in verdict and "ranking is unchanged" in verdict
    verdict2, empty = grid_ablation(pd.DataFrame(res), pd.DataFrame(columns=pd.DataFrame(det).columns))
    assert empty.empty and "grid is not set" in verdict2


def test_m5d_asks_h2_of_both() -> None:
    rows = []
    for i, b in enumerate("abcdef"):
        for s in range(2):
            rows.append(row(b, "m5", [0.3, 0.6, 0.5, 0.1, 0.4, 0.2][i] + 0.001 * s, f"{b}{s}"))
            rows.append(row(b, "m5d", 0.1 * i + 0.001 * s, f"{b}{s}"))
        rows.append(row(b, "task:cub_acc:raw", 0.5 + 0.05 * i))
    h2 = Hypothesis(id="H2", metric="m5", task="task:cub_acc:raw", threshold=0.6)
    verdict, table, hyp = m5d_ablation(pd.DataFrame(rows), [h2])
    assert list(hyp["id"]) == ["H2", "H2d"] and list(hyp["metric"]) == ["m5", "m5d"]
    assert hyp.iloc[1]["rho"] == pytest.approx(1.0) and hyp.iloc[1]["verdict"] == "confirmed"
    assert hyp.iloc[0]["rho"] < 0.6 and "on M5d: confirmed" in verdict
    assert set(table["metric"]) == {"m5", "m5d"} and len(table) == 12


def test_stability_per_backbone_and_family_against_chance() -> None:
    rows, det = [], []
    for b, value in (("a", 0.9), ("b", 0.35)):
        for k in (8, 16):
            for seed in (0, 1):
                rows.append(row(b, "stability", value + 0.01 * (k == 16), f"{b}{k}{seed}", seed=seed, k=k))
                det.append(row(b, "stability.share_matched", value - 0.1, f"{b}{k}{seed}", seed=seed, k=k))
                det.append(row(b, "stability.random_mean_cosine", 0.4, f"{b}{k}{seed}", seed=seed, k=k))
                det.append(row(b, "stability.random_share_matched", 0.0, f"{b}{k}{seed}", seed=seed, k=k))
    verdict, table = stability_ablation(pd.DataFrame(rows), pd.DataFrame(det))
    t = table.set_index("backbone")
    assert t.loc["a", "configurations"] == 2 and t.loc["a", "seeds"] == 2
    assert t.loc["a", "mean_cosine"] == pytest.approx(0.905) and t.loc["a", "random_mean_cosine"] == 0.4
    assert verdict.startswith("1 of 2") and "most stable: a" in verdict


def test_analysis_asks_m5_hypotheses_of_m5d_when_present() -> None:
    from visae.analysis.run import with_m5d

    h2 = Hypothesis(id="H2", metric="m5", task="task:cub_acc:raw", threshold=0.6)
    h1 = Hypothesis(id="H1", metric="m1", task="task:seg:raw", threshold=0.7)
    got = with_m5d([h1, h2], {"m1", "m5", "m5d"})
    assert [(h.id, h.metric, h.task) for h in got] == [("H1", "m1", "task:seg:raw"), ("H2", "m5", h2.task),
                                                       ("H2d", "m5d", h2.task)]
    assert with_m5d([h1, h2], {"m1", "m5"}) == [h1, h2]


def test_synthetic_rows_are_split_off_and_checked_against_their_known_answers() -> None:
    from visae.analysis.ablations import split_synthetic, synthetic_grid_check, synthetic_stability_check

    res, det = [], []
    for i in range(3):
        for b, native, resampled in (("synth:spatial", 0.55, 0.50), ("synth:null", -1 / 63 + 0.002, 0.06),
                                     ("dino", 0.4, 0.45)):
            res.append(row(b, "m1", resampled + 0.01 * i, f"{b}{i}"))
            det.append(row(b, "m1.native_mean_i", native + 0.001 * i, f"{b}{i}"))
    images, synth = split_synthetic(pd.DataFrame(res))
    assert set(images["backbone"]) == {"dino"} and set(synth["backbone"]) == {"synth:spatial", "synth:null"}
    _, synth_det = split_synthetic(pd.DataFrame(det))
    verdict, table = synthetic_grid_check(synth, synth_det)
    assert list(table["met"]) == [True, True, True] and "3 of 3 checks met" in verdict
    assert table.loc[0, "expected"] == pytest.approx(-1 / 63)
    # a "null" that is not at Moran's null, and a planted preset that does not lead it: both caught
    moved = [dict(r, value=r["value"] + (0.2 if r["backbone"] == "synth:null" else 0)) for r in det]
    bad_res = [dict(r, value=0.0 if r["backbone"] == "synth:spatial" else r["value"]) for r in res]
    verdict, table = synthetic_grid_check(split_synthetic(pd.DataFrame(bad_res))[1],
                                          split_synthetic(pd.DataFrame(moved))[1])
    assert list(table["met"]) == [False, True, False] and "1 of 3 checks met" in verdict
    rows, sdet = [], []
    for b, value in (("synth:easy?d=16", 0.85), ("synth:spatial", 0.45)):
        for seed in (0, 1):
            rows.append(row(b, "stability", value, f"{b}{seed}", seed=seed, ci_low=value - 0.05,
                            ci_high=value + 0.05))
            for name, v in (("share_matched", value), ("random_mean_cosine", 0.39),
                            ("random_share_matched", 0.0)):
                sdet.append(row(b, f"stability.{name}", v, f"{b}{seed}", seed=seed))
    verdict, table = synthetic_stability_check(pd.DataFrame(rows), pd.DataFrame(sdet))
    t = table.set_index("backbone")
    assert bool(t.loc["synth:easy?d=16", "met"]) and not bool(t.loc["synth:spatial", "met"])  # above chance,
    assert t.loc["synth:spatial", "halfway"] == pytest.approx(0.695)  # but not halfway from it to 1
    assert "1 of 2" in verdict and "lowest: synth:spatial" in verdict
