"""What every metric shares: its config and result types, the evaluation context, and the registry.

A metric sees the evaluation cache once, through the shared encoding pass (:mod:`visae.metrics.encode`):
``update(batch)`` is called for every group of encoded images, then ``finalize(pooled)`` with the
image-level (max-pooled) features collected in that same pass.
"""

from __future__ import annotations

import typing
from abc import ABC
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from visae.config import FrozenConfig
from visae.registry import Registry
from visae.uncertainty import BootstrapConfig, Interval

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
    ci_low: float | None = Field(None, description="lower end of the bootstrap interval of value")
    ci_high: float | None = Field(None, description="upper end of the bootstrap interval of value")
    ci_level: float | None = Field(None, description="two-sided coverage of [ci_low, ci_high]")
    ci_method: str = Field("", description="how the interval was computed (unit resampled, replicates), "
                           "or why there is none")

    def with_interval(self, interval: Interval | None, unit: str = "images") -> MetricResult:
        """A copy carrying ``interval`` (a percentile bootstrap over ``unit``) in the ci_* fields."""
        if interval is None:
            return self
        method = f"Poisson bootstrap over {unit}, {interval.n} replicates"
        if interval.note:
            method += f" ({interval.note})"
        return self.model_copy(update={"ci_low": interval.low, "ci_high": interval.high,
                                       "ci_level": interval.level, "ci_method": method})

    @model_validator(mode="after")
    def _reason(self) -> MetricResult:
        if self.value is None and not self.note:  # every metric gives its reason; this is the last resort
            self.note = f"{self.metric} could not be computed on this input (no reason was recorded)"
        return self


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
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    """Intervals beside each headline number (``n_boot = 0``: none)."""


ConfigT = TypeVar("ConfigT", bound=MetricConfig)


class Metric(ABC, Generic[ConfigT]):
    """One ViSAEBench metric: ``class M2Reconstruction(Metric[M2Config])`` sets ``name`` and implements
    ``finalize``; the type argument becomes ``config_cls`` and types ``self.config``."""

    name: ClassVar[str]
    config_cls: ClassVar[type[MetricConfig]] = MetricConfig
    needs_pooled: ClassVar[bool] = False
    """True when finalize needs the image-level pooled features of the whole evaluation set."""
    needs_stream: ClassVar[bool] = True
    """False when the metric does not need the patch-level encoded stream at all."""
    min_classes: ClassVar[int] = 0
    """Distinct image labels the evaluation set must hold (2 for a metric that fits class probes)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            args = typing.get_args(base) if typing.get_origin(base) is Metric else ()
            if args and isinstance(args[0], type) and issubclass(args[0], MetricConfig):
                cls.config_cls = args[0]

    def __init__(self, config: ConfigT, ctx: EvalContext) -> None:
        if not isinstance(config, self.config_cls):
            raise TypeError(f"{self.name}: expected a {self.config_cls.__name__}, got "
                            f"{type(config).__name__}")
        self.config: ConfigT = config
        self.ctx = ctx

    def update(self, batch: EncodedBatch) -> None:
        """Consume one group of encoded images (default: nothing to do)."""

    def finalize(self, pooled: PooledFeatures | None) -> MetricResult:
        """Return the metric's result once the stream is exhausted."""
        raise NotImplementedError


METRICS: Registry[type[Metric[Any]]] = Registry("metric")
"""Metric name → class; the paper's metrics are imported on first use, a plugin adds one with
:func:`register_metric`."""
METRICS.register_package("visae.metrics", [
    ("m1", "m1_spatial:M1Spatial", "spatial coherence of feature maps (Moran's I)"),
    ("raw", "raw_spatial:RawSpatial", "M1's statistic on the raw backbone channels (a baseline)"),
    ("m2", "m2_reconstruction:M2Reconstruction", "reconstruction FVU, L0, dead features"),
    ("m3", "m3_preservation:M3Preservation", "probe accuracy on reconstructions / on raw features"),
    ("m4", "m4_sparse_probing:M4SparseProbing", "one-vs-rest AUC of probes on the top-k SAE features"),
    ("m5", "m5_monosemanticity:M5Monosemanticity", "monosemanticity of top images, in an evaluator's space"),
    ("m6", "m6_cross_domain:M6CrossDomain", "cross-domain generalization on out-of-domain sets"),
    ("m7", "m7_absorption:M7Absorption", "probe-based feature absorption rate"),
    ("m5d", "m5d_discriminative:M5dDiscriminative", "M5 consistency × class discriminability (§5.5)"),
    ("recovery", "recovery:RecoveryMetric", "recovery of planted features on a synthetic cache (MCC, F1)"),
])

MetricClass = TypeVar("MetricClass", bound=type[Metric[Any]])


def register_metric(cls: MetricClass) -> MetricClass:
    """Class decorator: make a metric available to ``visae eval`` under ``cls.name`` (once)."""
    METRICS.register(cls.name, cls)
    return cls
