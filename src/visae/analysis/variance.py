"""Two-way variance decomposition of each metric over backbone and hyper-parameter configuration (App. B).

Additive model without interaction, ``value ~ C(backbone) + C(config)`` with ``config`` = expansion × K as
one factor (12 levels in the paper): with one SAE per cell the interaction is not estimable and is the
residual. When a study trains several seeds per configuration (``seeds:`` in an SAE block), cells hold
replicates and the model gains the interaction, ``+ C(backbone):C(config)``: the residual is then the
within-cell spread, i.e. seed noise (``eta2_seed``), separated from the hyper-parameter effect. Sums of
squares are sequential (Type I, backbone first), which is what ``statsmodels``' ``anova_lm`` reports by
default; on a complete grid they equal Type II and III. η² = SS_factor / SS_total.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from visae.results.schema import parse_task_metric, with_config

COLUMNS = ["metric", "n_obs", "n_backbones", "n_configs", "eta2_backbone", "eta2_config", "eta2_resid",
           "ss_backbone", "ss_config", "ss_resid", "ss_total", "df_backbone", "df_config", "df_resid",
           "f_backbone", "p_backbone", "f_config", "p_config", "n_seeds", "eta2_interaction", "eta2_seed",
           "ss_interaction", "df_interaction", "note"]


def _dummies(levels: np.ndarray) -> np.ndarray:
    """Treatment-coded indicator columns (first level dropped)."""
    uniq = np.unique(levels)
    return (levels[:, None] == uniq[None, 1:]).astype(float)


def _interaction(b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Products of the backbone and configuration indicator columns (the interaction's design)."""
    db, dc = _dummies(b), _dummies(c)
    return (db[:, :, None] * dc[:, None, :]).reshape(len(b), -1)


def _rss(design: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    """Residual sum of squares and rank of a least-squares fit."""
    coef, _, rank, _ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    return float(resid @ resid), int(rank)


def anova_two_way(values: Sequence[float], backbone: Sequence[str],
                  config: Sequence[str]) -> dict[str, object]:
    """η², sums of squares, F and p of the additive two-way model for one metric.

    Returns every key of :data:`COLUMNS` except ``metric``; a quantity that cannot be computed is None and
    ``note`` says why (a factor with one level, no residual degrees of freedom, zero total variance).
    """
    y = np.asarray(values, dtype=float)
    b = np.asarray(backbone, dtype=object)
    c = np.asarray(config, dtype=object)
    ok = np.isfinite(y)
    y, b, c = y[ok], b[ok], c[ok]
    n_b, n_c = len(np.unique(b)), len(np.unique(c))
    out: dict[str, object] = {k: None for k in COLUMNS if k != "metric"}
    out.update(n_obs=len(y), n_backbones=n_b, n_configs=n_c)
    notes: list[str] = []
    if len(y) < 2:
        out["note"] = f"{len(y)} observation(s); nothing to decompose"
        return out
    ones = np.ones((len(y), 1))
    ss_total = float(((y - y.mean()) ** 2).sum())
    x_b = np.hstack([ones, _dummies(b)])
    x_bc = np.hstack([x_b, _dummies(c)])
    rss_b, rank_b = _rss(x_b, y)
    rss_bc, rank_bc = _rss(x_bc, y)
    ss_b, ss_c, ss_r = ss_total - rss_b, rss_b - rss_bc, rss_bc
    df_b, df_c, df_r = rank_b - 1, rank_bc - rank_b, len(y) - rank_bc
    cells = pd.Series(1, index=pd.MultiIndex.from_arrays([b, c])).groupby(level=[0, 1]).size()
    out["n_seeds"] = int(cells.max())
    if cells.max() > 1:  # replicates: interaction estimable, the residual is within-cell (seed) noise
        x_full = np.hstack([x_bc, _interaction(b, c)])
        rss_full, rank_full = _rss(x_full, y)
        out.update(ss_interaction=rss_bc - rss_full, df_interaction=rank_full - rank_bc)
        ss_r, df_r = rss_full, len(y) - rank_full
    out.update(ss_total=ss_total, ss_resid=ss_r, df_resid=df_r)
    if ss_total <= 0:
        out["note"] = "zero total variance; η² is undefined"
        return out
    out["eta2_resid"] = ss_r / ss_total
    if out["ss_interaction"] is not None:
        out["eta2_interaction"] = float(out["ss_interaction"]) / ss_total  # type: ignore[arg-type]
        out["eta2_seed"] = ss_r / ss_total
    else:
        notes.append("one SAE per (backbone, configuration): seed noise is part of the residual")
    for name, ss, df, levels in (("backbone", ss_b, df_b, n_b), ("config", ss_c, df_c, n_c)):
        if levels < 2:
            notes.append(f"{name} has {levels} level(s); its effect is not estimable")
            continue
        out[f"ss_{name}"], out[f"df_{name}"], out[f"eta2_{name}"] = ss, df, ss / ss_total
        if df_r > 0 and df > 0 and ss_r > 0:
            f = (ss / df) / (ss_r / df_r)
            out[f"f_{name}"], out[f"p_{name}"] = f, float(stats.f.sf(f, df, df_r))
    if df_r <= 0:
        notes.append("no residual degrees of freedom; F and p are not computable")
    out["note"] = "; ".join(notes)
    return out


def _without_seed(sae_config: object) -> str:
    """An SAE's full settings (``sae_config`` JSON) with its seed left out; '' when unknown."""
    import json

    if not isinstance(sae_config, str) or not sae_config:
        return ""
    try:
        settings = json.loads(sae_config)
    except ValueError:
        return sae_config
    if not isinstance(settings, dict):
        return sae_config
    settings.pop("seed", None)
    return json.dumps(settings, sort_keys=True)


def settings_factor(data: pd.DataFrame) -> pd.Series:
    """The configuration factor of the decomposition: expansion × K, told apart further by the SAE block and
    every other setting (learning rate, steps, hyper-parameters …) but never by the seed. Only the ``seeds:``
    of one block are replicates of a cell; blocks that differ in any setting are different configurations."""
    label = data["config"].astype(str)
    parts = [label]
    if "grid" in data.columns:
        parts.append(data["grid"].fillna("").astype(str))
    if "sae_config" in data.columns:
        parts.append(data["sae_config"].map(_without_seed))
    keys = pd.Series(["|".join(p) for p in zip(*parts, strict=True)], index=data.index, dtype=object)
    # keep the short label where a configuration has one setting: tables and notes read as before
    distinct = keys.groupby(label).transform("nunique")
    return label.where(distinct <= 1, keys)


def variance_decomposition(df: pd.DataFrame, metrics: Sequence[str] | None = None,
                           backbones: Sequence[str] | None = None) -> pd.DataFrame:
    """Table 3: one row per metric with η²_backbone, η²_config (expansion × K) and η²_residual.

    ``df`` must hold one SAE family and layer (see :func:`visae.results.schema.select`); rows without a
    configuration (backbone-level raw-task numbers) and ``:raw`` task rows are left out, since they carry no
    SAE hyper-parameters. ``backbones`` restricts the decomposition to a subset (§5.7's non-MAE check).
    """
    data = with_config(df)
    data = data[data["config"] != ""]
    data = data.assign(config=settings_factor(data))
    if backbones is not None:
        data = data[data["backbone"].isin(list(backbones))]
    names = list(metrics) if metrics is not None else sorted(
        m for m in data["metric"].unique() if not ((p := parse_task_metric(m)) and p.features == "raw"))
    rows = []
    for metric in names:
        sub = data[data["metric"] == metric]
        rows.append({"metric": metric, **anova_two_way(sub["value"].to_numpy(), sub["backbone"].to_numpy(),
                                                       sub["config"].to_numpy())})
    return pd.DataFrame(rows, columns=COLUMNS)
