"""M3 — downstream preservation (paper §4.2, Table 2): acc(φ(â)) / acc(φ(a)) for one probe φ trained on raw
features.

Image features are max-pooled over patches (in the SAE's normalized input space). The evaluation cache is
split 80/20, stratified, seed 42; one multinomial logistic probe (lbfgs, C = 1, max_iter = 1000, no class
weights; inputs not rescaled per column unless ``probe.standardize`` is set, in which case the raw
training split's statistics are used for both, :mod:`visae.metrics.probes`) is
trained on the raw features of the training split and applied, unchanged, to the raw and to the
reconstructed features of the held-out split.

``whiten: pca|zca`` (App. C ablation, a switch separate from whitening before SAE training) whitens the
image-level features before the probe, with a whitening fitted on the raw features of the probe's training
split only (the probe's own input space; nothing of the held-out split leaks in), applied to raw and
reconstructed features alike.
"""

from __future__ import annotations

import typing
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from visae.cache.whitening import PROBE_WHITEN_HELP
from visae.metrics.base import Metric, MetricConfig, MetricResult, register_metric
from visae.metrics.encode import PooledFeatures
from visae.metrics.probes import ProbeConfig, fit_probe, stratified_split
from visae.uncertainty import BootstrapConfig, poisson_weights, ratio_interval


class M3Config(MetricConfig):
    """Settings for M3; defaults are the paper's Table 2."""

    test_size: float = Field(0.2, gt=0, lt=1,
                             description="held-out fraction, stratified (paper Table 2: 0.2)")
    seed: int = Field(42, description="split seed (paper Table 2: 42)")
    probe: ProbeConfig = Field(default_factory=lambda: ProbeConfig(max_iter=1000),
                               description="the probe (paper Table 2: lbfgs, C = 1, max_iter = 1000)")
    whiten: Literal["none", "pca", "zca"] = Field("none", description=PROBE_WHITEN_HELP)


class M3Result(MetricResult):
    """M3: ``value`` = acc(recon) / acc(raw) on the held-out split (higher: more preserved)."""

    acc_raw: float = Field(description="probe accuracy on raw held-out features")
    acc_recon: float = Field(description="the same probe's accuracy on reconstructed held-out features")
    n_train: int = Field(description="images the probe was trained on")
    n_test: int = Field(description="held-out images")
    n_classes: int = Field(description="classes in the training split")
    probe_converged: bool = Field(description="whether the probe's solver met its tolerance within max_iter")


def whiten_features(kind: str, acts_nd: np.ndarray, recon_nd: np.ndarray,
                    train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw and reconstructed features whitened with the raw training rows' mean and covariance."""
    from visae.cache.whitening import whiten_rows, whitening_of_rows

    w = whitening_of_rows(kind, acts_nd[train])
    return (whiten_rows(w, np.asarray(acts_nd, np.float64)), whiten_rows(w, np.asarray(recon_nd, np.float64)))


def compute_m3(acts_nd: np.ndarray, recon_nd: np.ndarray, labels_n: np.ndarray,
               config: M3Config | None = None, bootstrap: BootstrapConfig | None = None) -> M3Result:
    """M3 on image-level raw features ``acts_nd`` and reconstructions ``recon_nd`` (same rows, same labels);
    with ``bootstrap``, an interval over the held-out images (the probe is not refitted)."""
    config = config or M3Config()
    train, test = stratified_split(labels_n, config.test_size, config.seed)
    if config.whiten != "none":
        acts_nd, recon_nd = whiten_features(config.whiten, acts_nd, recon_nd, train)
    probe = fit_probe(acts_nd[train], labels_n[train], config.probe)
    right_raw = probe.predict(acts_nd[test]) == labels_n[test]
    right_recon = probe.predict(recon_nd[test]) == labels_n[test]
    acc_raw, acc_recon = float(right_raw.mean()), float(right_recon.mean())
    value = acc_recon / acc_raw if acc_raw > 0 else None
    result = M3Result(metric="m3", value=value, higher_is_better=True,
                      note="" if value is not None
                      else "the raw probe has accuracy 0: the ratio is undefined",
                      acc_raw=acc_raw, acc_recon=acc_recon, n_train=len(train), n_test=len(test),
                      n_classes=len(probe.classes), probe_converged=probe.converged)
    if bootstrap is None or bootstrap.n_boot == 0 or value is None:
        return result
    w_nb = poisson_weights(test, bootstrap.n_boot, bootstrap.seed).astype(np.float64)
    interval = ratio_interval(right_recon @ w_nb, right_raw @ w_nb, bootstrap.level)
    return typing.cast(M3Result, result.with_interval(interval, unit="held-out images"))


@register_metric
class M3Preservation(Metric[M3Config]):
    """Registered as ``m3``."""

    name: ClassVar[str] = "m3"
    needs_pooled: ClassVar[bool] = True
    min_classes: ClassVar[int] = 2  # fits class probes
    needs_stream: ClassVar[bool] = False

    def finalize(self, pooled: PooledFeatures | None) -> MetricResult:
        """Fit the raw probe and score raw and reconstructed held-out features."""
        if pooled is None:
            raise ValueError("m3: needs the pooled features of the evaluation pass")
        return compute_m3(pooled.acts_nd, pooled.recon_nd, pooled.labels_n, self.config, self.ctx.bootstrap)
