"""Synthetic presets as study backbones (``synth:<preset>``) and the image-set spec ``synth``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from visae.errors import ConfigError, DataError
from visae.study.config import SourceSpec, load_study_config
from visae.study.validate import validate_study
from visae.synth import GroundTruth
from visae.synth.study import parse_backbone_name, synth_cache

ROOT = Path(__file__).resolve().parents[2]


def test_backbone_names_carry_settings() -> None:
    cfg = parse_backbone_name("synth:spatial?d=48&grid=6&overlap=0.2", n_images=30, split="val")
    assert (cfg.preset, cfg.d, cfg.grid, cfg.overlap, cfg.n_images, cfg.split) == ("spatial", 48, 6, 0.2, 30,
                                                                                   "val")
    with pytest.raises(ConfigError, match="key=value"):
        parse_backbone_name("synth:spatial?d")
    with pytest.raises(ConfigError, match="unknown; choose one of"):
        parse_backbone_name("synth:nope")


def test_study_cache_job_writes_the_cache_and_its_truth(tmp_path: Path) -> None:
    src = SourceSpec(spec="synth", split="val", max_images=20)
    folder, n = synth_cache("synth:hierarchical?d=96", src, 0, tmp_path, "cpu", {"progress": False})
    assert n == 20 and GroundTruth.load(folder).config.split == "val"
    assert (folder / "hierarchy.json").is_file()
    with pytest.raises(ConfigError, match="max_images"):
        synth_cache("synth:spatial", SourceSpec(spec="synth"), 0, tmp_path, "cpu", {})
    with pytest.raises(ConfigError, match="spec 'synth'"):
        synth_cache("synth:spatial", SourceSpec(spec="offline:digits", max_images=5), 0, tmp_path, "cpu", {})
    with pytest.raises(ConfigError, match="layer 0"):
        synth_cache("synth:spatial", src, 11, tmp_path, "cpu", {})


def test_the_synth_source_alone_is_refused() -> None:
    from visae.datasets.registry import open_source

    with pytest.raises(DataError, match="synthetic backbone"):
        open_source("synth")


def test_studies_synth_yaml_is_valid() -> None:
    cfg = load_study_config(ROOT / "studies" / "synth.yaml")
    assert validate_study(cfg) == []
    assert [b.name for b in cfg.backbones] == ["synth:spatial", "synth:null", "synth:hierarchical"]
    assert "recovery" in cfg.metrics and cfg.layers == [0]


@pytest.mark.slow  # a whole (tiny) study: cache, train, eval, collect, analysis, report (2–10 s)
def test_a_tiny_synthetic_study_reports_recovery_and_the_preset_effect(tmp_path: Path) -> None:
    from visae.study.run import run_study

    yaml_path = tmp_path / "s.yaml"
    text = (ROOT / "studies" / "synth.yaml").read_text()
    yaml_path.write_text(text)
    overrides = ["out_dir=" + str(tmp_path / "out"), "data.train.max_images=200", "data.eval.max_images=100",
                 "saes=[{name: main, family: batchtopk, expansions: [1], ks: [2, 4]}]",
                 "metrics=[m1, m2, recovery]", "backbones=[synth:spatial, synth:null]",
                 "train.epochs=1",  # the template's M4/M7 settings go with those metrics (refused otherwise)
                 "metric_configs={m1: {min_valid_images: 20}, recovery: {m1: {min_valid_images: 20}}}"]
    run_study(load_study_config(yaml_path, overrides))
    report = (tmp_path / "out" / "report" / "index.html").read_text()
    assert "Recovery of planted features" in report and "Recovery — F1 and MCC" in report
    var = pd.read_parquet(tmp_path / "out" / "analysis" / "variance_decomposition.parquet")
    m1 = var[var["metric"] == "m1"].iloc[0]
    # the paper's Finding 1 with a known cause: M1 follows the planted footprints, not the SAE
    assert m1["eta2_backbone"] > 0.9 and m1["eta2_backbone"] > 10 * m1["eta2_config"]
    results = pd.read_parquet(tmp_path / "out" / "results" / "results.parquet")
    assert (results["metric"] == "recovery").sum() == 4
    # trained SAEs: M1 at the null on `null` (within 0.01 of −1/63), far above it on `spatial`
    m1 = results[results["metric"] == "m1"].groupby("backbone")["value"]
    assert (m1.max()["synth:null"] - (-1 / 63)) < 0.01 and (m1.min()["synth:null"] - (-1 / 63)) > -0.01
    assert m1.min()["synth:spatial"] > 0.3
