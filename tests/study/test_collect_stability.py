"""The collect job's seed-stability rows: one configuration trained with three seeds whose decoders are the
same atoms in other orders gives stability 1 on every member; a lone seed gives no row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from visae.sae.checkpoint import save_sae
from visae.sae.registry import make_sae
from visae.study.stages.base import SAERecord
from visae.study.stages.collect import Params, stability_rows


def record(sid: str, seed: int | None, k: int = 4) -> SAERecord:
    return SAERecord(sae_id=sid, out=f"saes/{sid}", grid="main", backbone="b", layer=11, metrics=["m2"],
                     family="topk", expansion=2, k=k, train={}, seed=seed, eval=f"evals/{sid}")


def test_permuted_seeds_are_fully_stable_and_lone_seeds_are_skipped(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = make_sae("topk", 6, expansion=2, k=4)
    rng = np.random.default_rng(0)
    records = []
    for i, seed in enumerate((0, 1, 2)):
        sae = make_sae("topk", 6, expansion=2, k=4)
        with torch.no_grad():
            sae.W_dec.copy_(base.W_dec[torch.from_numpy(rng.permutation(12))])
        save_sae(sae, tmp_path / "saes" / f"s{i}")
        records.append(record(f"s{i}", seed))
    save_sae(make_sae("topk", 6, expansion=2, k=8), tmp_path / "saes" / "lone")
    records.append(record("lone", 0, k=8))
    rows = stability_rows(tmp_path, Params(saes=records, raw=[], tasks=[], stability={"threshold": 0.9}))
    head = [r for r in rows if r["metric"] == "stability"]
    assert sorted(r["sae_id"] for r in head) == ["s0", "s1", "s2"]
    assert all(r["value"] == pytest.approx(1.0) for r in head)
    share = [r for r in rows if r["metric"] == "stability.share_matched"]
    assert len(share) == 3 and all(r["value"] == 1.0 for r in share)
    assert {r["metric"] for r in rows} >= {"stability.random_mean_cosine", "stability.n_pairs"}
    assert all(r["backbone"] == "b" and r["seed"] in (0.0, 1.0, 2.0) for r in head)
