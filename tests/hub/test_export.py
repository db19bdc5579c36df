"""``visae export``: a hub repo folder (checkpoints, a subfolder per configuration, a model card) that
loads back with visae.load_sae, locally and through the offline hub cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from visae.backbones.layout import TokenLayout
from visae.cache.testing import write_synthetic_cache
from visae.cli import app
from visae.hub_testing import write_authors_repo, write_hub_repo
from visae.io import sha256_file
from visae.sae.checkpoint import load_sae, sae_fingerprint
from visae.sae.train import SAESpec, TrainConfig, train_saes

D = 8


@pytest.fixture
def grid(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    layout = TokenLayout(("cls",), 4, 4, 16)
    cache = write_synthetic_cache(tmp_path / "cache", rng.normal(size=(40, 16, D)).astype(np.float32),
                                  np.arange(40) % 2, ["a", "b"], layout, backbone="clip-b16", layer=11)
    specs = [SAESpec(family="batchtopk", expansion=2, k=4), SAESpec(family="topk", expansion=4, k=8)]
    train_saes(cache, specs, tmp_path / "grid", TrainConfig(batch_size=64, steps=3, heldout_batches=1,
                                                            progress=False, device="cpu"))
    return tmp_path / "grid", cache


def _card(path: Path) -> Any:
    from huggingface_hub import ModelCard

    return ModelCard.load(path)


def test_export_grid_with_metrics_loads_back(grid: tuple[Path, Path], tmp_path: Path,
                                             hub_cache: Path) -> None:
    grid_dir, cache = grid
    runner = CliRunner()
    res = runner.invoke(app, ["eval", "--sae", str(grid_dir / "batchtopk_2x_k4"), "--cache", str(cache),
                              "--metrics", "m2", "--out", str(tmp_path / "results" / "b"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    m2 = json.loads((tmp_path / "results" / "b" / "m2.json").read_text())["value"]
    out = tmp_path / "export"
    res = runner.invoke(app, ["export", str(grid_dir), str(out), "--results", str(tmp_path / "results"),
                              "--repo-id", "me/clip-saes"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "batchtopk_2x_k4", "topk_4x_k8"]
    for name in ("batchtopk_2x_k4", "topk_4x_k8"):
        assert sorted(p.name for p in (out / name).iterdir()) == ["config.yaml", "model.safetensors"]
        assert sae_fingerprint(load_sae(out / name)) == sae_fingerprint(load_sae(grid_dir / name))
        weights = "model.safetensors"
        assert sha256_file(out / name / weights) == sha256_file(grid_dir / name / weights)
    card = _card(out / "README.md")
    assert card.data.library_name == "visae"
    assert card.data.base_model == "timm/vit_base_patch16_clip_224.openai"
    text = card.text
    assert 'visae.load_sae("me/clip-saes", subfolder="batchtopk_2x_k4")' in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| batchtopk_2x_k4 |") and "m2" not in ln
               and ln.count("|") == 3)
    assert f"{m2:.4g}" in row  # the metrics table holds the eval's value, the other SAE has none
    assert "| topk_4x_k8 | — |" in text
    assert "`clip-b16`, block 11" in text and sha256_file(out / "topk_4x_k8" / "model.safetensors") in text
    # the export is a hub repo: through the offline hub cache it loads by repo and subfolder
    files = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    write_hub_repo(hub_cache, "me/clip-saes", files)
    back = load_sae("me/clip-saes:topk_4x_k8")
    assert sae_fingerprint(back) == sae_fingerprint(load_sae(grid_dir / "topk_4x_k8"))


def test_export_single_and_foreign(grid: tuple[Path, Path], tmp_path: Path, hub_cache: Path) -> None:
    grid_dir, _ = grid
    out = tmp_path / "one"
    res = CliRunner().invoke(app, ["export", str(grid_dir / "topk_4x_k8"), str(out)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.yaml", "model.safetensors"]
    assert 'visae.load_sae("<org>/<repo>")' in _card(out / "README.md").text
    # not empty any more: refused without --force, nothing changed
    before = sha256_file(out / "README.md")
    res = CliRunner().invoke(app, ["export", str(grid_dir / "topk_4x_k8"), str(out)])
    assert res.exit_code == 2 and "--force" in res.output and sha256_file(out / "README.md") == before
    # the authors' format is converted to ours, with where it came from
    snap = write_authors_repo(hub_cache, "visaebench/x-saes", [(2, 4)], d_in=D)
    res = CliRunner().invoke(app, ["export", str(snap / "batchtopk_2x_k4"), str(tmp_path / "conv")])
    assert res.exit_code == 0, res.output
    ref, conv = load_sae(snap / "batchtopk_2x_k4"), load_sae(tmp_path / "conv")
    x = torch.randn(5, D)
    torch.testing.assert_close(conv(x).recon_nd, ref(x).recon_nd)
    assert "converted_from" in (tmp_path / "conv" / "README.md").read_text()


def test_export_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(app, ["export", str(tmp_path / "empty"), str(tmp_path / "o")])
    assert res.exit_code == 2 and "no SAE checkpoint" in res.output and not (tmp_path / "o").exists()


def test_ls_folder_lists_caches_and_saes(grid: tuple[Path, Path], tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["ls", str(tmp_path)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split()[:7] == ["kind", "path", "backbone", "layer", "source", "split", "images"]
    rows = {ln.split()[1]: ln.split() for ln in lines[1:]}
    assert rows["cache"][:7] == ["cache", "cache", "clip-b16", "11", "synthetic:clip-b16", "train", "40"]
    assert rows["grid/batchtopk_2x_k4"][:7] == ["sae", "grid/batchtopk_2x_k4", "clip-b16", "11",
                                                "synthetic:clip-b16", "train", "40"]
    assert "topk" in rows["grid/topk_4x_k8"]
    res = CliRunner().invoke(app, ["ls", str(tmp_path / "grid" / "trained.json")])
    assert res.exit_code == 2 and "is a file" in res.output


def test_export_a_hub_repo_converts_every_configuration(tmp_path: Path, hub_cache: Path) -> None:
    snap = write_authors_repo(hub_cache, "visaebench/clip-vitb16-saes", [(2, 4), (4, 8)], d_in=D)
    res = CliRunner().invoke(app, ["export", "visaebench/clip-vitb16-saes", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["README.md", "batchtopk_2x_k4",
                                                                  "batchtopk_4x_k8"]
    x = torch.randn(3, D)
    for name in ("batchtopk_2x_k4", "batchtopk_4x_k8"):
        torch.testing.assert_close(load_sae(tmp_path / "o" / name)(x).recon_nd,
                                   load_sae(f"visaebench/clip-vitb16-saes:{name}")(x).recon_nd)
    card = (tmp_path / "o" / "README.md").read_text()
    assert "repo: visaebench/clip-vitb16-saes" in card and f"commit: {snap.name}" in card
    res = CliRunner().invoke(app, ["export", "visaebench/nope-saes", str(tmp_path / "p")])
    assert res.exit_code == 2 and "visaebench/nope-saes" in res.output and not (tmp_path / "p").exists()
