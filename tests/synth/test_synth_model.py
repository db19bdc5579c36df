"""The generative model: atoms, footprints, classes and the hierarchy are what the settings say."""

from __future__ import annotations

import esda
import numpy as np
import pytest
from libpysal.weights import lat2W

from visae.errors import ConfigError
from visae.synth import synth_config
from visae.synth.model import KINDS, ROLES, SyntheticModel, morans_i_maps, planted_dictionary


def test_dictionary_is_orthonormal_without_overlap_and_overlap_raises_coherence() -> None:
    rng = np.random.default_rng(0)
    atoms = planted_dictionary(rng, 40, 64, 0.0)
    np.testing.assert_allclose(atoms @ atoms.T, np.eye(40), atol=1e-12)
    coherence = []
    for overlap in (0.0, 0.2, 0.5):
        a = planted_dictionary(np.random.default_rng(1), 40, 64, overlap)
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-12)
        g = np.abs(a @ a.T)[~np.eye(40, dtype=bool)]
        coherence.append(g.mean())
    assert coherence[0] < 1e-12 < coherence[1] < coherence[2]


def test_morans_i_maps_equals_esda() -> None:
    rng = np.random.default_rng(3)
    maps = rng.random((5, 6, 7)) * (rng.random((5, 6, 7)) < 0.5)
    ours = morans_i_maps(maps)
    w = lat2W(6, 7, rook=False)
    ref = [esda.Moran(m.ravel(), w, transformation="B", permutations=0).I for m in maps]
    np.testing.assert_allclose(ours, ref, rtol=1e-10)


def test_scenes_are_seeded_per_image_and_split() -> None:
    m = SyntheticModel(synth_config("spatial"))
    a, b = m.scene(7), m.scene(7)
    assert np.array_equal(a.patch_k, b.patch_k) and np.array_equal(a.value_k, b.value_k)
    c = m.scene(7, "val")
    assert not (len(a.patch_k) == len(c.patch_k) and np.array_equal(a.patch_k, c.patch_k))
    other = SyntheticModel(synth_config("spatial", seed=1))
    assert not np.allclose(other.dictionary_fd, m.dictionary_fd)


def test_child_implies_parent_on_every_token() -> None:
    m = SyntheticModel(synth_config("hierarchical"))
    checked = 0
    for i in range(60):
        sc = m.scene(i)
        active = set(zip(sc.patch_k.tolist(), sc.feature_k.tolist(), strict=True))
        for patch, feat in active:
            parent = int(m.parent_f[feat])
            if parent >= 0:
                assert (patch, parent) in active, f"image {i}: {feat} at {patch} without parent {parent}"
                checked += 1
        variants = [f for f in set(sc.feature_k.tolist()) if ROLES[m.role_f[f]] == "variant"]
        firsts = [f for f in set(sc.feature_k.tolist()) if ROLES[m.role_f[f]] == "class"]
        assert len(variants) == len(firsts)  # exactly one variant per present class feature
    assert checked > 100


def test_class_features_follow_the_class() -> None:
    cfg = synth_config("spatial")
    m = SyntheticModel(cfg)
    n, on, off, n_off = 400, 0, 0, 0
    for i in range(n):
        sc = m.scene(i)
        present = set(sc.feature_k.tolist())
        own = m.class_features(sc.label)
        on += sum(int(f) in present for f in own)
        others = [f for c in range(cfg.n_classes) if c != sc.label for f in m.class_features(c)]
        off += sum(int(f) in present for f in others)
        n_off += len(others)
    k = cfg.class_features
    p_on = on / (n * k)
    assert abs(p_on - cfg.p_class) < 4 * np.sqrt(cfg.p_class * (1 - cfg.p_class) / (n * k))
    p_off = off / n_off
    assert abs(p_off - cfg.p_off_class) < 4 * np.sqrt(cfg.p_off_class * (1 - cfg.p_off_class) / n_off)
    assert [m.label(i) for i in range(10)] == [i % cfg.n_classes for i in range(10)]


def test_footprints_have_their_planted_size() -> None:
    cfg = synth_config("spatial", grid=16, blob_share=0.5, region_share=0.25)
    m = SyntheticModel(cfg)
    sizes: dict[str, list[float]] = {k: [] for k in KINDS}
    for i in range(150):
        sc = m.scene(i)
        feats, counts = np.unique(sc.feature_k, return_counts=True)
        for f, c in zip(feats, counts, strict=True):
            if ROLES[m.role_f[f]] == "generic":
                sizes[KINDS[m.kind_f[f]]].append(c / m.n_patches)
    assert abs(np.mean(sizes["region"]) - cfg.region_area) < 0.02
    assert abs(np.mean(sizes["random"]) - cfg.random_density) < 0.02
    blob_area = np.pi * cfg.blob_radius**2 * np.mean((np.random.default_rng(0).uniform(0.8, 1.2, 10**5)) ** 2)
    assert 0.6 * blob_area < np.mean(sizes["blob"]) * m.n_patches < 1.05 * blob_area  # edges clip blobs


def test_expected_morans_i_of_random_footprints_is_the_null() -> None:
    m = SyntheticModel(synth_config("null"))
    expected, count = m.expected_morans_i(300)
    random = m.kind_f == KINDS.index("random")
    assert random.all()
    means = expected[count > 20]
    # the mean over features of per-feature means: within 3 standard errors of −1/(P − 1)
    se = means.std(ddof=1) / np.sqrt(len(means))
    assert abs(means.mean() - m.exact_null()) < 3 * se
    spatial = SyntheticModel(synth_config("spatial"))
    e_sp, c_sp = spatial.expected_morans_i(200)
    blob = e_sp[(spatial.kind_f == KINDS.index("blob")) & (c_sp > 20)]
    region = e_sp[(spatial.kind_f == KINDS.index("region")) & (c_sp > 20)]
    assert blob.min() > 0.2 and region.min() > blob.mean()


def test_tokens_are_the_planted_sum_plus_noise() -> None:
    cfg = synth_config("spatial", noise=0.05)
    m = SyntheticModel(cfg)
    sc = m.scene(3)
    x = m.tokens(sc, 3)
    clean = sc.dense(m.n_patches, cfg.n_features) @ m.dictionary_fd + m.bias_d
    resid = x - clean
    assert abs(resid.std() - 0.05) < 0.005 and abs(resid.mean()) < 0.005


@pytest.mark.parametrize(("settings", "match"), [
    ({"n_features": 4}, "structured features"),
    ({"n_groups": 3, "n_classes": 8}, "3 × n_groups"),
    ({"blob_share": 0.7, "region_share": 0.5}, "exceeds 1"),
])
def test_bad_settings_name_the_field(settings: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        synth_config("spatial", **settings)


def test_unknown_preset() -> None:
    with pytest.raises(ConfigError, match="unknown; choose one of spatial"):
        synth_config("nope")
