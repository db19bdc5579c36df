"""Per-column standardization fitted on a probe's training split (``StandardScaler`` semantics)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Standardizer:
    """Per-column mean and scale fitted on a training split (StandardScaler semantics)."""

    mean_d: np.ndarray
    scale_d: np.ndarray

    @classmethod
    def fit(cls, x_nd: np.ndarray, enabled: bool = True) -> Standardizer:
        """Fit on ``x_nd``; identity when ``enabled`` is false."""
        d = x_nd.shape[1]
        if not enabled:
            return cls(np.zeros(d, np.float64), np.ones(d, np.float64))
        x64 = np.asarray(x_nd, dtype=np.float64)
        mean = x64.mean(axis=0)
        std = x64.std(axis=0)
        # sklearn's _handle_zeros_in_scale: near-constant columns keep scale 1
        std = np.where(std < 10 * np.finfo(np.float64).eps * np.maximum(1.0, np.abs(mean)), 1.0, std)
        return cls(mean, std)

    def apply(self, x_nd: np.ndarray) -> np.ndarray:
        """Standardized float32 copy."""
        return ((np.asarray(x_nd, dtype=np.float64) - self.mean_d) / self.scale_d).astype(np.float32)
