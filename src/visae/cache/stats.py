"""Streaming normalization statistics of a cache (paper Table 1, "Activation normalization").

One pass over the stored (fp16-rounded) patch tokens: per-dimension mean ``mean_d`` and one scalar
``std = sqrt(mean over tokens and dims of (a − mean_d)²)``. Each batch's exact float64 mean and sum of
squared deviations are merged into the running state with Chan et al.'s parallel update, which is
exact up to float64 rounding and does not suffer the cancellation of the raw Σx² formula.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class StreamingStats:
    """Running per-dimension count, mean and M2 (Σ (x − mean)²) in float64."""

    def __init__(self, d_model: int) -> None:
        self.d_model = d_model
        self.n_tokens = 0
        self.mean_d = np.zeros(d_model, dtype=np.float64)
        self.m2_d = np.zeros(d_model, dtype=np.float64)

    def update(self, tokens_td: torch.Tensor | np.ndarray) -> None:
        """Merge a batch of tokens ``[T, D]`` (any float dtype; CUDA tensors are reduced on the GPU)."""
        if isinstance(tokens_td, np.ndarray):
            tokens_td = torch.from_numpy(tokens_td)
        if tokens_td.device.type == "mps":  # no float64 on MPS
            tokens_td = tokens_td.cpu()
        tokens_td = tokens_td.reshape(-1, self.d_model)
        n_b = int(tokens_td.shape[0])
        if n_b == 0:
            return
        x = tokens_td.to(torch.float64)
        mean_b = x.mean(dim=0)
        m2_b = ((x - mean_b) ** 2).sum(dim=0)
        self.merge(n_b, mean_b.cpu().numpy(), m2_b.cpu().numpy())

    def merge(self, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        """Chan's parallel merge of another partial state (count, mean, M2)."""
        n_a = self.n_tokens
        n = n_a + n_b
        delta = mean_b - self.mean_d
        self.mean_d = self.mean_d + delta * (n_b / n)
        self.m2_d = self.m2_d + m2_b + delta**2 * (n_a * n_b / n)
        self.n_tokens = n

    @property
    def std(self) -> float:
        """Scalar std over all tokens and dimensions around the per-dimension means."""
        if self.n_tokens == 0:
            return float("nan")
        return float(np.sqrt(self.m2_d.sum() / (self.n_tokens * self.d_model)))

    def to_json(self) -> dict[str, Any]:
        """The final ``stats.json`` content."""
        return {"mean": [float(v) for v in self.mean_d], "std": self.std, "n_tokens": self.n_tokens}

    def state(self) -> dict[str, Any]:
        """The exact running state (floats round-trip through JSON) for ``progress.json``."""
        return {"n_tokens": self.n_tokens, "mean": [float(v) for v in self.mean_d],
                "m2": [float(v) for v in self.m2_d]}

    @classmethod
    def from_state(cls, state: dict[str, Any], d_model: int) -> StreamingStats:
        """Inverse of :meth:`state`."""
        s = cls(d_model)
        s.n_tokens = int(state["n_tokens"])
        s.mean_d = np.asarray(state["mean"], dtype=np.float64)
        s.m2_d = np.asarray(state["m2"], dtype=np.float64)
        return s
