"""build_cache with tokens_per_image: the seeded positions of a full cache, recorded, hashed, resumable."""

from __future__ import annotations

import json

import numpy as np
import pytest

import visae.cache.build as build
import visae.cache.writer as writer
from visae.cache.positions import sample_positions
from visae.cache.reader import open_cache
from visae.cache.testing import TinyViTBackbone
from visae.datasets.registry import open_source
from visae.errors import ConfigError


@pytest.fixture(scope="module")
def bb():
    return TinyViTBackbone(seed=0)


def test_training_cache_keeps_the_seeded_positions_of_the_full_cache(bb, tmp_path, monkeypatch):
    src = open_source("offline:faces", "train", max_images=20)
    kw = dict(batch_size=3, shard_images=8, num_workers=0, progress=False)
    full = open_cache(writer.build_cache(bb, src, 1, tmp_path / "out", **kw))
    t_path = writer.build_cache(bb, src, 1, tmp_path / "out", tokens_per_image=5, position_seed=9, **kw)
    part = open_cache(t_path, verify=True)
    m = part.manifest
    assert (m.tokens_per_image, m.position_seed, m.n_patches, m.schema_version) == (5, 9, 16, 2)
    assert m.hash != full.manifest.hash and t_path != full.path and "-t5-" in t_path.name
    assert all(s.positions_file for s in m.shards) and part.n_tokens == 20 * 5
    pos = part.positions(0, 20)
    assert np.array_equal(pos, sample_positions(range(20), 16, 5, seed=9))
    grid = np.asarray(full.shard(0), np.float32)  # images 0 … 7 of the full cache
    kept = np.asarray(part.shard(0), np.float32)
    assert np.array_equal(kept, np.take_along_axis(grid, pos[:8, :, None], axis=1))
    # statistics are those of the kept tokens
    allk = np.concatenate([np.asarray(part.shard(k), np.float64) for k in range(3)]).reshape(-1, bb.d_model)
    assert np.allclose(part.mean_d, allk.mean(0), atol=1e-6)
    # another seed is another cache
    other = writer.build_cache(bb, src, 1, tmp_path / "out", tokens_per_image=5, position_seed=10, **kw)
    assert other != t_path

    # a killed build resumes to the same bytes
    def kill(k):
        if k == 1:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(build, "after_shard_hook", kill)
    with pytest.raises(KeyboardInterrupt):
        writer.build_cache(bb, src, 1, tmp_path / "run", tokens_per_image=5, position_seed=9, **kw)
    monkeypatch.setattr(build, "after_shard_hook", None)
    again = writer.build_cache(bb, src, 1, tmp_path / "run", tokens_per_image=5, position_seed=9, **kw)
    for f in sorted(p.name for p in t_path.iterdir()):
        if f not in ("manifest.json", "progress.json"):  # these hold the time the manifest was written
            assert (t_path / f).read_bytes() == (again / f).read_bytes(), f
    # losing a positions file is repaired like a lost shard
    (t_path / "positions_00001.npy").unlink()
    assert writer.build_cache(bb, src, 1, tmp_path / "out", tokens_per_image=5, position_seed=9,
                              **kw) == t_path
    assert open_cache(t_path, verify=True).n_tokens == 100


def test_too_many_tokens_per_image_is_a_config_error(bb, tmp_path):
    with pytest.raises(ConfigError, match=r"tokens_per_image=17: the backbone has 16 patch positions"):
        writer.build_cache(bb, "offline:faces", 0, tmp_path, tokens_per_image=17, max_images=4,
                           progress=False,
                           num_workers=0)


def test_cli_tokens_per_image(bb, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from visae.cli import app

    monkeypatch.setattr("visae.backbones.registry.load_backbone", lambda *a, **k: bb)
    res = CliRunner().invoke(app,
                             ["cache", "--backbone", "tiny", "--source", "offline:faces", "--max-images", "6",
                                   "--layer", "0", "--out", str(tmp_path), "--num-workers", "0",
                                   "--tokens-per-image", "3"])
    assert res.exit_code == 0, res.output
    m = json.loads((next(tmp_path.iterdir()) / "manifest.json").read_text())
    assert m["tokens_per_image"] == 3 and m["position_seed"] == 42
