"""What the report shows of individual features, computed from SAEs and their evaluation folders:

- :func:`activation_grid` (Fig. 5): per backbone, on the SAE of the main slice nearest 16× K=192, the
  evaluable feature whose Moran's I is closest to the mean and one from the top 5 %, with top images;
- :func:`browser_entries` (the feature browser): per SAE, the top features by Moran's I, M5 and frequency.

Both return JSON-ready dicts (images as base64 PNG strips); the report only lays them out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from visae.features.scan import FeatureScan, ImageLookup, feature_strips, scan_features
from visae.results.layout import M1_FEATURES, M5_FEATURES

ROLES = ("mean-representative", "top 5 % Moran's I")


@dataclass
class SAEView:
    """One SAE to view: its folders and its record (sae_id, backbone, layer, family, expansion, k)."""

    record: Mapping[str, Any]
    sae_dir: Path
    eval_dir: Path
    """Its evaluation folder (m1.json, m1_features.parquet, m5_features.parquet)."""
    cache_dir: Path
    """The activation cache it was evaluated on."""

    def open(self) -> tuple[Any, Any]:
        """The SAE and its evaluation cache."""
        from visae.cache.reader import open_cache
        from visae.sae.checkpoint import load_sae

        return load_sae(self.sae_dir), open_cache(self.cache_dir)


class Scans:
    """scan_features once per (SAE, n_top) within one job."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._done: dict[tuple[str, int], FeatureScan] = {}

    def get(self, view: SAEView, sae: Any, cache: Any, n_top: int) -> FeatureScan:
        """The scan of ``view``'s SAE."""
        key = (str(view.record["sae_id"]), n_top)
        if key not in self._done:
            self._done[key] = scan_features(sae, cache, self.device, n_top=n_top)
        return self._done[key]


def _pick(views: Sequence[SAEView], backbone: str, family: str | None, layer: int | None,
          target: tuple[float, float] = (16, 192)) -> SAEView | None:
    cands = [v for v in views if v.record["backbone"] == backbone and v.record.get("family") == family
             and v.record.get("layer") == layer and (v.eval_dir / M1_FEATURES).exists()]
    if not cands:
        return None
    return min(cands, key=lambda v: (abs(math.log(v.record["expansion"] / target[0]))
                                     + abs(math.log(v.record["k"] / target[1]))))


def _evaluable_moran(view: SAEView) -> pd.DataFrame:
    m1 = json.loads((view.eval_dir / "m1.json").read_text(encoding="utf-8"))
    min_valid = int(m1.get("config", {}).get("min_valid_images", 50))
    t = pd.read_parquet(view.eval_dir / M1_FEATURES)
    return t[(t["n_valid_images"] >= min_valid) & np.isfinite(t["mean_I"])]


def _grid_features(t: pd.DataFrame) -> tuple[int, int]:
    """(mean-representative feature, top-5 % feature nearest the top group's median)."""
    mean_i = float(t["mean_I"].mean())
    rep = int(t.loc[(t["mean_I"] - mean_i).abs().idxmin(), "feature"])
    top = t[t["mean_I"] >= float(t["mean_I"].quantile(0.95))]
    high = int(top.loc[(top["mean_I"] - float(top["mean_I"].median())).abs().idxmin(), "feature"])
    return rep, high


def activation_grid(views: Sequence[SAEView], backbones: Sequence[str], family: str | None, layer: int | None,
                    scans: Scans, n_top: int = 5) -> dict[str, Any]:
    """Fig. 5 cells per backbone: ``{backbone: {"sae": {...}, "features": [{role, feature, moran,
    img}]}}``."""
    cells: dict[str, Any] = {}
    for b in backbones:
        view = _pick(views, b, family, layer)
        if view is None:
            continue
        t = _evaluable_moran(view)
        if t.empty:
            continue
        rep, high = _grid_features(t)
        sae, cache = view.open()
        scan = scans.get(view, sae, cache, n_top)
        strips = feature_strips(sae, cache, scan, [rep, high], scans.device, ImageLookup(cache))
        scores = dict(zip(t["feature"].astype(int), t["mean_I"].astype(float), strict=True))
        rec = view.record
        cells[b] = {"sae": {k: rec[k] for k in ("sae_id", "family", "expansion", "k")},
                    "features": [{"role": role, "feature": f, "moran": scores[f], "img": strips.get(f, "")}
                                 for role, f in zip(ROLES, (rep, high), strict=True)]}
    return cells


def _feature_column(path: Path, column: str, d_sae: int) -> np.ndarray:
    out = np.full(d_sae, np.nan)
    if path.exists():
        t = pd.read_parquet(path)
        if len(t):
            out[t["feature"].to_numpy(dtype=int)] = t[column].to_numpy(dtype=float)
    return out


def _rounded(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 4)


def browser_entry(view: SAEView, scans: Scans, per_key: int = 64, n_top: int = 5,
                  size: int = 56) -> dict[str, Any]:
    """One SAE of the feature browser: its top features by Moran's I, M5 and frequency, with image strips."""
    sae, cache = view.open()
    scan = scans.get(view, sae, cache, n_top)
    moran = _feature_column(view.eval_dir / M1_FEATURES, "mean_I", sae.d_sae)
    ms = _feature_column(view.eval_dir / M5_FEATURES, "ms", sae.d_sae)
    chosen: list[int] = []
    for key in (moran, ms, scan.frequency_f):
        valid = np.where(np.isfinite(key) & (scan.frequency_f > 0))[0]
        order = valid[np.argsort(-key[valid], kind="stable")][:per_key]
        chosen.extend(int(f) for f in order if int(f) not in chosen)
    strips = feature_strips(sae, cache, scan, chosen, scans.device, ImageLookup(cache), size=size)
    feats = [{"f": f, "moran": _rounded(moran[f]), "m5": _rounded(ms[f]),
              "freq": round(float(scan.frequency_f[f]), 4),
              "img": strips.get(f, "")} for f in chosen]
    rec = view.record
    return {"id": rec["sae_id"], **{k: rec[k] for k in ("backbone", "layer", "family", "expansion", "k")},
            "n_images": scan.n_images, "features": feats}


def browser_entries(views: Sequence[SAEView], scans: Scans, per_key: int = 64) -> list[dict[str, Any]]:
    """Every SAE of the feature browser (see :func:`browser_entry`)."""
    return [browser_entry(v, scans, per_key=per_key) for v in views]
