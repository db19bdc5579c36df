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


def test_new_families_train_in_one_grid_and_evaluate_at_a_prefix(planted_cache: tuple[Path, torch.Tensor],
                                                                  tmp_path: Path) -> None:
    import json

    from visae.sae.train import SAESpec, TrainConfig, train_saes

    cache_path, _ = planted_cache
    cfg = TrainConfig(batch_size=256, steps=4, heldout_batches=1, progress=False, ortho_coeff=0.1)
    specs = [SAESpec(family="matryoshka", expansion=2, k=2, hparams={"widths": [12, 24]}),
             SAESpec(family="gated", expansion=2), SAESpec(family="archetypal", expansion=2, k=2)]
    paths = train_saes(cache_path, specs, tmp_path / "grid", cfg)
    assert [p.name for p in paths] == ["matryoshka_2x_k2", "gated_2x", "archetypal_2x_k2"]
    mat = load_sae(paths[0])
    assert mat.calibrated and mat.widths == [12, 24, 48]  # type: ignore[attr-defined]
    runner = CliRunner()
    res = runner.invoke(app, ["eval", "--sae", str(paths[0]), "--cache", str(cache_path), "--metrics", "m2",
                              "--set", "sae.prefix=12", "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    rec = json.loads((tmp_path / "ev" / "m2.json").read_text())
    assert rec["inputs"]["sae"].endswith("#prefix=12")
    from visae.metrics.evaluate import evaluate

    direct = evaluate(mat.with_options(prefix=12), cache_path, metrics=["m2"], device="cpu")  # type: ignore[attr-defined]
    assert rec["value"] == direct["m2"].value
    full = evaluate(mat, cache_path, metrics=["m2"], device="cpu")
    assert full["m2"].value != direct["m2"].value
    bad = runner.invoke(app, ["eval", "--sae", str(paths[0]), "--cache", str(cache_path), "--metrics", "m2",
                              "--set", "sae.prefix=5"])
    assert bad.exit_code == 2 and "sae.prefix=5" in bad.output and "[12, 24, 48]" in bad.output
    bad = runner.invoke(app, ["eval", "--sae", str(paths[1]), "--cache", str(cache_path), "--metrics", "m2",
                              "--set", "sae.prefix=5"])
    assert bad.exit_code == 2 and "gated" in bad.output
    res = runner.invoke(app, ["info"])
    assert "matryoshka" in res.output and "gated" in res.output and "archetypal" in res.output


def test_trained_new_families_export_to_saelens(planted_cache: tuple[Path, torch.Tensor],
                                                tmp_path: Path) -> None:
    """`visae export GRID OUT --format saelens` on trained Matryoshka, Gated and Archetypal SAEs: each
    subfolder loads in sae-lens with visae's raw-space codes and reconstructions; saev refuses Gated."""
    import sae_lens

    from visae.sae.train import SAESpec, TrainConfig, train_saes

    cache_path, _ = planted_cache
    cfg = TrainConfig(batch_size=256, steps=4, heldout_batches=1, progress=False)
    specs = [SAESpec(family="matryoshka", expansion=2, k=2, hparams={"widths": [12, 24]}),
             SAESpec(family="gated", expansion=2), SAESpec(family="archetypal", expansion=2, k=2)]
    paths = train_saes(cache_path, specs, tmp_path / "grid", cfg)
    res = CliRunner().invoke(app, ["export", str(tmp_path / "grid"), str(tmp_path / "lens"),
                                   "--format", "saelens"])
    assert res.exit_code == 0, res.output
    for path in paths:
        sae = load_sae(path).eval()
        ref = sae_lens.SAE.load_from_disk(str(tmp_path / "lens" / path.name)).eval()
        g = torch.Generator().manual_seed(3)
        a = sae.act_mean + float(sae.act_std) * torch.randn(64, sae.d_in, generator=g)
        with torch.no_grad():
            out = sae(sae.normalize(a))
            codes = ref.encode(a)
            recon = ref.decode(codes)
        assert int((codes > 0).sum()) > 0, path.name
        scale = max(1.0, float(recon.abs().max()))
        torch.testing.assert_close(codes, out.codes_nf, atol=1e-5 * scale, rtol=1e-5)
        torch.testing.assert_close(recon, out.recon_nd * sae.act_std + sae.act_mean, atol=1e-5 * scale,
                                   rtol=1e-5)
    bad = CliRunner().invoke(app, ["export", str(paths[1]), str(tmp_path / "saev"), "--format", "saev"])
    assert bad.exit_code == 2 and "no gated encoder" in bad.output
