"""The synthetic part of studies/ablations.yaml meets its known answers: the spatially random preset at
Moran's null and the planted spatial gap surviving resampling (grid control), and a planted dictionary
found again across seeds far above chance (stability)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from visae.analysis.ablations import split_synthetic, synthetic_grid_check, synthetic_stability_check
from visae.study.config import load_study_config

ROOT = Path(__file__).resolve().parents[2]


def synthetic_part(tmp_path: Path) -> Path:
    """studies/ablations.yaml with its synthetic backbones and blocks only (as shipped: same presets, image
    counts, SAE blocks and metric settings), written under ``tmp_path``."""
    cfg = yaml.safe_load((ROOT / "studies" / "ablations.yaml").read_text())
    cfg["backbones"] = [b for b in cfg["backbones"] if b["name"].startswith("synth:")]
    cfg["saes"] = [g for g in cfg["saes"] if g["name"].startswith("synth-")]
    cfg["metrics"] = ["m1", "m2"]
    cfg["metric_configs"] = {k: v for k, v in cfg["metric_configs"].items() if k in ("m1", "raw")}
    for key in ("tasks", "hypotheses"):
        cfg.pop(key)
    cfg["data"].pop("task_sources")
    cfg["out_dir"] = str(tmp_path / "out")
    cfg["browser_features"] = 2
    path = tmp_path / "synthetic.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_the_synthetic_part_is_what_the_study_ships(tmp_path: Path) -> None:
    cfg = load_study_config(synthetic_part(tmp_path))
    assert {b.name for b in cfg.backbones} == {"synth:spatial", "synth:null", "synth:easy?d=16"}
    assert all(set(b.data) == {"train", "eval"} for b in cfg.backbones)
    assert {g.name for g in cfg.saes} == {"synth-grid", "synth-stability"}


def test_a_backbone_image_set_for_a_role_the_study_lacks_is_named(tmp_path: Path) -> None:
    from visae.errors import ConfigError

    path = synthetic_part(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    cfg["backbones"][2]["data"]["ood"] = {"spec": "synth", "split": "test", "max_images": 10}
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=r"1 problem\(s\).*backbones\[2\]\.data\.ood: the study has no "
                       "image set 'ood' to replace; use one of eval, train"):
        load_study_config(path)


@pytest.mark.slow  # a whole study: 3 caches, 7 SAEs, evaluation, report (5 s quiet, ~45 s at load 5, 2 cores)
def test_the_synthetic_known_answers_are_met(tmp_path: Path) -> None:
    from visae.study.run import run_study

    run_study(load_study_config(synthetic_part(tmp_path)))
    out = tmp_path / "out"
    results = pd.read_parquet(out / "results" / "results.parquet")
    details = pd.read_parquet(out / "results" / "details.parquet")
    images, synth = split_synthetic(results)
    assert images.empty and len(synth) == len(results)
    for metric in ("m1", "raw"):
        verdict, table = synthetic_grid_check(results, details, metric=metric)
        assert len(table) == 5 and table["met"].all(), (verdict, table)  # null; spatial and easy vs null
        null = table.iloc[0]
        assert null["expected"] == pytest.approx(-1 / 63)
    verdict, table = synthetic_stability_check(results, details)
    assert len(table) == 1 and table["met"].all(), (verdict, table)
    row = table.iloc[0]
    assert row["mean_cosine"] > row["random_mean_cosine"] + 0.3 and row["share_matched"] > 0.5
    report = (out / "report" / "index.html").read_text()
    assert report.count("synthetic known answer") >= 3  # M1, raw diagnostic, stability
