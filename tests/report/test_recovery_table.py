"""The report's recovery table (synthetic studies): one row per family × width × K, F1/MCC/… per preset."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from visae.report.data import NotEnoughData, ReportData
from visae.report.tables import has_recovery, table_recovery


def _data(rows: list[tuple[str, str, float, int, str, float]]) -> ReportData:
    df = pd.DataFrame(rows, columns=["backbone", "family", "expansion", "k", "metric", "value"]).assign(
        layer=0, sae_id="x")
    main = df[~df["metric"].str.contains(r"\.")]
    det = df[df["metric"].str.contains(r"\.")]
    return ReportData(root=Path("."), results=main, details=det, analysis={}, family="batchtopk", layer=0,
                      labels={"synth:null": "null"})


def test_recovery_table_per_configuration_and_preset() -> None:
    rows = [("synth:spatial", "batchtopk", 1.0, 2, "recovery", 0.8),
            ("synth:spatial", "batchtopk", 1.0, 2, "recovery.mcc", 0.9),
            ("synth:null", "batchtopk", 1.0, 2, "recovery", 0.6),
            ("synth:null", "batchtopk", 1.0, 2, "recovery.dead", 3.0),
            ("synth:spatial", "topk", 2.0, 4, "recovery", 0.5),
            ("synth:spatial", "batchtopk", 1.0, 2, "m1", 0.4)]
    d = _data(rows)
    assert has_recovery(d)
    t = table_recovery(d)
    assert list(t[["family", "width", "K"]].itertuples(index=False, name=None)) == [("batchtopk", "1×", 2),
                                                                                    ("topk", "2×", 4)]
    first = t.iloc[0]
    assert first["synth:spatial F1"] == "0.800" and first["synth:spatial MCC"] == "0.900"
    assert first["null F1"] == "0.600" and first["null dead"] == "3" and first["null MCC"] == "—"
    assert "synth:spatial absorption" not in t  # no hierarchy: no absorption column


def test_no_recovery_rows() -> None:
    d = _data([("b", "batchtopk", 1.0, 2, "m1", 0.4)])
    assert not has_recovery(d)
    with pytest.raises(NotEnoughData, match="no recovery results"):
        table_recovery(d)
