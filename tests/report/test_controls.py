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


def test_name_lists_in_tables_use_display_names(tmp_path: Path) -> None:
    from visae.report.tables import _with_labels

    names = ["dinov2-s14-offline", "random-vit-s14", "shuffled:dinov2-s14-offline"]
    d = ReportData(root=tmp_path, results=pd.DataFrame({"backbone": names}), details=pd.DataFrame(),
                   analysis={}, family=None, layer=None, labels={"dinov2-s14-offline": "DINOv2"},
                   controls=control_backbones(names))
    t = pd.DataFrame({"ranking_a": ["shuffled:dinov2-s14-offline, dinov2-s14-offline, random-vit-s14"],
                      "lowest_lift": ["dinov2-s14-offline 0.95"]})
    out = _with_labels(d, t, ["ranking_a", "lowest_lift"])
    assert out["ranking_a"][0] == ("shuffled:dinov2-s14-offline [control], DINOv2, random-vit-s14 [control]")
    assert out["lowest_lift"][0] == "DINOv2 0.95"
