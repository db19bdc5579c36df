"""``visae.evaluate`` and ``visae eval``: one encoding pass for every metric, JSON results, configs,
errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from visae.backbones.layout import TokenLayout
from visae.cache.reader import open_cache
from visae.cache.testing import write_synthetic_cache
from visae.cli import app
from visae.metrics.cli import format_results, metric_configs, parse_metric_names
from visae.metrics.encode import encode_stream
from visae.metrics.m1_spatial import M1Config, compute_m1
from visae.metrics.m2_reconstruction import compute_m2
from visae.metrics.raw_spatial import RawConfig, compute_raw
from visae.sae import checkpoint, registry
from visae.sae.base import SAE
from visae.sae.testing import make_identity

LAYOUT = TokenLayout(("cls",), 6, 7, 14)  # P = 42, non-square
D = 4


class CountingReluSAE(SAE):
    """codes = relu(pre-activations); counts encode calls."""

    family = "test-relu"
    calls = 0

    def encode(self, x_nd: torch.Tensor) -> torch.Tensor:
        CountingReluSAE.calls += 1
        return torch.relu(self.pre_acts(x_nd))




def smooth_acts(n: int, seed: int = 0) -> np.ndarray:
    """[n, P, D]: every channel a smooth signed field over the 6 × 7 grid plus a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:6, 0:7]
    acts = np.empty((n, 42, D), dtype=np.float32)
    for i in range(n):
        for d in range(D):
            f = np.sin(rng.uniform(0.3, 0.6) * yy + rng.uniform(0, 6)) + np.cos(rng.uniform(0.3, 0.6) * xx)
            acts[i, :, d] = (f + 0.05 * rng.normal(size=f.shape)).ravel() * (d + 1) + d
    return acts


@pytest.fixture
def cache_dir(tmp_path):
    return write_synthetic_cache(tmp_path / "cache", smooth_acts(30), np.arange(30) % 3,
                                 ["a", "b", "c"], LAYOUT,
                                 shard_images=8)


def test_evaluate_runs_every_metric_in_one_pass(cache_dir, tmp_path) -> None:
    from visae.metrics.evaluate import evaluate

    cache = open_cache(cache_dir)
    torch.manual_seed(0)
    sae = CountingReluSAE(D, 16)
    sae.set_normalization(torch.from_numpy(cache.mean_d), cache.std)
    configs = {"m1": {"min_valid_images": 10}, "raw": RawConfig(min_valid_images=10)}
    CountingReluSAE.calls = 0
    results = evaluate(sae, cache, metrics=["m1", "m2", "raw"], out_dir=tmp_path / "out", configs=configs,
                       device="cpu", group_size=8, bootstrap={"n_boot": 0})  # intervals: test_intervals.py
    assert CountingReluSAE.calls == 4  # ceil(30 / 8): codes computed once, shared by the three metrics

    batches = list(encode_stream(sae, cache, group_size=8, device=torch.device("cpu")))
    m1, means, counts = compute_m1(batches, 16, M1Config(min_valid_images=10))
    assert results["m1"] == m1
    assert results["m2"] == compute_m2(batches)
    raw, _, _ = compute_raw([(b.acts_npd, b.grid_hw) for b in batches], RawConfig(min_valid_images=10),
                            input_scale=cache.std)
    assert results["raw"] == raw
    assert raw.value is not None and raw.value > 0.5 and raw.n_eval == D

    out = tmp_path / "out"
    for name in ("m1", "m2", "raw"):
        doc = json.loads((out / f"{name}.json").read_text())
        assert doc["metric"] == name and doc["value"] == results[name].value
        assert doc["result"] == results[name].model_dump(mode="json")
        assert doc["inputs"]["cache"] == cache.manifest.hash and doc["inputs"]["sae"]
    assert json.loads((out / "m1.json").read_text())["config"]["min_valid_images"] == 10
    table = pd.read_parquet(out / "m1_features.parquet")
    assert list(table.columns) == ["feature", "mean_I", "n_valid_images"] and len(table) == 16
    np.testing.assert_array_equal(table["n_valid_images"].to_numpy(), counts)
    np.testing.assert_allclose(table["mean_I"].to_numpy(), means)
    assert len(pd.read_parquet(out / "raw_channels.parquet")) == D


def test_metric_configs_from_yaml_and_set(tmp_path) -> None:
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump({"m1": {"min_valid_images": 20, "min_active_patches": 3},
                                    "m2": {"dead_threshold": 0.5}}))
    cfgs = metric_configs(["m1", "raw"], path, ["m1.min_valid_images=7", "raw.variance_eps=1e-6"])
    assert cfgs["m1"].min_valid_images == 7 and cfgs["m1"].min_active_patches == 3
    assert cfgs["raw"].variance_eps == 1e-6 and set(cfgs) == {"m1", "raw"}
    assert parse_metric_names(" m2,m1 ,m2") == ["m2", "m1"]


@pytest.mark.parametrize(("args", "message"), [
    (["--metrics", "m1,m9"], "unknown metric(s) m9"),
    (["--metrics", ""], "no metric named"),
    (["--set", "m1.min_valid_imgs=3"], "min_valid_imgs: unknown key"),
    (["--set", "m1.min_valid_images=zero"], "min_valid_images"),
    (["--set", "foo.x=1"], "unknown section 'foo'"),
])
def test_cli_config_errors_are_clean(cache_dir, tmp_path, args, message) -> None:
    res = CliRunner().invoke(app, ["eval", "--sae", str(tmp_path / "none"), "--cache", str(cache_dir), *args])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output


def test_format_results_table() -> None:
    from visae.metrics.m2_reconstruction import M2Result

    res = M2Result(metric="m2", value=0.125, higher_is_better=False, fvu=0.125, explained_variance=0.875,
                   mse=0.5, total_variance=4.0, mean_l0=12.0, dead=3, dead_fraction=0.1, d_sae=30,
                   n_tokens=100, n_images=2)
    text = format_results({"m2": res})
    assert "m2" in text and "0.1250" in text and "dead=3" in text and "↓" in text


def test_cli_end_to_end_writes_results(cache_dir, tmp_path) -> None:
    """cache → SAE checkpoint → ``visae eval --metrics m1,m2,raw`` → JSON results with known answers."""
    cache = open_cache(cache_dir)
    sae = make_identity(registry.make_sae("relu", d_in=D, d_sae=2 * D))
    sae.set_normalization(torch.from_numpy(cache.mean_d), cache.std)
    sae_dir = tmp_path / "sae"
    checkpoint.save_sae(sae, sae_dir)
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump({"raw": {"min_valid_images": 20}}))
    out = tmp_path / "results"
    res = CliRunner().invoke(app, [
        "eval", "--sae", str(sae_dir), "--cache", str(cache_dir), "--metrics", "m1,m2,raw", "--out", str(out),
        "--group-size", "7", "--device", "cpu", "--config", str(tmp_path / "eval.yaml"),
        "--set", "m1.min_valid_images=20",
    ])
    assert res.exit_code == 0, res.output
    assert "m1" in res.output and "raw" in res.output and "wrote 3 result file(s)" in res.output
    m1 = json.loads((out / "m1.json").read_text())
    m2 = json.loads((out / "m2.json").read_text())
    raw = json.loads((out / "raw.json").read_text())
    assert m2["value"] == pytest.approx(0.0, abs=1e-6)  # the identity SAE reconstructs exactly
    assert m1["config"]["min_valid_images"] == 20 and raw["config"]["min_valid_images"] == 20
    assert m1["value"] > 0.3 and raw["value"] > 0.5  # smooth planted fields are spatially coherent
    assert m1["result"]["n_dict"] == 2 * D and raw["result"]["n_dict"] == D
    assert (out / "m1_features.parquet").is_file()
