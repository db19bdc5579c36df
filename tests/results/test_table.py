"""Result records → tidy rows: the headline row carries the record's interval and the SAE's seed."""

from __future__ import annotations

import json
import math
from pathlib import Path

from visae.results.table import raw_rows, sae_rows

SAE = {"sae_id": "abc", "backbone": "bb", "family": "batchtopk", "expansion": 8, "k": 64, "layer": 11,
       "grid": "main", "train": {}, "seed": 3}


def test_headline_row_carries_interval_and_seed(tmp_path: Path) -> None:
    record = {"metric": "m2", "value": 0.4,
              "result": {"metric": "m2", "value": 0.4, "higher_is_better": False,
                                                        "mean_l0": 12.0, "ci_low": 0.35, "ci_high": 0.46,
                                                        "ci_level": 0.95, "ci_method": "Poisson bootstrap"}}
    (tmp_path / "m2.json").write_text(json.dumps(record))
    rows = {r["metric"]: r for r in sae_rows(tmp_path, SAE)}
    assert (rows["m2"]["ci_low"], rows["m2"]["ci_high"], rows["m2"]["seed"]) == (0.35, 0.46, 3.0)
    assert math.isnan(rows["m2.mean_l0"]["ci_low"])  # secondary numbers carry no interval
    assert "m2.ci_low" not in rows and "m2.ci_level" not in rows  # interval fields are not details
    assert json.loads(rows["m2"]["sae_config"])["seed"] == 3


def test_records_without_interval_give_nan() -> None:
    rows = raw_rows({"metric": "raw", "value": 0.3, "result": {"value": 0.3}}, "bb", 11)
    assert rows[0]["metric"] == "raw" and math.isnan(rows[0]["ci_low"]) and math.isnan(rows[0]["seed"])
