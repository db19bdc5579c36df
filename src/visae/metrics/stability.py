"""Seed stability: is a feature found once found again? (The paper trains one seed per configuration.)

For SAEs of one configuration (backbone, layer, family, expansion, k) trained with different seeds, every
pair of decoders is matched one-to-one by the Hungarian algorithm on the cosine of their atoms (the rows of
``W_dec``, as overcomplete's ``cosine_hungarian_loss``; maximum total cosine, scipy
``linear_sum_assignment``). Per pair: the mean matched cosine and the share of atoms matched above a
threshold. Per configuration: the mean over its seed pairs, with a Poisson bootstrap interval over atoms.
Identical dictionaries (in any order) give 1 and 1; two independent isotropic random dictionaries give the
random-matching expectation, estimated by :func:`random_matching_expectation` (Monte Carlo) and reported
beside every value so that a reader sees how far above chance it is.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import numpy as np
from pydantic import Field
from scipy.optimize import linear_sum_assignment

from visae.config import FrozenConfig
from visae.metrics.base import MetricResult
from visae.uncertainty import BootstrapConfig, percentile_interval, poisson_weights


class StabilityConfig(FrozenConfig):
    """Settings of the seed-stability analysis."""

    threshold: float = Field(0.7, ge=-1.0, le=1.0, description="an atom is 'found again' when its matched "
                             "cosine exceeds this (0.7: a common choice for dictionary overlap)")
    max_atoms: int | None = Field(4096, ge=2, description="match at most this many random atoms of the first "
                                  "dictionary of a pair against all atoms of the second (Hungarian is cubic "
                                  "in F; None: all)")
    live_only: bool = Field(False, description="drop atoms whose decoder row is all zero before matching")
    n_random: int = Field(5, ge=1, description="Monte Carlo draws of the random-matching expectation (each "
                          "averages thousands of atoms, so a few suffice; cached per shape)")
    seed: int = Field(0, description="seed of the atom subsample and of the random expectation")


class StabilityResult(MetricResult):
    """One configuration's stability: ``value`` is the mean matched cosine over its seed pairs."""

    share_matched: float | None = Field(None, description="mean share of atoms with matched cosine > "
                                        "threshold")
    threshold: float = Field(0.7, description="the threshold of share_matched")
    random_mean_cosine: float | None = Field(None, description="expected mean matched cosine of two "
                                             "independent isotropic random dictionaries of the same shape")
    random_share_matched: float | None = Field(None, description="expected share above threshold for them")
    n_seeds: int = Field(0, description="SAEs (seeds) of this configuration")
    n_pairs: int = Field(0, description="seed pairs matched")
    n_atoms: int = Field(0, description="atoms matched per pair")
    d_model: int = Field(0, description="atom dimension")


def unit_rows(w_fd: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float64."""
    w = np.asarray(w_fd, dtype=np.float64)
    norm = np.linalg.norm(w, axis=1, keepdims=True)
    return w / np.where(norm > 0, norm, 1.0)


def match_atoms(dec_a_fd: np.ndarray, dec_b_fd: np.ndarray) -> np.ndarray:
    """Matched cosine of each atom of ``a`` under the one-to-one assignment to ``b`` that maximizes the
    total cosine; ``[min(Fa, Fb)]`` in the order of ``a``'s matched rows."""
    cos_ab = unit_rows(dec_a_fd) @ unit_rows(dec_b_fd).T
    rows, cols = linear_sum_assignment(cos_ab, maximize=True)
    return np.asarray(cos_ab[rows, cols])


def _prepare(decoders: Sequence[np.ndarray], config: StabilityConfig) -> tuple[list[np.ndarray], np.ndarray]:
    """The decoders (live rows only when asked) and the rows of each pair's first dictionary to match."""
    out = [np.asarray(d, dtype=np.float64) for d in decoders]
    if config.live_only:
        out = [d[np.linalg.norm(d, axis=1) > 0] for d in out]
    n = min(len(d) for d in out)
    rows = np.arange(n)
    if config.max_atoms is not None and n > config.max_atoms:
        rng = np.random.default_rng(config.seed)
        rows = np.sort(rng.choice(n, size=config.max_atoms, replace=False))
    return out, rows


@functools.lru_cache(maxsize=64)
def random_matching_expectation(n_atoms: int, d_model: int, threshold: float, n_draws: int = 20,
                                seed: int = 0, n_atoms_b: int | None = None) -> tuple[float, float]:
    """(mean matched cosine, share above ``threshold``) of ``n_atoms`` Gaussian (isotropic) atoms in
    ``d_model`` dimensions matched into an independent dictionary of ``n_atoms_b`` (default the same),
    averaged over ``n_draws`` Monte Carlo pairs."""
    n_b = n_atoms if n_atoms_b is None else max(n_atoms, n_atoms_b)
    rng = np.random.default_rng(np.random.SeedSequence([seed, n_atoms, n_b, d_model]))
    means, shares = [], []
    for _ in range(n_draws):
        cos = match_atoms(rng.normal(size=(n_atoms, d_model)), rng.normal(size=(n_b, d_model)))
        means.append(cos.mean())
        shares.append((cos > threshold).mean())
    return float(np.mean(means)), float(np.mean(shares))


def seed_stability(decoders: Sequence[np.ndarray], config: StabilityConfig | None = None,
                   bootstrap: BootstrapConfig | None = None, label: str = "stability") -> StabilityResult:
    """Stability of one configuration from its seeds' decoders (``[F, D]`` each, rows = atoms)."""
    config = config or StabilityConfig()
    base = {"metric": label, "higher_is_better": True, "threshold": config.threshold,
            "n_seeds": len(decoders)}
    if len(decoders) < 2:
        note = f"{len(decoders)} seed(s); stability needs at least 2"
        return StabilityResult(value=None, note=note, **base)
    dims = {np.asarray(d).shape[1] for d in decoders}
    if len(dims) != 1:
        raise ValueError(f"stability: decoders of one configuration have different widths {sorted(dims)}")
    dec, rows = _prepare(decoders, config)
    pairs = list(itertools.combinations(range(len(dec)), 2))
    matched_pa = np.stack([match_atoms(dec[i][rows], dec[j]) for i, j in pairs])  # [pairs, atoms]
    n_atoms, d_model = matched_pa.shape[1], dims.pop()
    rand_mean, rand_share = random_matching_expectation(n_atoms, d_model, config.threshold,
                                                        config.n_random, config.seed,
                                                        n_atoms_b=min(len(d) for d in dec))
    result = StabilityResult(
        value=float(matched_pa.mean()), share_matched=float((matched_pa > config.threshold).mean()),
        random_mean_cosine=rand_mean, random_share_matched=rand_share, n_pairs=len(pairs), n_atoms=n_atoms,
        d_model=d_model, **base)
    if bootstrap is not None and bootstrap.n_boot > 0:
        # atoms are the unit: the same Poisson weight for an atom's matched cosine in every pair
        w_ab = poisson_weights(np.arange(n_atoms), bootstrap.n_boot, bootstrap.seed).astype(np.float64)
        per_atom = matched_pa.mean(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            reps = (w_ab * per_atom[:, None]).sum(axis=0) / w_ab.sum(axis=0)
        result = result.with_interval(percentile_interval(reps, bootstrap.level), unit="atoms")  # type: ignore[assignment]
    return result
