"""Seed stability: Hungarian matching equals brute force over all permutations; identical dictionaries
give 1; independent random ones give the random-matching expectation (brute-force Monte Carlo here)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from visae.metrics.stability import (
    StabilityConfig,
    match_atoms,
    random_matching_expectation,
    seed_stability,
)
from visae.uncertainty import BootstrapConfig


def brute_force_mean(a: np.ndarray, b: np.ndarray) -> float:
    """Best mean cosine over every one-to-one assignment (independent of scipy)."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    cos = a @ b.T
    n = len(a)
    return max(cos[np.arange(n), list(p)].mean() for p in itertools.permutations(range(n)))


def test_hungarian_equals_brute_force() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
        assert match_atoms(a, b).mean() == pytest.approx(brute_force_mean(a, b), abs=1e-12)


def test_identical_dictionaries_in_any_order_and_scale_give_one() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(50, 12))
    b = a[rng.permutation(50)] * rng.uniform(0.5, 3.0, size=(50, 1))
    r = seed_stability([a, b, a[::-1]], bootstrap=BootstrapConfig(n_boot=50))
    assert r.value == pytest.approx(1.0) and r.share_matched == 1.0
    assert (r.n_seeds, r.n_pairs, r.n_atoms, r.d_model) == (3, 3, 50, 12)
    assert r.ci_low == pytest.approx(1.0) and r.ci_high == pytest.approx(1.0)
    assert r.random_mean_cosine is not None and r.random_mean_cosine < 0.6


def test_independent_random_dictionaries_give_the_random_expectation() -> None:
    rng = np.random.default_rng(2)
    n, d, draws = 6, 4, 300
    expected = np.mean([brute_force_mean(rng.normal(size=(n, d)), rng.normal(size=(n, d)))
                        for _ in range(draws)])
    ours_mc, _ = random_matching_expectation(n, d, 0.7, n_draws=draws, seed=5)
    assert ours_mc == pytest.approx(expected, abs=0.02)  # two MC means: sd of each ~0.006
    values = [seed_stability([rng.normal(size=(n, d)) for _ in range(2)]).value for _ in range(draws)]
    assert np.mean(values) == pytest.approx(expected, abs=0.02)  # type: ignore[arg-type]


def test_random_larger_dictionaries_sit_between_bounds_and_near_expectation() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(64, 32)), rng.normal(size=(64, 32))
    r = seed_stability([a, b], StabilityConfig(n_random=10))
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    cos = an @ bn.T
    assert np.diag(cos).mean() <= r.value <= cos.max(axis=1).mean()  # type: ignore[operator]
    assert r.random_mean_cosine is not None
    assert r.value == pytest.approx(r.random_mean_cosine, abs=0.03)


def test_half_shared_dictionary_is_half_matched() -> None:
    rng = np.random.default_rng(4)
    a = rng.normal(size=(40, 64))
    b = a.copy()
    b[20:] = rng.normal(size=(20, 64))  # in 64 dimensions random atoms never reach cosine 0.7
    r = seed_stability([a, b], StabilityConfig(threshold=0.7))
    assert r.share_matched == pytest.approx(0.5)
    assert r.random_share_matched == 0.0


def test_needs_two_seeds_and_equal_widths() -> None:
    one = seed_stability([np.ones((3, 2))])
    assert one.value is None and "at least 2" in one.note
    with pytest.raises(ValueError, match="widths"):
        seed_stability([np.ones((3, 2)), np.ones((3, 4))])


def test_subsample_takes_same_rows_of_each() -> None:
    rng = np.random.default_rng(5)
    a = rng.normal(size=(30, 8))
    r = seed_stability([a, a.copy()], StabilityConfig(max_atoms=10))
    assert r.n_atoms == 10 and r.value == pytest.approx(1.0)
