"""The benchmark scripts themselves: the scale model's fits, the disk helpers, and gpu.sh rehearsed on the
CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"visae_bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_scale_fit_recovers_a_known_cost_law():
    scale = _load("scale")
    xs = [100.0, 200.0, 400.0]
    a, e = scale.fixed_and_exponent(xs, [3.0 + 0.01 * x ** 1.5 for x in xs])
    assert e == pytest.approx(1.5, abs=0.05) and a == pytest.approx(3.0, abs=0.3)
    assert scale.exponent(xs, [5 * x**2 for x in xs]) == pytest.approx(2.0)


def test_scale_projection_of_a_linear_workload():
    scale = _load("scale")
    s = scale.sizes(tiny=True)
    # cost = per-unit × size, no fixed part: the projection is exactly per-unit × the paper's sizes
    res = {"sizes": s, "cache": {"N": [(n, 0.5 * n, 10.0) for n in s["cache_n"]]},
           "train": {"N": [(n, 1e-3 * n, 10.0) for n in s["train_n"]],
                     "F": [(f, 1e-3 * s["train_base"][0] * f / s["train_base"][1], 10.0)
                           for f in s["train_f"]]},
           "eval": {"N": [(n, 0.1 * n, 10.0) for n in s["eval_n"]],
                    "F": [(f, 0.1 * s["eval_base"][0] * f / s["eval_base"][1], 10.0) for f in s["eval_f"]],
                    "C": [(c, 0.1 * s["eval_base"][0] * c / s["eval_base"][2], 10.0) for c in s["eval_c"]]}}
    p = scale.project(res)
    paper = scale.PAPER
    assert p["cache"] == pytest.approx(5 * 0.5 * (paper["train_images"] + paper["val_images"]), rel=1e-6)
    f0 = s["train_base"][1]
    assert p["train"] == pytest.approx(5 * 4 * sum(1e-3 * paper["train_tokens"] * w / f0
                                                   for w in paper["widths"]),
                                       rel=1e-6)
    _, ef, ec = s["eval_base"]
    per_width = [0.1 * paper["val_images"] * (w / ef) * (paper["classes"] / ec) for w in paper["widths"]]
    assert p["eval"] == pytest.approx(5 * 4 * sum(per_width), rel=1e-6)
    # the additive model: the same cache and training; evaluation per image = 0.1·(F/F0 + C/C0 − 1)
    lin = scale.project_linear(res)
    assert lin["cache"] == pytest.approx(p["cache"], rel=1e-6)
    assert lin["train"] == pytest.approx(p["train"], rel=1e-6)
    per_image = [0.1 * (w / ef + paper["classes"] / ec - 1) for w in paper["widths"]]
    assert lin["eval"] == pytest.approx(5 * 4 * paper["val_images"] * sum(per_image), rel=1e-6)


def test_disk_cache_helper_and_cold_pages(tmp_path):
    disk = _load("_disk")
    from visae.cache.reader import open_cache

    c = open_cache(disk.write_disk_cache(tmp_path / "c", 10, 2, 8, tokens_per_image=3, shard_images=4),
                   verify=True)
    assert (c.n_images, c.tokens_per_image, c.n_patches, c.d_model) == (10, 3, 4, 8)
    assert disk.drop_pages(tmp_path / "c") > 0
    assert disk.cold_read_rate(tmp_path / "c") > 0
    assert np.isfinite(c.std)
@pytest.mark.slow
def test_gpu_sh_rehearsed_on_the_cpu(tmp_path):
    """Every command of gpu.sh runs (with --device cpu, tiny sizes) and leaves its figures."""
    env = {**os.environ, "DEVICE": "cpu", "SIZE": "tiny", "OUT": str(tmp_path), "PYTHON": sys.executable,
           "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run(["bash", str(BENCH / "gpu.sh")], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=3600)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    for name in ("train", "grid", "sampler", "eval", "probes", "cache", "scale", "pytest-cuda"):
        assert (tmp_path / f"{name}.txt").stat().st_size > 0, name
    assert "sampler / training step" in (tmp_path / "sampler.txt").read_text()
    assert "12 passes" in (tmp_path / "grid.txt").read_text()
    assert json.loads((tmp_path / "scale.json").read_text())["device"] == "cpu"
    assert " passed" in (tmp_path / "pytest-cuda.txt").read_text()


@pytest.mark.slow
def test_eval_full_reports_an_undefined_m1(tmp_path):
    """At a size where no feature has 50 valid images, M1 is undefined and the table says so."""
    args = ["--images", "24", "--sizes", "24,36", "--d", "16", "--grid", "4", "--expansion", "4", "--k", "4",
            "--classes", "3", "--no-peer"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run([sys.executable, str(BENCH / "eval_full.py"), *args], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    row = next(line for line in r.stdout.splitlines() if line.startswith("ours "))
    assert "—" in row
    rows = [line.split()[0] for line in r.stdout.split("by cache size:")[1].splitlines()[2:]
            if line[:1] == " "]
    assert rows == ["24", "36"]  # one memory row per size
