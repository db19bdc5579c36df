"""Recovery: SynthSAEBench's own code (sae_lens.synthetic.evals) as the reference for MCC and the
token-level precision/recall/F1; hand-made cases for matching, absorption, dead and dense latents; a clean
refusal on a cache without ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from visae.backbones.layout import TokenLayout
from visae.cache.reader import open_cache
from visae.cache.testing import write_synthetic_cache
from visae.cli import app
from visae.errors import ConfigError
from visae.metrics.evaluate import evaluate
from visae.metrics.recovery import classification_scores, cosine_matrix, hungarian_match
from visae.sae.checkpoint import save_sae
from visae.sae.registry import make_sae
from visae.synth import GroundTruth, generate
from visae.synth.oracle import oracle_sae

NO_BOOT = {"n_boot": 0}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate("spatial", tmp_path_factory.mktemp("rec"), n_images=120, progress=False)


def _perturbed_oracle(cache: Path, seed: int = 0) -> torch.nn.Module:
    """The oracle with half its decoder rows pushed away from their atoms, a few latents silenced and a
    few made to fire everywhere: every count of the metric is exercised."""
    sae = oracle_sae(cache)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        f = sae.d_sae
        noisy = torch.arange(0, f, 2)
        sae.W_dec[noisy] += 0.9 * torch.randn(len(noisy), sae.d_in, generator=gen)
        sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True))
        sae.threshold[:3] = 1e9           # dead
        sae.b_enc[3:5] = 50.0             # fire on every token: dense
        sae.threshold[5:20] *= torch.rand(15, generator=gen) * 4  # looser and stricter detectors
    return sae


def test_matches_synthsaebench_reference(cache: Path) -> None:
    from sae_lens.synthetic.evals import compute_classification_metrics, mean_correlation_coefficient

    sae = _perturbed_oracle(cache)
    res = evaluate(sae, cache, ["recovery"], device="cpu", bootstrap=NO_BOOT)["recovery"]
    acts = open_cache(cache)
    truth = GroundTruth.load(cache)
    x = torch.from_numpy(acts.read_images(0, acts.n_images).astype(np.float32)).reshape(-1, acts.d_model)
    with torch.no_grad():
        codes = sae.encode(sae.normalize(x))
    gt = np.concatenate([truth.model.scene(i).dense(acts.n_patches, truth.n_features)
                         for i in range(acts.n_images)])
    ref = compute_classification_metrics(codes, torch.from_numpy(gt), sae.W_dec.detach(),
                                         torch.from_numpy(truth.dictionary_fd).float())
    assert res.precision == pytest.approx(ref.precision, abs=1e-6)
    assert res.recall == pytest.approx(ref.recall, abs=1e-6)
    assert res.f1 == pytest.approx(ref.f1_score, abs=1e-6)
    assert res.value == res.f1
    mcc = mean_correlation_coefficient(sae.W_dec.detach(), torch.from_numpy(truth.dictionary_fd).float())
    assert res.mcc == pytest.approx(mcc, abs=1e-5)
    fires = (codes != 0).float().mean(0).numpy()
    assert res.dead == int((fires == 0).sum()) >= 3
    assert res.dense == int((fires > 0.2).sum()) >= 2
    assert res.sae_l0 == pytest.approx(float((codes != 0).sum()) / len(codes))
    assert res.true_l0 == pytest.approx(float((gt > 0).sum()) / len(gt))
    assert 0 < res.f1 < 1 and 0 < res.mcc < 1


def test_hungarian_matching_undoes_a_permutation_and_signs() -> None:
    rng = np.random.default_rng(0)
    atoms = np.linalg.qr(rng.standard_normal((20, 12)))[0].T  # 12 orthonormal atoms in R^20
    perm = rng.permutation(12)
    decoder = atoms[perm] * rng.choice([-1.0, 1.0], (12, 1))
    latent_f, cos_f = hungarian_match(cosine_matrix(decoder, atoms))
    np.testing.assert_array_equal(perm[latent_f], np.arange(12))
    np.testing.assert_allclose(cos_f, 1.0)
    # fewer latents than atoms: the unmatched atoms get −1 and cosine 0
    latent_f, cos_f = hungarian_match(cosine_matrix(decoder[:5], atoms))
    assert (latent_f >= 0).sum() == 5 and (cos_f == 0).sum() == 7


def test_classification_scores_by_hand() -> None:
    tp, fp, fn = np.array([3.0, 0, 0]), np.array([1.0, 2, 0]), np.array([1.0, 0, 0])
    p, r, f = classification_scores(tp, fp, fn)
    assert p == pytest.approx(0.75 / 3) and r == pytest.approx(0.75 / 3) and f == pytest.approx(0.75 / 3)


def test_feature_recall_counts_atoms_above_the_threshold(cache: Path) -> None:
    sae = _perturbed_oracle(cache)
    res = evaluate(sae, cache, ["recovery"], device="cpu", bootstrap=NO_BOOT,
                   configs={"recovery": {"cos_threshold": 0.99}})["recovery"]
    cos = cosine_matrix(sae.W_dec.detach().numpy(), GroundTruth.load(cache).dictionary_fd)
    _, matched = hungarian_match(cos)
    assert res.n_recovered == int((matched >= 0.99).sum()) == sae.d_sae // 2  # the unperturbed half
    assert res.feature_recall == pytest.approx(0.5)


def test_writes_the_per_feature_table(cache: Path, tmp_path: Path) -> None:
    import pandas as pd

    evaluate(oracle_sae(cache), cache, ["recovery"], out_dir=tmp_path, device="cpu", bootstrap=NO_BOOT,
             configs={"recovery": {"m1": {"min_valid_images": 5}}})
    df = pd.read_parquet(tmp_path / "recovery_features.parquet")
    truth = GroundTruth.load(cache)
    assert len(df) == truth.n_features and (df["latent"] == np.arange(truth.n_features)).all()
    ok = df["m1_true_images"] >= 5
    np.testing.assert_allclose(df.loc[ok, "m1_learned"], df.loc[ok, "m1_true"], atol=5e-3)
    assert set(df["kind"]) <= {"blob", "region", "random"}


def test_refused_without_ground_truth(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    plain = write_synthetic_cache(tmp_path / "plain", rng.standard_normal((8, 16, 6)).astype(np.float32),
                                  np.arange(8) % 2, ["a", "b"], TokenLayout((), 4, 4, 14))
    sae = make_sae("relu", 6, d_sae=12)
    with pytest.raises(ConfigError, match="not a synthetic cache"):
        evaluate(sae, plain, ["recovery"], device="cpu")
    save_sae(sae, tmp_path / "sae")
    res = CliRunner().invoke(app, ["eval", "--sae", str(tmp_path / "sae"), "--cache", str(plain),
                                   "--metrics", "recovery", "--out", str(tmp_path / "ev")])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "ground_truth.json" in lines[0], res.output
