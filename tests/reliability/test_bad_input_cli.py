"""A newcomer's bad input at the CLI (issue 13): each case exits with code 2 and one ``error: …`` line naming
the file or field and the fix, prints no traceback, and changes nothing already written. Also: no silent
overwrite (``--force``), no silently ignored argument, no silent wrong pairing (``--strict``), and the
one-command evaluation (``visae eval --images``, ``--metrics raw`` without an SAE)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import visae.study.testing  # noqa: F401  (tiny-vit-a, tiny-vit-b)
from visae.backbones.layout import TokenLayout
from visae.cache.testing import TinyViTBackbone, write_synthetic_cache
from visae.errors import ConfigError, VisaeWarning
from visae.sae.checkpoint import save_sae
from visae.sae.registry import make_sae
from visae.sae.train import SAESpec, TrainConfig, train_saes

LAYOUT = TokenLayout(("cls",), 4, 4, 8)


def _cli(args: list[str]) -> tuple[int, str]:
    from visae.cli import app

    res = CliRunner().invoke(app, args)
    text = res.output  # stdout and stderr together
    if res.stderr_bytes is not None and res.stderr not in text:
        text += res.stderr
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        import traceback

        text += "Traceback\n" + "".join(traceback.format_exception(res.exception))
    return res.exit_code, text


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root``: file bytes, or None for a folder."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def _refused(root: Path, args: list[str], *words: str) -> str:
    """Run the CLI; assert exit code 2, exactly one error line holding ``words``, no traceback, nothing
    changed."""
    before = _snapshot(root)
    code, text = _cli(args)
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert code == 2, (args, code, text[-2000:])
    assert "Traceback" not in text, text[-2000:]
    assert len(errors) == 1, text[-2000:]
    for w in words:
        assert w in errors[0], (w, errors[0])
    assert _snapshot(root) == before, "a refused command changed files"
    return errors[0]


def _cache(root: Path, name: str = "syn", backbone: str = "synthetic", layer: int = 0, seed: int = 0,
           n: int = 24) -> Path:
    acts = np.random.default_rng(seed).normal(size=(n, 16, 8)).astype(np.float32)
    return write_synthetic_cache(root / name, acts, np.arange(n) % 3, ["x", "y", "z"], LAYOUT,
                                 backbone=backbone, layer=layer, shard_images=8)


def _train(cache: Path, out: Path, **settings: Any) -> Path:
    cfg = TrainConfig(batch_size=16, heldout_batches=1, steps=3, device="cpu", progress=False, **settings)
    return train_saes(cache, SAESpec(family="topk", expansion=2, k=2), out, cfg)[0]


@pytest.fixture()
def setup(tmp_path: Path) -> dict[str, Path]:
    cache = _cache(tmp_path)
    sae = _train(cache, tmp_path / "t")
    (tmp_path / "afile").write_text("not a folder\n")
    return {"root": tmp_path, "cache": cache, "sae": sae, "file": tmp_path / "afile"}


# --- item 3: errors, not tracebacks
# --------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["gpu", "cuda:99", *([] if torch.cuda.is_available() else ["cuda"])])
def test_device_this_machine_cannot_serve(setup: dict[str, Path], device: str) -> None:
    root, cache, sae = setup["root"], setup["cache"], setup["sae"]
    fix = "use --device cpu" if device != "gpu" else "use auto, cpu, cuda"
    _refused(root, ["train", "--cache", str(cache), "--out", str(root / "new"), "--device", device],
             "device", f"'{device}'", fix)
    _refused(root, ["eval", "--sae", str(sae), "--cache", str(cache), "-m", "m2", "--device", device,
                    "--out", str(root / "ev")], "device", f"'{device}'", fix)
    _refused(root, ["cache", "-b", "tiny-vit-a", "--source", "offline:digits", "-l", "0", "-o",
                    str(root / "c"), "--device", device], "device", f"'{device}'", fix)


@pytest.mark.parametrize(("setting", "field"),
                         [("lr=-1", "lr"), ("lr=.nan", "lr"), ("betas=[0.9,1.5]", "betas"),
                                                 ("aux_coeff=-0.1", "aux_coeff"),
                          ("batch_size=0", "batch_size")])
def test_invalid_optimizer_settings(setup: dict[str, Path], setting: str, field: str) -> None:
    root = setup["root"]
    _refused(root,
             ["train", "--cache", str(setup["cache"]), "--out", str(setup["sae"].parent), "--family", "topk",
                    "--expansion", "2", "--k", "2", "--set", setting], f"{field}")


def test_invalid_sae_grid(setup: dict[str, Path]) -> None:
    root = setup["root"]
    args = ["train", "--cache", str(setup["cache"]), "--out", str(root / "new"), "--family", "topk"]
    _refused(root, [*args, "--expansion", "-2", "--k", "2"], "expansion", "greater than 0")
    _refused(root, [*args, "--expansion", "2", "--k", "0"], "k", "greater than or equal to 1")


def test_output_path_is_a_file(setup: dict[str, Path]) -> None:
    root, f = setup["root"], setup["file"]
    _refused(root, ["train", "--cache", str(setup["cache"]), "--out", str(f), "--device", "cpu"],
             str(f), "is a file", "give a folder path")
    _refused(root, ["eval", "--sae", str(setup["sae"]), "--cache", str(setup["cache"]), "-m", "m2",
                    "--device", "cpu", "--out", str(f / "sub")], str(f), "which is a file")
    _refused(root, ["cache", "-b", "tiny-vit-a", "--source", "offline:digits", "-l", "0", "-o", str(f),
                    "--device", "cpu"], str(f), "is a file")


def test_corrupt_results_table_given_to_analyze(setup: dict[str, Path]) -> None:
    root = setup["root"]
    bad = root / "results.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    _refused(root, ["analyze", str(bad)], str(bad), "cannot read the results table")


def test_empty_or_unreadable_weights(setup: dict[str, Path]) -> None:
    root = setup["root"]
    broken = root / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_bytes((setup["sae"] / "config.yaml").read_bytes())
    (broken / "model.safetensors").write_bytes(b"")
    _refused(root,
             ["eval", "--sae", str(broken), "--cache", str(setup["cache"]), "-m", "m2", "--device", "cpu"],
             "model.safetensors", "empty (0 bytes)")
    (broken / "model.safetensors").write_bytes(b"\x01" * 40)
    _refused(root,
             ["eval", "--sae", str(broken), "--cache", str(setup["cache"]), "-m", "m2", "--device", "cpu"],
             "model.safetensors", "not a readable safetensors file")
    for name, data in (("empty.pt", b""), ("junk.safetensors", b"\x00" * 16)):
        (root / name).write_bytes(data)
        _refused(root, ["cache", "-b", "vit_tiny_patch16_224", "--source", "offline:digits", "-l", "0",
                        "-o", str(root / "c"), "--device", "cpu", "--set", f"weights_path={root / name}"],
                 f"weights_path {root / name}")


def test_python_api_config_errors_name_the_field_in_words() -> None:
    with pytest.raises(ConfigError) as e:
        TrainConfig(lr=-1, betas=(0.9, 2.0))
    msg = str(e.value)
    assert msg.startswith("TrainConfig: invalid configuration: ") and "lr: should be greater than 0" in msg
    assert "pydantic" not in msg and "validation error" not in msg and "\n" not in msg
    with pytest.raises(ConfigError, match=r"SAESpec: invalid configuration: give expansion or d_sae"):
        SAESpec(family="topk", k=4)
    from visae.metrics.m4_sparse_probing import M4Config

    with pytest.raises(ConfigError,
                       match=r"M4Config: invalid configuration: probe\.max_iter: should be greater"):
        M4Config(probe={"max_iter": 0})


# --- item 5: no silent overwrite
# -----------------------------------------------------------------------------
def test_train_into_a_folder_of_other_settings_or_cache(setup: dict[str, Path]) -> None:
    root, cache, sae = setup["root"], setup["cache"], setup["sae"]
    out = sae.parent
    base = ["train", "--cache", str(cache), "--out", str(out), "--family", "topk", "--expansion",
            "2", "--k", "2",
            "--batch-size", "16", "--steps", "3", "--device", "cpu", "--set", "heldout_batches=1",
            "--set", "progress=false"]
    _refused(root, [*base, "--set", "lr=0.01"], str(out), "lr 0.001 → 0.01", "--force")
    other = _cache(root, "other", seed=1)
    _refused(root, [*base[:2], str(other), *base[3:]], "cache hash", "--force")
    from safetensors.torch import load_file

    weights = load_file(sae / "model.safetensors")["W_dec"]
    code, text = _cli([*base, "--set", "checkpoint_every=7"])  # a runtime setting: the same run, resumed
    assert code == 0, text
    assert torch.equal(load_file(sae / "model.safetensors")["W_dec"], weights)
    code, text = _cli([*base, "--set", "lr=0.01", "--force"])
    assert code == 0, text
    assert not torch.equal(load_file(sae / "model.safetensors")["W_dec"], weights)
    assert json.loads((out / "run.json").read_text())["settings"]["lr"] == 0.01


def test_eval_out_holding_results_of_another_sae(setup: dict[str, Path]) -> None:
    root, cache, sae = setup["root"], setup["cache"], setup["sae"]
    ev = root / "ev"
    code, text = _cli(["eval", "--sae", str(sae), "--cache", str(cache), "-m", "m2,m4", "--device", "cpu",
                       "--out", str(ev), "--set", "m4.ks=[1,2]"])
    assert code == 0, text
    assert (ev / "m4_curve.csv").is_file()
    other = _train(cache, root / "t2", lr=0.01)
    args = ["eval", "--sae", str(other), "--cache", str(cache), "-m", "m2", "--device", "cpu",
            "--out", str(ev)]
    _refused(root, args, str(ev), "another SAE or cache", "--force")
    code, text = _cli([*args, "--force"])
    assert code == 0, text
    # m4 of the old SAE (its tables and its SAEBench-shaped copy) replaced, not left beside
    assert sorted(p.name for p in ev.iterdir()) == ["m2.json", "saebench"]
    assert sorted(p.name for p in (ev / "saebench").iterdir()) == ["m2.json"]
    code, text = _cli(args)  # the same SAE and cache again: fine
    assert code == 0, text


# --- item 6: no silent wrong results
# -------------------------------------------------------------------------
def test_build_cache_refuses_settings_a_backbone_object_cannot_take(tmp_path: Path) -> None:
    from visae.cache.writer import build_cache

    bb = TinyViTBackbone(seed=0)
    for kw, words in (({"image_size": 64}, "image_size=64"),
                      ({"weights_path": "w.pt"}, "weights_path='w.pt'"),
                      ({"device": "meta"}, "device='meta'")):
        with pytest.raises(ConfigError, match="cannot be applied to the Backbone object") as e:
            build_cache(bb, "offline:digits", 0, tmp_path / "c", progress=False, **kw)
        assert words in str(e.value) and "load_backbone(" in str(e.value)
    assert not (tmp_path / "c").exists()
    folder = build_cache(bb, "offline:digits", 0, tmp_path / "c", progress=False, image_size=32, device="cpu",
                         max_images=12, num_workers=0)  # settings that agree with the object are fine
    assert (folder / "manifest.json").is_file()


def test_sae_evaluated_on_another_backbone_or_layer(setup: dict[str, Path]) -> None:
    root, sae = setup["root"], setup["sae"]
    foreign = _cache(root, "foreign", backbone="other-net", layer=3)
    from visae.metrics.evaluate import evaluate

    with pytest.warns(VisaeWarning, match=r"trained on synthetic layer 0 .* holds other-net layer 3"):
        evaluate(sae, foreign, metrics=["m2"], device="cpu")
    code, text = _cli(["eval", "--sae", str(sae), "--cache", str(foreign), "-m", "m2", "--device", "cpu"])
    assert code == 0 and "warning: SAE" in text and "other-net layer 3" in text, text
    _refused(root,
             ["eval", "--sae", str(sae), "--cache", str(foreign), "-m", "m2", "--device", "cpu", "--strict",
                    "--out", str(root / "ev")], "synthetic layer 0", "other-net layer 3", "--strict")


@pytest.mark.parametrize(("setting", "field"), [("m4.ks=[0,4]", "ks.0"), ("m4.ks=[]", "ks"),
                                                 ("m4.headline_k=0", "headline_k"), ("m7.alpha=3", "alpha"),
                                                 ("m7.betas=[0.5,-1]", "betas.1"),
                                                ("m7.k_small=4", "k_small"),
                                                 ("m2.dead_threshold=-1", "dead_threshold"),
                                                 ("m5.top_n=1", "top_n")])
def test_metric_settings_are_validated(setup: dict[str, Path], setting: str, field: str) -> None:
    root = setup["root"]
    _refused(root, ["eval", "--sae", str(setup["sae"]), "--cache", str(setup["cache"]), "-m", "m2",
                    "--device", "cpu", "--set", setting, "--out", str(root / "ev")], field)


def _results_table(path: Path) -> Path:
    rows = [{"backbone": b, "family": "topk", "expansion": 8, "k": 4, "layer": 11, "metric": m, "value": v}
            for b in ("a", "b") for m, v in (("m1", 0.1), ("m2", 0.2))]
    pd.DataFrame(rows).to_parquet(path)
    return path


def test_analyze_filters_that_leave_no_rows(setup: dict[str, Path]) -> None:
    root = setup["root"]
    table = _results_table(root / "results.parquet")
    _refused(root, ["analyze", str(table), "--family", "jumprelu"], "--family jumprelu", "topk")
    _refused(root, ["analyze", str(table), "--layer", "3"], "--layer 3", "11")


def test_metric_without_a_value_says_why(setup: dict[str, Path]) -> None:
    code, text = _cli(["eval", "--sae", str(setup["sae"]), "--cache", str(setup["cache"]), "-m", "m1",
                       "--device", "cpu"])  # 24 images < min_valid_images 50
    assert code == 0, text
    line = next(li for li in text.splitlines() if li.startswith("m1 "))
    assert "—" in line and "no feature has 50 valid images" in line and "lower m1.min_valid_images" in line
    from visae.metrics.m2_reconstruction import M2Result

    bare = M2Result(metric="m2", value=None, higher_is_better=False, fvu=None, explained_variance=None, mse=0,
                    total_variance=0, mean_l0=0, dead=0, dead_fraction=0, d_sae=1, n_tokens=0, n_images=0)
    assert bare.note  # a None value never goes out without a reason


# --- item 8: one command for the commonest job
# ---------------------------------------------------------------
def test_eval_images_caches_once_and_evaluates(tmp_path: Path) -> None:
    from visae.cache.writer import build_cache

    train_cache = build_cache("tiny-vit-a", "offline:digits", 1, tmp_path / "caches", split="train",
                              max_images=40,
                              device="cpu", progress=False, num_workers=0)
    sae = _train(train_cache, tmp_path / "t")
    args = ["eval", "--sae", str(sae), "--images", "offline:digits", "--max-images", "30", "-m", "m2",
            "--device", "cpu", "--cache-root", str(tmp_path / "evcaches")]
    code, text = _cli(args)  # backbone and layer from the SAE's own record
    assert code == 0, text
    folders = list((tmp_path / "evcaches").iterdir())
    assert len(folders) == 1 and f"evaluation cache: {folders[0]}" in text
    manifest = json.loads((folders[0] / "manifest.json").read_text())
    assert (manifest["backbone"], manifest["layer"], manifest["n_images"]) == ("tiny-vit-a", 1, 30)
    stamp = (folders[0] / "manifest.json").stat().st_mtime_ns
    code, text2 = _cli([*args, "--backbone", "tiny-vit-a", "--layer", "1"])
    assert code == 0 and list((tmp_path / "evcaches").iterdir()) == folders, text2
    assert (folders[0] / "manifest.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    m2 = [li for li in text.splitlines() if li.startswith("m2 ")]
    assert m2 and m2 == [li for li in text2.splitlines() if li.startswith("m2 ")]
    foreign = save_sae(make_sae("topk", 32, d_sae=64, k=2), tmp_path / "foreign")  # no training record
    _refused(tmp_path, ["eval", "--sae", str(foreign), "--images", "offline:digits", "-m", "m2",
                        "--device", "cpu", "--cache-root", str(tmp_path / "evcaches")],
             "--backbone", "--layer")


def test_raw_diagnostic_without_an_sae(setup: dict[str, Path]) -> None:
    root, cache, sae = setup["root"], setup["cache"], setup["sae"]
    code, text = _cli(["eval", "--cache", str(cache), "-m", "raw", "--device", "cpu", "--out",
                       str(root / "raw"),
                       "--set", "raw.min_valid_images=2"])
    assert code == 0, text
    alone = json.loads((root / "raw" / "raw.json").read_text())
    from visae.metrics.evaluate import evaluate

    with_sae = evaluate(sae, cache, metrics=["raw"], device="cpu",
                        configs={"raw": {"min_valid_images": 2}})["raw"]
    # the raw diagnostic reads the activations only: with or without the SAE trained on this cache, one answer
    assert with_sae.value is not None and abs(alone["value"] - with_sae.value) < 1e-5
    assert alone["result"]["n_dict"] == 8 and alone["inputs"]["sae"].startswith("none")
    _refused(root, ["eval", "--cache", str(cache), "-m", "m1,raw", "--device", "cpu"], "--sae", "m1",
             "--metrics raw")


def test_report_and_analyze_on_a_folder_that_is_not_a_study(setup: dict[str, Path]) -> None:
    root, cache, sae = setup["root"], setup["cache"], setup["sae"]
    ev = root / "ev"
    code, text = _cli(["eval", "--sae", str(sae), "--cache", str(cache), "-m", "m2", "--device", "cpu",
                       "--out", str(ev)])
    assert code == 0, text
    for command in ("report", "analyze"):
        _refused(root, [command, str(ev)], "holds 'visae eval' results of one SAE (m2.json)",
                 f"'visae {command}' needs a study folder", "study.yaml")
    _refused(root, ["report", str(cache)], "not a study folder", "results/results.parquet")


def test_corrupt_results_table_given_to_report(setup: dict[str, Path]) -> None:
    root = setup["root"]
    study = root / "study"
    (study / "results").mkdir(parents=True)
    (study / "results" / "results.parquet").write_bytes(b"PAR1 not really")
    _refused(root, ["report", str(study)], "results.parquet", "cannot read the results table", "rerun")
