"""Bad input, round three (issue 21): every argument takes effect or is refused, numbers are checked on load,
geometry matches, every error is one line, one writer per training folder, studies validated and never
pooling different settings as seeds. Each case asserts exit code 2 and one ``error:`` line naming the field or
file (and that nothing was written), or the correct behaviour. The issue's 31 examples are marked ``#N``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_bad_input_cli import _cache, _cli, _refused, _train

import visae.study.testing  # noqa: F401  (tiny-vit-a, tiny-vit-b)
from visae.errors import CacheError, CheckpointError, ConfigError, StudyError, VisaeWarning
from visae.sae.checkpoint import load_sae, save_sae


@pytest.fixture()
def setup(tmp_path: Path) -> dict[str, Path]:
    cache = _cache(tmp_path)
    sae = _train(cache, tmp_path / "t")
    return {"root": tmp_path, "cache": cache, "sae": sae}


def _eval(sae: Path, cache: Path, *extra: str) -> list[str]:
    return ["eval", "--sae", str(sae), "--cache", str(cache), "-m", "m2", "--device", "cpu", *extra]


def _tampered(sae: Path, out: Path, name: str, value: float, index: Any = ...) -> Path:
    """A copy of ``sae`` (config.yaml kept, so its provenance too) with ``name`` set to ``value``."""
    from safetensors.torch import load_file, save_file

    out.mkdir()
    (out / "config.yaml").write_bytes((sae / "config.yaml").read_bytes())
    state = load_file(sae / "model.safetensors")
    state[name][index] = value
    save_file(state, str(out / "model.safetensors"), metadata={"format": "visae-sae", "family": "topk"})
    return out


# --- 2. numbers are checked on load
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "value", "index", "words"), [
    ("W_enc", math.nan, ..., ("'W_enc'", "NaN", "retrain")),            # 1: was FVU 1.0, every feature dead
    ("b_dec", math.nan, 0, ("'b_dec'", "1 of 8", "NaN")),                 # 2: was M2 = nan with no reason
    ("act_std", math.inf, ..., ("'act_std'", "Inf")),                     # 3: was blamed on "zero variance"
    ("act_mean", -math.inf, 3, ("'act_mean'", "Inf")),
    ("W_dec", math.inf, (0, 0), ("'W_dec'",)),
])
def test_non_finite_tensors_are_refused_at_load(setup: dict[str, Path], name: str, value: float, index: Any,
                                               words: tuple[str, ...]) -> None:
    root = setup["root"]
    bad = _tampered(setup["sae"], root / "bad", name, value, index)
    line = _refused(root, _eval(bad, setup["cache"]), str(bad), *words)
    assert "zero variance" not in line
    with pytest.raises(CheckpointError, match=name):
        load_sae(bad)


def test_zero_normalization_std_and_in_memory_models(setup: dict[str, Path]) -> None:
    root = setup["root"]
    bad = _tampered(setup["sae"], root / "zero", "act_std", 0.0)
    _refused(root, _eval(bad, setup["cache"]), "act_std = 0.0", "not positive")
    from visae.metrics.evaluate import evaluate

    model = load_sae(setup["sae"])
    with torch.no_grad():
        model.b_enc[2] = math.nan
    with pytest.raises(CheckpointError, match="'b_enc' holds 1 of"):  # the Python API checks models too
        evaluate(model, setup["cache"], metrics=["m2"], device="cpu")


def test_batchtopk_threshold_must_be_finite(setup: dict[str, Path]) -> None:
    from visae.sae.registry import make_sae

    sae = make_sae("batchtopk", 8, d_sae=16, k=2)
    sae.threshold.fill_(math.nan)  # type: ignore[operator, union-attr]
    folder = save_sae(sae, setup["root"] / "bt")
    _refused(setup["root"], _eval(folder, setup["cache"]), "'threshold'", "NaN")


def test_a_nan_headline_always_says_why() -> None:
    from visae.metrics.evaluate import _explained
    from visae.metrics.m2_reconstruction import M2Result

    raw = M2Result(metric="m2", value=math.nan, higher_is_better=False, fvu=None, explained_variance=None,
                   mse=0, total_variance=0, mean_l0=0, dead=0, dead_fraction=0, d_sae=1, n_tokens=0,
                   n_images=0, note="")
    out = _explained(raw)
    assert out.value is None and "nan" in out.note
    assert _explained(raw.model_copy(update={"value": 0.5})).value == 0.5


# --- 3. geometry matches
# -----------------------------------------------------------------------------------------------
def test_cache_of_another_grid_is_refused_unless_asked(setup: dict[str, Path]) -> None:
    from visae.backbones.layout import TokenLayout
    from visae.cache.testing import write_synthetic_cache

    root = setup["root"]
    acts = np.random.default_rng(3).normal(size=(12, 64, 8)).astype(np.float32)
    big = write_synthetic_cache(root / "big", acts, np.arange(12) % 3, ["x", "y", "z"],
                                TokenLayout(("cls",), 8, 8, 8), shard_images=6)  # 64 px, 8×8 (trained: 4×4)
    _refused(root, _eval(setup["sae"], big, "--out", str(root / "ev")), "32 px", "4×4", "64 px", "8×8",
             "--allow-other-size")
    code, text = _cli(_eval(setup["sae"], big, "--allow-other-size"))
    assert code == 0 and "warning: SAE" in text and "8×8" in text, text
    from visae.metrics.evaluate import evaluate

    with pytest.raises(ConfigError, match="allow_other_size=True"):
        evaluate(setup["sae"], big, metrics=["m2"], device="cpu")


@pytest.mark.slow
def test_eval_images_uses_the_training_image_size(tmp_path: Path) -> None:  # 4: was 224 px, 256 patches
    from visae.cache.writer import build_cache

    train_cache = build_cache("tiny-vit-a", "offline:digits", 1, tmp_path / "caches", split="train",
                              max_images=40, image_size=16, device="cpu", progress=False, num_workers=0)
    sae = _train(train_cache, tmp_path / "t")
    args = ["eval", "--sae", str(sae), "--images", "offline:digits", "--max-images", "24", "-m", "m2",
            "--device", "cpu", "--cache-root", str(tmp_path / "ev")]
    code, text = _cli(args)
    assert code == 0, text
    [folder] = list((tmp_path / "ev").iterdir())
    layout = json.loads((folder / "manifest.json").read_text())["layout"]
    assert (layout["grid_h"], layout["grid_w"]) == (2, 2)  # 16 px as trained, not the backbone's 32 px
    code, text = _cli([*args, "--image-size", "32"])  # another size, asked for explicitly
    assert code == 0 and "warning: SAE" in text and "2×2" in text, text


# --- 1. every argument takes effect or is refused
# ---------------------------------------------------------------------------
def test_option_and_set_of_one_field_that_disagree(setup: dict[str, Path]) -> None:  # 5
    root = setup["root"]
    base = ["train", "--cache", str(setup["cache"]), "--out", str(root / "new"), "--family", "topk",
            "--expansion", "2", "--k", "2", "--device", "cpu"]
    _refused(root, [*base, "--batch-size", "512", "--set", "batch_size=256"], "--batch-size 512",
             "batch_size=256", "two different values")
    _refused(root, [*base, "--steps", "3", "--set", "steps=4"], "--steps 3", "steps=4")
    _refused(root, ["cache", "-b", "tiny-vit-a", "--source", "offline:digits", "-l", "0", "-o",
                    str(root / "c"), "--max-images", "5", "--set", "max_images=6"],
             "--max-images 5", "max_images=6")
    from visae.cli_common import check_option_overrides

    check_option_overrides({"steps": 3, "dtype": "bf16"}, ["steps=3", "dtype=bf16", "lr=0.01"])  # agree: fine


@pytest.mark.parametrize(("extra", "flag"), [(["--layer", "3"], "--layer"),             # 6
                                             (["--max-images", "5"], "--max-images"),   # 7
                                             (["--split", "train"], "--split"),
                                             (["--image-size", "64"], "--image-size"),
                                             (["--cache-root", "/tmp/x"], "--cache-root")])
def test_images_options_with_cache_are_refused(setup: dict[str, Path], extra: list[str], flag: str) -> None:
    root = setup["root"]
    _refused(root, _eval(setup["sae"], setup["cache"], *extra, "--out", str(root / "ev")), flag,
             "with --cache", "drop it")


def test_metric_settings_for_metrics_not_run(setup: dict[str, Path]) -> None:  # 8
    root = setup["root"]
    _refused(root, _eval(setup["sae"], setup["cache"], "--set", "m4.ks=[1,2]"), "--set m4.ks=[1,2]",
             "m4 is not among the metrics run (m2)")
    from visae.metrics.evaluate import evaluate

    with pytest.raises(ConfigError, match="settings for m4, which is not among the metrics run"):
        evaluate(setup["sae"], setup["cache"], metrics=["m2"], configs={"m4": {"ks": [1]}}, device="cpu")


def test_sae_options_without_an_sae(setup: dict[str, Path]) -> None:
    root = setup["root"]
    _refused(root, ["eval", "--cache", str(setup["cache"]), "-m", "raw", "--subfolder", "x", "--device",
                    "cpu"], "--subfolder", "without --sae")


def test_python_api_metrics_are_validated_like_the_cli(setup: dict[str, Path]) -> None:  # 30
    from visae.metrics.evaluate import evaluate

    sae, cache = setup["sae"], setup["cache"]
    as_string = evaluate(sae, cache, metrics="m2,m1", device="cpu", bootstrap={"n_boot": 0})
    assert list(as_string) == ["m2", "m1"]  # not 'm', '2', ',', …
    as_list = evaluate(sae, cache, metrics=["m2"], device="cpu", bootstrap={"n_boot": 0})
    assert as_string["m2"].value == pytest.approx(as_list["m2"].value)
    for bad, words in (([], "no metric named"), ("", "no metric named"), ("m2,m9", "unknown metric(s) m9"),
                       ([2], "expected metric names")):
        with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
            evaluate(sae, cache, metrics=bad, device="cpu")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="group_size"):
        evaluate(sae, cache, metrics=["m2"], group_size=0, device="cpu")


def test_ls_and_export_arguments(setup: dict[str, Path]) -> None:
    root, sae = setup["root"], setup["sae"]
    _refused(root, ["ls", str(root), "--revision", "v9"], "--revision", "local folder")           # 10
    _refused(root, ["export", str(sae), str(root / "x"), "--results", str(root / "nope")],       # 11
             "--results", "nope", "no such folder")
    _refused(root, ["export", str(sae), str(root / "x"), "--repo-id", "not a repo id!!"],       # 12
             "--repo-id", "not a hub repo id")


# --- 4. every error is one line
# ---------------------------------------------------------------------------------------------
def test_empty_labels_file(setup: dict[str, Path]) -> None:  # 14
    root, cache = setup["root"], setup["cache"]
    (cache / "labels.npy").write_bytes(b"")
    _refused(root, _eval(setup["sae"], cache), "labels.npy", "empty (0 bytes)", "rerun")
    (cache / "labels.npy").write_bytes(b"\x93NUMPY garbage")
    _refused(root, _eval(setup["sae"], cache), "labels.npy", "unreadable", "rerun")


def test_empty_or_truncated_shard(setup: dict[str, Path]) -> None:  # 15, 19
    from visae.cache.reader import open_cache

    root, cache = setup["root"], setup["cache"]
    shard = sorted(cache.glob("shard_*.npy"))[0]
    good = shard.read_bytes()
    shard.write_bytes(b"")
    _refused(root, _eval(setup["sae"], cache), shard.name, "empty (0 bytes)", "rerun")
    with pytest.raises(CacheError, match="empty"):
        open_cache(cache).shard(0)  # a visae error, not EOFError
    shard.write_bytes(good[: len(good) // 3])
    with pytest.raises(CacheError, match=shard.name):
        open_cache(cache).shard(0)


def test_over_long_output_names(setup: dict[str, Path]) -> None:  # 16
    root = setup["root"]
    long = root / ("a" * 300)
    line = _refused(root, _eval(setup["sae"], setup["cache"], "--out", str(long)), "File name too long",
                    "shorter name")
    assert len(line) < 400
    _refused(root, ["train", "--cache", str(setup["cache"]), "--out", str(long / "x"), "--family", "topk",
                    "--expansion", "2", "--k", "2", "--device", "cpu"], "File name too long")


@pytest.mark.parametrize(("args", "words"), [
    (["eval", "--bogus"], ("No such option: --bogus", "visae eval --help")),                      # 17
    (["eval", "--group-size", "0"], ("--group-size", "greater than or equal to 1")),              # 18
    (["study", "run", "s.yaml", "--max-retries", "-1"], ("--max-retries",)),                      # 21
    (["train", "--cache"], ("--cache", "requires an argument")),
    (["nosuchcommand"], ("No such command",)),
])
def test_usage_errors_are_one_line(tmp_path: Path, args: list[str], words: tuple[str, ...]) -> None:
    line = _refused(tmp_path, args, *words)
    assert "╭" not in line


# --- 5. one writer per training folder
# -------------------------------------------------------------------------------------
def test_second_train_into_one_out_is_refused(setup: dict[str, Path]) -> None:  # 26
    root, cache = setup["root"], setup["cache"]
    out = root / "t"
    holder = subprocess.Popen(["sleep", "60"])  # a live writer on this host
    try:
        (out / ".lock").write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename}))
        _refused(root, ["train", "--cache", str(cache), "--out", str(out), "--family", "topk", "--expansion",
                        "2", "--k", "2", "--batch-size", "16", "--steps", "3", "--device", "cpu", "--set",
                        "heldout_batches=1"], "another 'visae train'", f"pid {holder.pid}")
        from visae.sae.train import SAESpec, TrainConfig, train_saes

        with pytest.raises(CacheError, match="another 'visae train'"):
            train_saes(cache, SAESpec(family="topk", expansion=2, k=2), out, TrainConfig(device="cpu"))
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its stale lock is taken over, the run resumes, and the lock is released after
    _train(cache, out)
    assert not (out / ".lock").exists()


# --- advice that misleads
# ------------------------------------------------------------------------------------------
def test_local_grid_folder_lists_its_configurations(setup: dict[str, Path]) -> None:  # 27, 28
    from visae.sae.train import SAESpec, TrainConfig, train_saes

    root, cache = setup["root"], setup["cache"]
    grid = root / "grid"
    train_saes(cache, [SAESpec(family="topk", expansion=2, k=2), SAESpec(family="topk", expansion=2, k=3)],
               grid, TrainConfig(batch_size=16, heldout_batches=1, steps=2, device="cpu", progress=False))
    line = _refused(root, _eval(grid, cache, "--subfolder", "nope"), "nope", "topk_2x_k2, topk_2x_k3")
    assert "hf download" not in line and "hub" not in line
    _refused(root, _eval(grid, cache), "no SAE checkpoint in the folder itself", "a folder of 2 SAE(s)",
             "--subfolder NAME", "topk_2x_k2, topk_2x_k3")
    code, text = _cli(_eval(grid, cache, "--subfolder", "topk_2x_k3"))
    assert code == 0, text


def test_one_class_images_for_probe_metrics(tmp_path: Path) -> None:  # 29
    cache = _cache(tmp_path, n=12)
    sae = _train(cache, tmp_path / "t")
    (cache / "labels.npy").unlink()
    np.save(cache / "labels.npy", np.zeros(12, dtype=np.int64))
    line = _refused(tmp_path, ["eval", "--sae", str(sae), "--cache", str(cache), "-m", "m2,m4", "--device",
                               "cpu"], str(cache), "1 class(es)", "m4", "drop m4")
    assert "fit_probe" not in line


# --- 6. studies
# --------------------------------------------------------------------------------------------------
def _study(folder: Path, **changes: Any) -> Path:
    data: dict[str, Any] = {
        "name": "s", "out_dir": "out", "device": "cpu", "plugins": ["visae.study.testing"],
        "backbones": ["tiny-vit-a"], "layers": [1],
        "saes": [{"name": "main", "family": "topk", "expansions": [2], "ks": [4]}],
        "data": {"train": {"spec": "offline:digits", "max_images": 20},
                 "eval": {"spec": "offline:digits", "max_images": 20}},
        "metrics": ["m2"]}
    data.update(changes)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_study_settings_are_validated_at_load(tmp_path: Path) -> None:  # 13 (+ issue 26)
    path = _study(tmp_path / "st")
    _refused(tmp_path, ["study", "status", str(path), "--set", "train.bogus=1"], "train.bogus: unknown key")
    _refused(tmp_path, ["study", "status", str(path), "--set", "metric_configs.m2.dead_treshold=3"],
             "metric_configs.m2.dead_treshold: unknown key")
    bad = _study(tmp_path / "st2", metric_configs={"m4": {"kss": [1]}}, train={"lr": 0})
    code, text = _cli(["study", "run", str(bad)])  # not only under --dry-run: before any job runs
    assert code == 2 and "metric_configs.m4.kss: unknown key" in text and "train.lr" in text, text
    assert not (tmp_path / "st2" / "out").exists()
    from visae.study.config import load_study_config

    with pytest.raises(ConfigError, match=r"saes\[0\].hparams|metric_configs.m4.kss"):
        load_study_config(bad)


def test_study_settings_for_metrics_no_block_runs(tmp_path: Path) -> None:  # 8, for studies
    path = _study(tmp_path / "a", metric_configs={"m4": {"ks": [1, 2]}})
    _refused(tmp_path, ["study", "status", str(path)], "metric_configs.m4", "no SAE block runs", "m2")
    blocks = [{"name": "main", "family": "topk", "expansions": [2], "ks": [4], "metrics": ["m2", "m4"]}]
    fine = _study(tmp_path / "b", saes=blocks, metric_configs={"m4": {"ks": [1, 2]}})
    code, text = _cli(["study", "run", str(fine), "--dry-run"])  # a block runs m4: its settings apply there
    assert code == 0, text


def test_duplicate_block_names(tmp_path: Path) -> None:  # 25
    blocks = [{"name": "main", "family": "topk", "expansions": [2], "ks": [4]},
              {"name": "main", "family": "topk", "expansions": [2], "ks": [8]}]
    path = _study(tmp_path, saes=blocks)
    _refused(tmp_path, ["study", "status", str(path)], "saes[1].name", "'main'", "saes[0]")
    code, text = _cli(["study", "run", str(path), "--dry-run"])
    assert code == 2 and "saes[1].name: 'main' is already the name of saes[0]" in text, text


def test_retries_and_address(tmp_path: Path) -> None:
    path = _study(tmp_path)
    _refused(tmp_path, ["study", "run", str(path), "--address", "10.1.2.3:6379"],            # 9
             "--address 10.1.2.3:6379", "local executor")
    from visae.study.config import load_study_config
    from visae.study.run import run_study

    cfg = load_study_config(path)
    with pytest.raises(ConfigError, match="--max-retries -1"):                                # 21 (API)
        run_study(cfg, max_retries=-1)
    assert not (tmp_path / "out").exists()


def test_ray_address_that_does_not_answer(tmp_path: Path) -> None:  # 20
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = _study(tmp_path)
    started = time.perf_counter()
    _refused(tmp_path, ["study", "run", str(path), "--executor", "ray", "--address", f"127.0.0.1:{port}"],
             f"--address 127.0.0.1:{port}", "no Ray cluster answers")
    assert time.perf_counter() - started < 30
    from visae.study.executors import check_ray_address

    with pytest.raises(StudyError, match="expected HOST:PORT"):
        check_ray_address("not an address")


def test_deleted_result_file_is_not_done(tmp_path: Path) -> None:  # 22
    from visae.study.job import Job
    from visae.study.protocol import execute_job, job_done

    job = Job(id="j1", kind="collect", label="collect results", params={}, deps=(), outputs=("results",),
              exact_done=True)
    runs = []

    def work() -> dict[str, Any]:
        runs.append(1)
        pd.DataFrame({"value": [1.0]}).to_parquet(tmp_path / "results" / "results.parquet")
        return {}

    (tmp_path / "results").mkdir()
    execute_job(job, tmp_path, work)
    assert job_done(job, tmp_path) and len(runs) == 1
    execute_job(job, tmp_path, work)
    assert len(runs) == 1  # done: skipped
    (tmp_path / "results" / "results.parquet").unlink()
    assert not job_done(job, tmp_path)  # status no longer calls it done
    execute_job(job, tmp_path, work)  # a rerun rebuilds it
    assert len(runs) == 2 and (tmp_path / "results" / "results.parquet").is_file()


def test_report_refuses_a_folder_without_results(tmp_path: Path) -> None:  # 23, 24
    empty = tmp_path / "empty"
    empty.mkdir()
    _refused(tmp_path, ["report", str(empty)], "no results table", "visae study run")
    study = tmp_path / "study"
    (study / "results").mkdir(parents=True)
    (study / "study.yaml").write_text("name: s\n")  # a study whose results.parquet was deleted
    _refused(tmp_path, ["report", str(study)], "results/results.parquet is missing")


def _rows(blocks: list[dict[str, Any]]) -> pd.DataFrame:
    """Results rows as :func:`visae.results.table.sae_rows` writes them (sae_config: the SAE's settings)."""
    rng = np.random.default_rng(0)
    rows = []
    for block in blocks:
        for backbone in ("a", "b", "c"):
            for seed in block.get("seeds", [None]):
                config = {"family": "topk", "expansion": 8, "k": 64, "train": block["train"],
                          **({"seed": seed} if seed is not None else {})}
                rows.append({"backbone": backbone, "family": "topk", "expansion": 8.0, "k": 64.0, "layer": 11,
                             "metric": "m2", "grid": block["name"],
                             "seed": math.nan if seed is None else float(seed),
                             "sae_config": json.dumps(config, sort_keys=True),
                             "value": block["shift"] + rng.normal(0, 0.01)
                             + {"a": 0, "b": 0.1, "c": 0.2}[backbone]})
    return pd.DataFrame(rows)


def test_blocks_differing_in_a_setting_are_not_seeds() -> None:  # 31: fails on the code before issue 21
    from visae.analysis.variance import variance_decomposition

    df = _rows([{"name": "lr-low", "train": {"lr": 1e-4}, "shift": 0.0},
                {"name": "lr-high", "train": {"lr": 1e-3}, "shift": 1.0}])
    row = variance_decomposition(df).iloc[0]
    assert row["n_seeds"] == 1 and row["eta2_seed"] is None  # was n_seeds = 2, eta2_seed = 1.0
    assert row["n_configs"] == 2 and row["eta2_config"] > 0.9  # the learning rate is a configuration effect
    # the seeds of one block are the replicates
    seeded = _rows([{"name": "main", "train": {"lr": 1e-4}, "shift": 0.0, "seeds": [1, 2, 3]}])
    row = variance_decomposition(seeded).iloc[0]
    assert row["n_seeds"] == 3 and row["n_configs"] == 1 and row["eta2_seed"] is not None


def test_two_unnamed_blocks_same_settings_are_not_seeds_either() -> None:
    from visae.analysis.variance import variance_decomposition

    df = _rows([{"name": "first", "train": {"lr": 1e-4}, "shift": 0.0},
                {"name": "second", "train": {"lr": 1e-4}, "shift": 0.5}])
    assert variance_decomposition(df).iloc[0]["n_seeds"] == 1


def test_path_specs_of_ood_sets_resolve_against_the_yaml(tmp_path: Path) -> None:
    from visae.study.config import check_inputs_exist, load_study_config, spec_path

    (tmp_path / "cub").mkdir()
    path = _study(tmp_path, data={"train": {"spec": "offline:digits"}, "eval": {"spec": "offline:digits"},
                                  "ood": {"cub": {"spec": "cub:cub"}, "dtd": {"spec": "dtd:dtd-data?fold=2"},
                                          "inat": {"spec": "inat:~/no-such-inat"}}})
    cfg = load_study_config(path)
    assert cfg.data.ood["cub"].spec == f"cub:{tmp_path / 'cub'}"
    assert cfg.data.ood["dtd"].spec == f"dtd:{tmp_path / 'dtd-data'}?fold=2"
    assert spec_path(cfg.data.ood["dtd"].spec) == tmp_path / "dtd-data"
    with pytest.raises(ConfigError) as e:
        check_inputs_exist(cfg)
    assert "data.ood.dtd.spec" in str(e.value) and "data.ood.inat.spec" in str(e.value)
    assert "data.ood.cub" not in str(e.value)


def test_validation_reads_backbone_shapes_from_the_registry() -> None:
    from visae.backbones.registry import backbone_entry
    from visae.study.validate import backbone_shape

    entry = backbone_entry("dinov2-s14-offline")
    assert entry is not None and entry.shape == (12, 384)
    assert backbone_shape("dinov2-s14-offline") == (12, 384)
    assert backbone_shape("shuffled:random-vit-s14") == (12, 384)
    assert backbone_shape("tiny-vit-a") == (2, 32)  # a plugin's backbone without a declared shape


def test_warning_kind_is_kept_for_pairing(setup: dict[str, Path]) -> None:
    """The geometry check does not swallow the backbone/layer pairing warning (same grid, other backbone)."""
    root = setup["root"]
    foreign = _cache(root, "foreign", backbone="other-net", layer=2)
    from visae.metrics.evaluate import evaluate

    with pytest.warns(VisaeWarning, match="other-net layer 2"):
        evaluate(setup["sae"], foreign, metrics=["m2"], device="cpu", bootstrap={"n_boot": 0})


def test_family_hyper_parameters_are_checked(tmp_path: Path) -> None:
    from visae.sae.registry import family_hparams
    from visae.sae.train import SAESpec

    assert family_hparams("relu") == {"l1_coeff": 1.0}  # read from the family's constructor
    with pytest.raises(ConfigError, match="bandwith is not a setting of the jumprelu family"):
        SAESpec(family="jumprelu", expansion=2, k=4, hparams={"bandwith": 0.01})
    path = _study(tmp_path, saes=[{"name": "main", "family": "topk", "expansions": [2], "ks": [4],
                                   "hparams": {"l1_coeff": 3}}])
    _refused(tmp_path, ["study", "status", str(path)], "saes[0].hparams", "l1_coeff", "topk")
