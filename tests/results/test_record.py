"""The results layer: one result-record shape for every writer, and records → tidy rows."""

from __future__ import annotations

import json
import math
from pathlib import Path

from visae import __version__
from visae.results.record import write_result_record
from visae.results.table import metric_rows, raw_rows, split_details


def test_record_shape(tmp_path: Path) -> None:
    path = write_result_record(tmp_path / "raw.json", "raw", 0.25, {"value": 0.25, "z": 3.0}, {"a": 1},
                               {"cache": "abc"}, {"total": 1.23456})
    rec = json.loads(path.read_text())
    assert list(rec) == ["metric", "value", "result", "config", "inputs", "seconds", "visae_version"]
    assert rec["seconds"] == {"total": 1.235} and rec["visae_version"] == __version__


def test_metric_rows_of_known_records() -> None:
    m4 = {"value": 0.8, "result": {"higher_is_better": True, "curve": {"1": 0.6, "8": 0.7}, "n_classes": 10}}
    assert metric_rows("m4", m4) == [("m4", 0.8, True), ("m4@k=1", 0.6, True), ("m4@k=8", 0.7, True),
                                     ("m4.n_classes", 10.0, None)]
    m7 = {"value": 0.1,
          "result": {"higher_is_better": False, "grid": [{"alpha": 0.7, "beta": 0.3, "rate": 0.2}]}}
    assert metric_rows("m7", m7) == [("m7", 0.1, False), ("m7:alpha=0.7:beta=0.3", 0.2, False)]
    head, details = split_details(raw_rows({"value": None, "result": {"z": 2.0}}, "bb", 11))
    assert list(head["metric"]) == ["raw"] and math.isnan(head["value"].iloc[0])
    assert list(details["metric"]) == ["raw.z"] and details["value"].iloc[0] == 2.0
    assert bool(head["higher_is_better"].iloc[0]) and details["family"].iloc[0] == "raw"
