"""Shared fixtures for SAE tests: a planted sparse dictionary and a cache built from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from visae.sae.testing import planted_dictionary

# The CI machine is shared: one intra-op thread keeps these tiny problems fast under contention.
torch.set_num_threads(1)


@pytest.fixture
def planted_cache(tmp_path: Path) -> tuple[Path, torch.Tensor]:
    """A cache of 400 images × 16 patches × d=24, planted with 48 atoms, k=3 per token."""
    from visae.backbones.layout import TokenLayout
    from visae.cache.testing import write_synthetic_cache

    x_nd, atoms = planted_dictionary(400 * 16, 24, 48, 3, seed=1)
    acts = x_nd.numpy().reshape(400, 16, 24).astype(np.float32)
    layout = TokenLayout(prefix_names=("cls",), grid_h=4, grid_w=4, patch_size=16)
    path = write_synthetic_cache(tmp_path / "cache", acts, np.zeros(400, dtype=np.int64), ["a"], layout)
    return path, atoms


@pytest.fixture
def interrupt_training(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """``interrupt_training(n)``: the next ``train_saes`` stops after step ``n`` (its checkpoints up to there
    written) with KeyboardInterrupt, as if the process died; later runs train normally."""
    import visae.sae.train as tr

    real = tr.train_on_batches

    def arm(total_steps: int) -> None:
        calls = {"n": 0}

        def killed(*a, **kw):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] == 1:
                kw["total_steps"] = total_steps
                real(*a, **kw)
                raise KeyboardInterrupt
            return real(*a, **kw)

        monkeypatch.setattr(tr, "train_on_batches", killed)

    return arm
