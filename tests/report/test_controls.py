"""The report marks control backbones (random weights, ``shuffled:``) wherever it names a backbone."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from visae.backbones.shuffled import CONTROL
from visae.report.data import ReportData, control_backbones


def test_controls_come_from_the_registry() -> None:
    found = control_backbones(["dinov2-s14-offline", "random-vit-s14", "shuffled:dinov2-s14-offline",
                               "nonsense:"])
    assert set(found) == {"random-vit-s14", "shuffled:dinov2-s14-offline"}
    assert found["shuffled:dinov2-s14-offline"] == CONTROL and "random weights" in found["random-vit-s14"]


def test_labels_mark_controls_once(tmp_path: Path) -> None:
    names = ["dinov2-s14-offline", "random-vit-s14", "shuffled:dinov2-s14-offline"]
    d = ReportData(root=tmp_path, results=pd.DataFrame(), details=pd.DataFrame(), analysis={}, family=None,
                   layer=None, labels={"random-vit-s14": "random ViT (control: random weights)"},
                   controls=control_backbones(names))
    assert d.label("dinov2-s14-offline") == "dinov2-s14-offline"
    assert d.label("shuffled:dinov2-s14-offline") == "shuffled:dinov2-s14-offline [control]"
    assert d.label("random-vit-s14") == "random ViT (control: random weights)"  # its name says so already
