"""``visae train`` on several caches read as one stream (one of them a tokens_per_image training cache)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from typer.testing import CliRunner

from visae.backbones.layout import TokenLayout
from visae.cache.positions import sample_positions
from visae.cache.reader import open_cache
from visae.cache.sampler import TokenStream
from visae.cache.testing import write_synthetic_cache
from visae.cli import app
from visae.sae.checkpoint import load_sae


def test_train_on_two_caches_as_one_stream(planted_cache: tuple[Path, torch.Tensor], tmp_path: Path) -> None:
    full, _ = planted_cache
    layout = TokenLayout(prefix_names=("cls",), grid_h=4, grid_w=4, patch_size=16)
    rng = np.random.default_rng(0)
    part = write_synthetic_cache(tmp_path / "part", rng.normal(size=(300, 4, 24)).astype(np.float32),
                                 np.zeros(300, dtype=np.int64), ["a"], layout,
                                 positions_nt=sample_positions(range(300), 16, 4, seed=1))
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["train", "--cache", str(full), "--cache", str(part), "--out", str(out),
                                   "--expansion", "2", "--k", "2", "--batch-size", "256",
                                   "--set", "heldout_batches=1", "--set", "progress=false"])
    assert res.exit_code == 0, res.output
    stream = TokenStream([open_cache(full), open_cache(part)])
    sae = load_sae(out / "batchtopk_2x_k2")
    text = " ".join(p.read_text() for p in (out / "batchtopk_2x_k2").iterdir()
                    if p.suffix in (".yaml", ".json"))
    assert str(full) in text and str(part) in text
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = next(r["steps"] for r in log if r.get("final") == "batchtopk_2x_k2")
    assert steps == stream.n_batches(256) - 1  # the whole stream of both caches, less the held-out batch
    assert torch.allclose(sae.act_mean, torch.from_numpy(stream.mean_d))
    assert float(sae.act_std) == float(np.float32(stream.std))
