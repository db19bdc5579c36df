"""The study's tidy results table, as every analysis reads it, and its validator.

One row per (SAE or backbone) × metric. Required columns:

============  =======  ==========================================================================
column        dtype    meaning
============  =======  ==========================================================================
backbone      str      backbone registry name (``dinov2-b14``, ``clip-b16`` …)
family        str      SAE family (``batchtopk``, ``jumprelu`` …); ``raw`` or empty for rows that do
                       not depend on an SAE (raw-feature task numbers)
expansion     number   dictionary size / d_in (8, 16, 32); NaN for backbone-level rows
k             number   sparsity K (BatchTopK) or target L0 (JumpReLU); NaN for backbone-level rows
layer         int      0-based block the SAE was trained on (paper: 11)
metric        str      metric name, see below
value         float    the metric's headline number (NaN when it could not be computed)
============  =======  ==========================================================================

Optional columns: ``higher_is_better`` (bool; otherwise :func:`higher_is_better` decides from the name),
``sae_id``, ``l0``, anything else (kept, ignored).

Metric names:

* SAE metrics: ``m1`` … ``m7`` (headline numbers: M1 mean Moran's I, M2 FVU, M3 preservation, M4 AUC at
  k = 128, M5 normalized monosemanticity, M6 iNat preservation, M7 absorption), ``raw`` (raw-backbone
  Moran's I), or any other name a metric writes (``m4@k=32`` …).
* Downstream tasks: ``task:<task>:<features>`` with ``<features>`` one of ``raw``, ``codes``, ``recon``,
  e.g. ``task:retrieval_r1:raw``, ``task:segmentation_miou:codes``, ``task:cub_acc:raw``,
  ``task:inat_sparse_auc128:codes``. A ``:raw`` row is a property of the backbone alone; it may be written
  once per backbone (NaN expansion and k) or repeated on every SAE row — per-backbone means are the same.
* M7 sensitivity grid (App. N): ``m7:alpha=<α>:beta=<β>``, e.g. ``m7:alpha=0.7:beta=0.3``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import pandas as pd

from visae.errors import StudyError

REQUIRED_COLUMNS: tuple[str, ...] = ("backbone", "family", "expansion", "k", "layer", "metric", "value")
TASK_PREFIX = "task:"
FEATURE_KINDS: tuple[str, ...] = ("raw", "codes", "recon")
LOWER_IS_BETTER: frozenset[str] = frozenset({"m2", "m7"})
"""Headline metrics where smaller is better (M2 FVU, M7 absorption); every task is higher-is-better."""

_M7_GRID = re.compile(r"^m7:alpha=(?P<alpha>[0-9.eE+-]+):beta=(?P<beta>[0-9.eE+-]+)$")


@dataclass(frozen=True)
class TaskMetric:
    """A parsed ``task:<task>:<features>`` metric name."""

    task: str
    features: str

    @property
    def name(self) -> str:
        """The metric name this was parsed from."""
        return task_metric(self.task, self.features)


def task_metric(task: str, features: str) -> str:
    """The metric name of a downstream task on one feature kind (``task:retrieval_r1:codes``)."""
    if features not in FEATURE_KINDS:
        raise ValueError(f"features must be one of {FEATURE_KINDS}, got {features!r}")
    return f"{TASK_PREFIX}{task}:{features}"


def parse_task_metric(metric: str) -> TaskMetric | None:
    """``task:<task>:<features>`` → TaskMetric; None for any other metric name."""
    if not metric.startswith(TASK_PREFIX):
        return None
    body = metric[len(TASK_PREFIX):]
    task, sep, features = body.rpartition(":")
    if not sep or not task or features not in FEATURE_KINDS:
        return None
    return TaskMetric(task, features)


def m7_grid_metric(alpha: float, beta: float) -> str:
    """Metric name of M7 absorption at one (α, β) setting (App. N)."""
    return f"m7:alpha={alpha:g}:beta={beta:g}"


def parse_m7_grid_metric(metric: str) -> tuple[float, float] | None:
    """``m7:alpha=a:beta=b`` → (a, b); None for any other name."""
    m = _M7_GRID.match(metric)
    return (float(m["alpha"]), float(m["beta"])) if m else None


def higher_is_better(metric: str) -> bool:
    """Direction of a metric by name: M2, M7 and their variants are lower-is-better, all else higher."""
    if parse_task_metric(metric) is not None:
        return True
    base = re.split(r"[:@]", metric, maxsplit=1)[0].lower()
    return base not in LOWER_IS_BETTER


def validate_results(df: pd.DataFrame, source: str = "results table") -> pd.DataFrame:
    """Check the required columns and types; return a normalized copy (str names, float numbers).

    Raises StudyError naming every missing column, or a column whose values have the wrong type.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise StudyError(
            f"{source}: missing column(s) {', '.join(missing)}; the tidy results table needs "
            f"{', '.join(REQUIRED_COLUMNS)} (see visae.results.schema)")
    out = df.copy()
    for col in ("backbone", "family", "metric"):
        out[col] = out[col].fillna("").astype(str)
    for col in ("expansion", "k", "layer", "value"):
        try:
            out[col] = pd.to_numeric(out[col], errors="raise").astype(float)
        except (TypeError, ValueError) as e:
            raise StudyError(f"{source}: column {col!r} must be numeric ({e})") from None
    if (out["backbone"] == "").any():
        raise StudyError(f"{source}: {int((out['backbone'] == '').sum())} row(s) have no backbone")
    return out


def config_label(expansion: float, k: float) -> str:
    """The hyper-parameter configuration factor (expansion × K as one level), e.g. ``16x-k128``."""
    if math.isnan(expansion) or math.isnan(k):
        return ""
    return f"{expansion:g}x-k{k:g}"


def with_config(df: pd.DataFrame) -> pd.DataFrame:
    """A copy with a ``config`` column (``16x-k128``; empty for backbone-level rows)."""
    out = df.copy()
    out["config"] = [config_label(e, k) for e, k in zip(out["expansion"], out["k"], strict=True)]
    return out


def select(df: pd.DataFrame, family: str | None = None, layer: int | None = None,
           backbones: list[str] | None = None) -> pd.DataFrame:
    """Rows of one SAE family and layer (and backbones); raw-task rows of that layer are kept for any family.

    ``None`` keeps every value of that column.
    """
    keep = pd.Series(True, index=df.index)
    if family is not None:
        is_raw_task = df["metric"].map(lambda m: (p := parse_task_metric(m)) is not None
                                       and p.features == "raw")
        keep &= (df["family"] == family) | is_raw_task
    if layer is not None:
        keep &= df["layer"] == layer
    if backbones is not None:
        keep &= df["backbone"].isin(backbones)
    return df[keep]


def primary_slice(df: pd.DataFrame) -> tuple[str | None, int | None]:
    """The study's main (family, layer): ``batchtopk`` if present, else the most frequent family; the layer
    with the most rows of that family. None where the column has no usable value."""
    sae_rows = df[df["family"].isin(["", "raw"]) == False]  # noqa: E712 - pandas elementwise
    family: str | None = None
    if len(sae_rows):
        counts = sae_rows["family"].value_counts()
        family = "batchtopk" if "batchtopk" in counts.index else str(counts.index[0])
        sae_rows = sae_rows[sae_rows["family"] == family]
    pool = sae_rows if len(sae_rows) else df
    layers = pool["layer"].dropna()
    layer = int(layers.value_counts().index[0]) if len(layers) else None
    return family, layer
