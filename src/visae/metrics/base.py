"""What every metric shares: its config and result types, the evaluation context, and the registry.

A metric sees the evaluation cache once, through the shared encoding pass (:mod:`visae.metrics.encode`):
``update(batch)`` is called for every group of encoded images, then ``finalize(pooled)`` with the
image-level (max-pooled) features collected in that same pass.
"""

from __future__ import annotations

from abc import ABC
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

from visae.config import FrozenConfig

if TYPE_CHECKING:
    from visae.cache.reader import ActivationCache
    from visae.metrics.encode import EncodedBatch, PooledFeatures
    from visae.sae.base import SAE


class MetricConfig(FrozenConfig):
    """Base of every metric's settings; defaults are the paper's Table 2."""


class MetricResult(BaseModel):
    """Base of every metric's typed output."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    metric: str = Field(description="registry name of the metric (m1 … m7, raw)")
    value: float | None = Field(description="the headline number; None when it could not be computed")
    higher_is_better: bool = Field(description="direction of the headline number")
    note: str = Field("", description="why a value is missing, or a caveat")


@dataclass
class EvalContext:
    """What a metric may look at besides the encoded stream."""

    sae: SAE
    cache: ActivationCache
    device: torch.device
    out_dir: Path | None = None
    """Where per-feature tables go (None: do not write them)."""
    sae_id: str = ""
    """Hash or path that identifies the SAE in results."""
    backbone: str = ""
    """Registry name of the backbone the SAE was trained on (for evaluator pairing)."""
    extras: dict[str, Any] = field(default_factory=dict)


class Metric(ABC):
    """One ViSAEBench metric. Subclasses set ``name``, ``config_cls`` and implement ``finalize``."""

    name: ClassVar[str]
    config_cls: ClassVar[type[MetricConfig]] = MetricConfig
    needs_pooled: ClassVar[bool] = False
    """True when finalize needs the image-level pooled features of the whole evaluation set."""
    needs_stream: ClassVar[bool] = True
    """False when the metric does not need the patch-level encoded stream at all."""

    def __init__(self, config: MetricConfig, ctx: EvalContext) -> None:
        self.config = config
        self.ctx = ctx

    def update(self, batch: EncodedBatch) -> None:  # noqa: B027 - optional hook
        """Consume one group of encoded images (default: nothing to do)."""

    def finalize(self, pooled: PooledFeatures | None) -> MetricResult:
        """Return the metric's result once the stream is exhausted."""
        raise NotImplementedError


METRICS: dict[str, type[Metric]] = {}


def register_metric(cls: type[Metric]) -> type[Metric]:
    """Class decorator: make a metric available to ``visae eval`` under ``cls.name``."""
    METRICS[cls.name] = cls
    return cls
