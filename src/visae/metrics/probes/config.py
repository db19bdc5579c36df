"""The probe's settings (:class:`ProbeConfig`) and the choice of fitting engine."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from visae.config import FrozenConfig
from visae.device import check_device_string


class ProbeConfig(FrozenConfig):
    """How a logistic-regression probe is fitted (paper Table 2 / App. C defaults)."""

    engine: Literal["auto", "sklearn", "torch"] = Field(
        "auto", description="'sklearn' (LogisticRegression, lbfgs; the paper's CPU path), 'torch' "
        "(full-batch L-BFGS / Newton on the selected device; same objective) or 'auto': sklearn for binary "
        "probes and fewer than TORCH_MIN_CLASSES (100) classes, torch from there (the measured crossover)")
    C: float = Field(1.0, gt=0,
                     description="inverse L2 strength: objective C·Σ logloss + ½‖W‖² (paper App. C: 1.0)")
    max_iter: int = Field(1000, ge=1,
                          description="solver iteration cap (paper Table 2: 1000 for M3, 500 for M4/M6/M7)")
    tol: float = Field(1e-4, gt=0,
                       description="convergence tolerance on the gradient (sklearn's default 1e-4)")
    standardize: bool = Field(
        False,
        description="also apply a StandardScaler fitted on the probe's training split to every input of the "
        "probe (default off: inputs are already in the cache-normalized space of paper App. C, as in "
        "the paper)")
    device: str = Field("auto", description="torch engine only: 'auto', 'cpu', 'cuda', 'cuda:1', 'mps'")
    threads: int | None = Field(
        None, ge=1,
        description="CPU threads of the solver's BLAS/OpenMP calls (torch: intra-op threads); None: one "
        "thread for small probes (below ONE_THREAD_MACS multiply-adds per pass, n·d·classes), the "
        "libraries' default above. Changes the speed only: the arithmetic is the same")

    _device = field_validator("device")(check_device_string)


TORCH_MIN_CLASSES = 100
"""``engine="auto"`` fits multinomial probes of at least this many classes with the torch engine. Measured
(``benchmarks/probes.py --dim 128``, 2-core CPU, one run): torch took 0.41× sklearn's speed at 10 classes,
1.32× at 100 and 1.53× at 1000, with accuracy within 1 point and AUC within 0.001; on a GPU the gap
grows."""


def probe_engine(config: ProbeConfig, n_classes: int) -> Literal["sklearn", "torch"]:
    """The engine that fits a probe of ``n_classes`` classes under ``config`` (resolves ``"auto"``)."""
    if config.engine != "auto":
        return config.engine
    return "torch" if n_classes >= TORCH_MIN_CLASSES else "sklearn"
