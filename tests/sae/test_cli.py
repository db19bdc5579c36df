"""``visae train`` end to end on a tiny planted cache."""

from __future__ import annotations

from pathlib import Path

import torch
from typer.testing import CliRunner

from visae.cli import app
from visae.sae.checkpoint import load_sae


def test_visae_train_cli(planted_cache: tuple[Path, torch.Tensor], tmp_path: Path) -> None:
    cache_path, _ = planted_cache
    out = tmp_path / "out"
    res = CliRunner().invoke(app,
                             ["train", "--cache", str(cache_path), "--out", str(out), "--expansion", "2,4",
                                   "--k", "2", "--steps", "3", "--batch-size", "256",
                                   "--set", "heldout_batches=1", "--set", "progress=false"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["batchtopk_2x_k2", "batchtopk_4x_k2"]
    assert load_sae(out / "batchtopk_4x_k2").d_sae == 96
    bad = CliRunner().invoke(app, ["train", "--cache", str(cache_path), "--out", str(out), "--set", "lr=x"])
    assert bad.exit_code == 2 and "lr" in bad.output
