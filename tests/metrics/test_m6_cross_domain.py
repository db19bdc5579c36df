"""M6: per-dataset probes on OOD caches encoded by the SAE; an exact SAE preserves everything."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visae.backbones.layout import TokenLayout
from visae.cache.testing import write_synthetic_cache
from visae.errors import ConfigError
from visae.metrics.base import EvalContext
from visae.metrics.m6_cross_domain import M6Config, compute_m6
from visae.sae.base import SAE
from visae.sae.testing import identity_sae

LAYOUT = TokenLayout(("cls",), 2, 2, 14)




def ood_cache(path, n: int, seed: int):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    acts = rng.normal(size=(n, 4, 6)).astype(np.float32) + 2.0 * np.eye(6, dtype=np.float32)[y][:, None, :]
    return write_synthetic_cache(path, acts, y, ["x", "y", "z"], LAYOUT)


def ctx_for(sae: SAE, eval_cache) -> EvalContext:
    from visae.cache.reader import open_cache

    return EvalContext(sae=sae, cache=open_cache(eval_cache), device=torch.device("cpu"))


def test_exact_sae_preserves_every_dataset(tmp_path) -> None:
    tr = ood_cache(tmp_path / "tr", 120, 0)
    te = ood_cache(tmp_path / "te", 60, 1)
    one = ood_cache(tmp_path / "one", 150, 2)
    cfg = M6Config(datasets=[{"name": "dtd", "train_cache": str(tr), "test_cache": str(te)},
                             {"name": "cub", "train_cache": str(one)}], sparse_k=4)
    r = compute_m6(ctx_for(identity_sae(6), tr), cfg)
    assert r.headline == "dtd" and r.value == 1.0
    d = r.datasets["dtd"]
    assert d.acc_raw == d.acc_recon > 0.8 and d.n_train == 120 and d.n_test == 60 and d.split == "caches"
    assert d.acc_codes is not None and d.sparse_auc is not None and d.sparse_auc > 0.8 and d.sparse_k == 4
    c = r.datasets["cub"]
    assert c.split == "internal 80/20" and c.n_test == 30 and c.preservation == 1.0 and "cub" in r.note


def test_mapping_form_and_errors(tmp_path) -> None:
    tr = ood_cache(tmp_path / "tr", 60, 0)
    cfg = M6Config(datasets={"inat": str(tr)})
    assert cfg.datasets[0].name == "inat" and cfg.datasets[0].test_cache is None
    with pytest.raises(ConfigError):
        compute_m6(ctx_for(identity_sae(6), tr), M6Config(datasets={"inat": str(tr)}, headline="cub"))
    empty = compute_m6(ctx_for(identity_sae(6), tr), M6Config())
    assert empty.value is None and "m6.datasets" in empty.note
