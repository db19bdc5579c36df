"""``visae.synth.generate``: an ordinary cache (content-addressed, resumable) plus its ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from visae.cache import build
from visae.cache.reader import open_cache
from visae.datasets.hierarchy import load_hierarchy
from visae.synth import GroundTruth, generate
from visae.synth.truth import GROUND_TRUTH, HIERARCHY


def test_an_ordinary_cache_whose_tokens_are_the_model(spatial_cache: Path) -> None:
    cache = open_cache(spatial_cache, verify=True)
    truth = GroundTruth.load(spatial_cache)
    cfg = truth.config
    assert cache.n_images == 240 and cache.d_model == cfg.d and cache.n_patches == cfg.grid**2
    assert cache.manifest.backbone == "synth:spatial" and cache.manifest.layer == 0
    np.testing.assert_array_equal(cache.labels, np.arange(240) % cfg.n_classes)
    assert cache.class_names == [f"c{c}" for c in range(cfg.n_classes)]
    acts = cache.read_images(5, 7).astype(np.float32)
    for row, index in enumerate((5, 6)):
        want = truth.model.tokens(truth.model.scene(index), index)
        np.testing.assert_allclose(acts[row], want, atol=2e-3)  # float16 storage
    stats = json.loads((spatial_cache / "stats.json").read_text())
    assert stats["n_tokens"] == 240 * cfg.grid**2
    assert truth.doc["overlap"]["max_abs_cos"] < 1e-9
    assert len(truth.doc["features"]) == cfg.n_features


def test_content_addressed_and_found_again(spatial_cache: Path, synth_root: Path) -> None:
    shard = spatial_cache / "shard_00000.npy"
    before = shard.stat().st_mtime_ns
    assert generate("spatial", synth_root, n_images=240, progress=False) == spatial_cache
    assert shard.stat().st_mtime_ns == before
    other = generate("spatial", synth_root, n_images=240, seed=1, progress=False)
    assert other != spatial_cache
    val = generate("spatial", synth_root, n_images=240, split="val", progress=False)
    assert val != spatial_cache
    # same model, other images: the atoms agree, the tokens do not
    assert np.array_equal(GroundTruth.load(val).dictionary_fd, GroundTruth.load(spatial_cache).dictionary_fd)
    assert not np.array_equal(open_cache(val).read_images(0, 1), open_cache(spatial_cache).read_images(0, 1))


def test_a_killed_generation_resumes_to_the_same_bytes(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    kw = {"n_images": 50, "shard_images": 10, "batch_size": 5, "progress": False}
    ref = generate("null", tmp_path / "ref", **kw)

    def kill(k: int) -> None:
        if k == 2:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(build, "after_shard_hook", kill)
    with pytest.raises(KeyboardInterrupt):
        generate("null", tmp_path / "run", **kw)
    part = next((tmp_path / "run").iterdir())
    assert not (part / GROUND_TRUTH).exists()
    seen: list[int] = []
    monkeypatch.setattr(build, "after_shard_hook", seen.append)
    assert generate("null", tmp_path / "run", **kw) == part
    assert seen == [3, 4] and part.name == ref.name
    for name in sorted(p.name for p in ref.iterdir()):
        if name not in ("manifest.json", "progress.json"):
            assert (ref / name).read_bytes() == (part / name).read_bytes(), name


def test_the_hierarchy_is_where_m7_reads_it(hierarchical_cache: Path) -> None:
    truth = GroundTruth.load(hierarchical_cache)
    cfg = truth.config
    names = open_cache(hierarchical_cache).class_names
    h = load_hierarchy(str(hierarchical_cache / HIERARCHY), names)
    assert h is not None
    groups = h.sibling_groups(names)
    assert len(groups) == cfg.n_groups and all(len(g) == cfg.n_classes // cfg.n_groups for g in groups)
    # class → group in the hierarchy file is the planted parent of the class feature
    for g, members in enumerate(h.named_sibling_groups(names)):
        for cls in members[1]:
            assert truth.doc["classes"][cls]["group"] == g
            assert truth.doc["features"][truth.class_features(cls)[0]]["parent"] == g
    roles = truth.column("role")
    edges = truth.edges
    assert len(edges) == cfg.n_classes * (cfg.class_features + cfg.variants)
    assert all(roles[c] in ("class", "variant") for _, c in edges)
