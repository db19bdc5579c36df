"""Every SAE family recovers the planted dictionary of the synthetic ``easy`` preset (issue 24 on issue 23's
ground truth): trained through the public API (``generate`` → ``train_saes`` → ``evaluate(…, ["recovery"])``)
on one pass, each family's MCC and F1 on held-out images clear a bar set from measured values with a margin,
and clear what the same family gets after a single optimizer step (a random dictionary of the same shape),
so the bars can fail.

``easy`` plants 16 orthogonal atoms in 32 dimensions; every SAE has 16 latents (K = 1, the target L0 of
JumpReLU and Gated; ReLU has none). With as many latents as atoms any basis of the atoms' span reconstructs
the tokens, so only the sparsity rule makes a family find the atoms themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from visae.metrics.evaluate import evaluate
from visae.metrics.recovery import RecoveryResult
from visae.sae.train import SAESpec, TrainConfig, train_saes
from visae.synth import generate

TRAIN: dict[str, Any] = {"device": "cpu", "progress": False, "batch_size": 256, "epochs": 3, "lr": 3e-3,
                         "seed": 42}
ORTHO_COEFF = 1.0
# JumpReLU: the paper's bandwidth (1e-3) and the 1e-3 threshold start leave the thresholds in the gap between
# the off and on pre-activations, where the kernel sees no token and they stop (L0 ≈ 4 for a target of 1,
# MCC ≈ 0.6 after these 750 steps, or 2500); thresholds started inside the on values with a wider kernel
# come down to the target instead (L0 1.08, MCC 0.85). Started higher (3.0), features that never reach
# their threshold die (5–7 of 16).
JUMPRELU = {"init_threshold": 2.0, "bandwidth": 0.05}

# name → (spec, MCC bar, F1 bar). Measured (these settings, seed 42; MCC / F1): BatchTopK 0.971 / 0.889,
# TopK 0.897 / 0.776, JumpReLU 0.854 / 0.831, ReLU 0.936 / 0.994, Matryoshka 0.989 / 0.911, Gated
# 0.818 / 0.804, Archetypal 0.644 / 0.543, BatchTopK + ortho 0.964 / 0.867; after one step all ≤ 0.35 / 0.30
# but Archetypal, 0.496 / 0.476 (its k-means centroids are data points already). Training is deterministic
# on CPU, so the bars hold for this seed; other seeds spread (seeds 1–3 after the Archetypal learning-rate
# change: TopK 0.70–0.83, JumpReLU 0.65–0.91, Archetypal 0.57–0.70 MCC, the rest ≥ 0.86). Archetypal keeps
# 64 centroids: with its default (as many as latents) its MCC swings with the seed, 0.47 to 0.74 here.
FAMILIES: dict[str, tuple[SAESpec, float, float]] = {
    "batchtopk": (SAESpec(family="batchtopk", d_sae=16, k=1, name="batchtopk"), 0.85, 0.75),
    "topk": (SAESpec(family="topk", d_sae=16, k=1, name="topk"), 0.80, 0.65),
    "jumprelu": (SAESpec(family="jumprelu", d_sae=16, k=1, hparams=JUMPRELU, name="jumprelu"), 0.70, 0.65),
    "relu": (SAESpec(family="relu", d_sae=16, name="relu"), 0.85, 0.85),
    "matryoshka": (SAESpec(family="matryoshka", d_sae=16, k=1, name="matryoshka"), 0.85, 0.75),
    "gated": (SAESpec(family="gated", d_sae=16, k=1, name="gated"), 0.70, 0.65),
    "archetypal": (SAESpec(family="archetypal", d_sae=16, k=1, hparams={"n_centroids": 64},
                           name="archetypal"), 0.60, 0.40),
}
ORTHO = "batchtopk_ortho"
BARS = {**{name: bars for name, (_, *bars) in FAMILIES.items()}, ORTHO: tuple(FAMILIES["batchtopk"][1:])}


def recovery(sae: Path, held: Path) -> RecoveryResult:
    res = evaluate(sae, held, ["recovery"], device="cpu", bootstrap={"n_boot": 0},
                   configs={"recovery": {"write_features": False}})["recovery"]
    assert isinstance(res, RecoveryResult)
    return res


def train_all(train: Path, out: Path, **settings: Any) -> dict[str, Path]:
    """Every family on one pass, then BatchTopK with the orthogonality penalty (a training-wide option)."""
    cfg = {**TRAIN, **settings}
    specs = [spec for spec, *_ in FAMILIES.values()]
    paths = dict(zip(FAMILIES, train_saes(train, specs, out / "families", TrainConfig(**cfg)), strict=True))
    ortho = SAESpec(family="batchtopk", d_sae=16, k=1, name=ORTHO)
    (paths[ORTHO],) = train_saes(train, ortho, out / "ortho", TrainConfig(**cfg, ortho_coeff=ORTHO_COEFF))
    return paths


@pytest.fixture(scope="module")
def easy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The training cache (1000 images, 64 000 tokens) and 200 held-out images of ``easy``."""
    root = tmp_path_factory.mktemp("easy")
    return (generate("easy", root, n_images=1000, progress=False),
            generate("easy", root, n_images=200, split="val", progress=False))


@pytest.fixture(scope="module")
def untrained(easy: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, RecoveryResult]:
    """Each family after one step: its initial dictionary (Archetypal's centroids drawn, BatchTopK's
    threshold calibrated), the random baseline of its shape."""
    train, held = easy
    paths = train_all(train, tmp_path_factory.mktemp("one_step"), steps=1)
    return {name: recovery(path, held) for name, path in paths.items()}


@pytest.fixture(scope="module")
def trained(easy: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, RecoveryResult]:
    train, held = easy
    paths = train_all(train, tmp_path_factory.mktemp("trained"))
    return {name: recovery(path, held) for name, path in paths.items()}


def test_a_random_dictionary_stays_below_every_bar(untrained: dict[str, RecoveryResult]) -> None:
    for name, res in untrained.items():
        mcc_bar, f1_bar = BARS[name]
        assert res.mcc < mcc_bar, f"{name}: untrained MCC {res.mcc:.3f}"
        # Archetypal's first atoms are k-means centroids, each a detector of a few planted features: its F1
        # bar is below them and the slow test holds the trained SAE above them instead
        assert name == "archetypal" or res.f1 < f1_bar, f"{name}: untrained F1 {res.f1:.3f}"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BARS))
def test_each_family_recovers_the_planted_dictionary(name: str, trained: dict[str, RecoveryResult],
                                                     untrained: dict[str, RecoveryResult]) -> None:
    res, base = trained[name], untrained[name]
    mcc_bar, f1_bar = BARS[name]
    assert res.mcc >= mcc_bar, f"{name}: MCC {res.mcc:.3f} < {mcc_bar} (untrained {base.mcc:.3f})"
    assert res.f1 >= f1_bar, f"{name}: F1 {res.f1:.3f} < {f1_bar} (untrained {base.f1:.3f})"
    assert res.mcc > base.mcc + 0.1 and res.f1 > base.f1, \
        f"{name}: MCC {res.mcc:.3f}, F1 {res.f1:.3f} vs untrained {base.mcc:.3f}, {base.f1:.3f}"
