"""Device selection: CUDA when present, else Apple MPS, else CPU; overridable everywhere."""

from __future__ import annotations

import torch


def pick_device(requested: str | torch.device | None = "auto") -> torch.device:
    """Resolve ``"auto"``/None to the best available device; pass any torch device (or its string) through."""
    if isinstance(requested, torch.device):
        return requested
    if requested in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(requested)
