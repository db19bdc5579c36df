"""Linear probes shared by M3, M4, M6 and M7: splits, standardization, ANOVA-F ranking, two fitting engines.

The probe is the paper's (Table 2, App. C): L2-regularized logistic regression, ``C = 1``, no class
weighting, multinomial for more than two classes. Two engines minimise the *same* objective,
``C · Σ_i logloss_i + ½‖W‖²`` (intercepts not penalized), selected by ``ProbeConfig.engine``:

- ``"sklearn"``: :class:`sklearn.linear_model.LogisticRegression` with ``solver="lbfgs"`` (the paper's CPU
  path);
- ``"torch"``: full-batch L-BFGS (``torch.optim.LBFGS``, strong-Wolfe line search) for multinomial probes and
  a damped Newton method for binary probes, on any device; suited to many classes and to GPUs;
- ``"auto"`` (default): scikit-learn below :data:`TORCH_MIN_CLASSES` classes (every binary probe, and every
  probe of the paper's small-class metrics), torch from there (ImageNet's 1000 classes).

Standardization (identical for every backbone, metric and engine): by default the probe inputs are the
pooled features as the evaluation pass produces them — activations and reconstructions in the SAE's
normalized input space (cache per-dimension mean subtracted, divided by the scalar std: paper App. C), codes
as they are — with no further per-column scaling, as in the paper and the authors' package. With
``ProbeConfig.standardize = true`` each probe input column is also centred and scaled by its mean and
population standard deviation *computed on the probe's training split only* (scikit-learn ``StandardScaler``
semantics; constant columns keep scale 1); that transform is then applied to every split and every input the
probe is applied to (so M3's reconstructions go through the raw training split's scaler).

One module per job; every name below is importable from ``visae.metrics.probes``:

- :mod:`~visae.metrics.probes.config`: :class:`ProbeConfig`, the engine choice;
- :mod:`~visae.metrics.probes.split`: the stratified train/test split;
- :mod:`~visae.metrics.probes.rows`: row-chunked reading of dense, CSR and :class:`RowSubset` inputs;
- :mod:`~visae.metrics.probes.anova`: ANOVA-F (multi-class, sparse, one-vs-rest) and the rankings;
- :mod:`~visae.metrics.probes.standardize`: the training-split :class:`Standardizer`;
- :mod:`~visae.metrics.probes.fit`: :class:`LinearProbe` and :func:`fit_probe`;
- :mod:`~visae.metrics.probes.engines`: the scikit-learn and torch engines;
- :mod:`~visae.metrics.probes.newton`: the batched Newton solver of binary probes;
- :mod:`~visae.metrics.probes.threads`: solver thread counts;
- :mod:`~visae.metrics.probes.scores`: AUC and F1.
"""

from visae.metrics.probes.anova import f_one_vs_rest, f_scores, rank_by_f, rank_features
from visae.metrics.probes.config import TORCH_MIN_CLASSES, ProbeConfig, probe_engine
from visae.metrics.probes.fit import LinearProbe, fit_probe
from visae.metrics.probes.newton import newton_binary
from visae.metrics.probes.rows import ArrayLike, RowSubset, take_columns
from visae.metrics.probes.scores import binary_auc, binary_f1, ovr_auc
from visae.metrics.probes.split import stratified_split
from visae.metrics.probes.standardize import Standardizer
from visae.metrics.probes.threads import ONE_THREAD_MACS, solver_thread_count, solver_threads

__all__ = [
    "ONE_THREAD_MACS", "TORCH_MIN_CLASSES", "ArrayLike", "LinearProbe", "ProbeConfig", "RowSubset",
    "Standardizer", "binary_auc", "binary_f1", "f_one_vs_rest", "f_scores", "fit_probe", "newton_binary",
    "ovr_auc", "probe_engine", "rank_by_f", "rank_features", "solver_thread_count", "solver_threads",
    "stratified_split", "take_columns",
]
