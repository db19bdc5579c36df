"""Headline metric names (the seven ViSAEBench metrics) and how the report names them."""

from __future__ import annotations

HEADLINE: list[str] = ["m1", "m2", "m3", "m4", "m5", "m6", "m7"]
"""The headline metrics, in paper order."""

METRIC_NAMES: dict[str, str] = {
    "m1": "M1 Moran's I", "m2": "M2 FVU", "m3": "M3 preservation", "m4": "M4 sparse probing",
    "m5": "M5 monosemanticity", "m6": "M6 cross-domain", "m7": "M7 absorption", "raw": "raw Moran's I",
    "m5d": "M5d discriminative monosemanticity", "stability": "seed stability"}
"""Display name of each headline metric and of the raw-backbone diagnostic."""
