"""The new families end to end in a real tiny study: trained in the grid, evaluated with every metric,
compared across families (Table 9 with its convergence filter), reported."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from visae.results.table import read_results
from visae.study.config import load_study_config
from visae.study.run import run_study
from visae.study.testing import TINY_STUDY


@pytest.mark.slow
def test_new_families_in_a_tiny_study(tmp_path: Path) -> None:
    saes = [{"name": "main", "family": "batchtopk", "expansions": [2], "ks": [4]},
            {"name": "mat", "family": "matryoshka", "expansions": [2], "ks": [4]},
            {"name": "gated", "family": "gated", "expansions": [2], "ks": [4]},
            {"name": "arch", "family": "archetypal", "expansions": [2], "ks": [4],
             "hparams": {"n_centroids": 32}}]
    train = {**TINY_STUDY["train"], "ortho_coeff": 0.1}
    study = {**TINY_STUDY, "saes": saes, "out_dir": "out", "train": train}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(study))
    cfg = load_study_config(path)
    plan, summary = run_study(cfg)
    assert summary is not None and summary.ok, summary.describe(plan)
    out = Path(cfg.out_dir)
    df = read_results(out)
    sae_rows = df[df["family"].isin(["matryoshka", "gated", "archetypal"])]
    for family in ("matryoshka", "gated", "archetypal"):
        got = set(sae_rows[sae_rows["family"] == family]["metric"])
        assert {"m1", "m2", "m3", "m4", "m5", "m6"} <= got, (family, got)
    consistency = pd.read_parquet(out / "analysis" / "rank_consistency.parquet")
    assert {"matryoshka", "gated", "archetypal"} <= set(consistency["family_b"])
    assert consistency[consistency["family_b"] == "matryoshka"]["n"].min() == 2  # both tiny backbones
    excluded = pd.read_parquet(out / "analysis" / "rank_consistency_excluded.parquet")
    assert set(excluded["family"]) <= {"gated"}  # only a target-L0 family is ever filtered
    gated = consistency[consistency["family_b"] == "gated"]
    if len(excluded):  # each gated configuration that missed K=4 by more than 2 is listed, with its L0
        assert ((excluded["l0"] - 4).abs() > 2).all()
        assert gated["n"].max() < 2 and "convergence filter" in " ".join(gated["note"].astype(str))
    notes = (out / "analysis" / "analysis.md").read_text()
    assert f"rank consistency: {len(excluded)} configuration(s) outside |L0 − target| ≤ 2 left out" in notes
