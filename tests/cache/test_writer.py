"""build_cache on a tiny random ViT: round trip, skip/fail on bad images, rerun, resume, NaN, CLI."""

from __future__ import annotations

import json
import logging
import re
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

import visae.cache.build as build
import visae.cache.writer as writer
from visae.cache.reader import open_cache
from visae.cache.testing import TinyViTBackbone
from visae.datasets.registry import open_source
from visae.errors import CacheError, DataError


@pytest.fixture(scope="module")
def bb():
    return TinyViTBackbone(seed=0)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    (root / "dog" / "2.png").write_bytes(b"")  # zero bytes
    good = (root / "cat" / "0.png").read_bytes()
    (root / "cat" / "4.png").write_bytes(good[:40])  # truncated
    return root


def _forward(bb, src, idx):
    pixels = torch.stack([bb.transform(src.load(i)) for i in idx])
    return bb.patch_tokens(pixels, 1).numpy()


def test_round_trip_skip_and_stats(bb, tree, tmp_path, capsys, caplog):
    src = open_source(f"folder:{tree}")
    with caplog.at_level(logging.INFO, logger="visae"):
        path = writer.build_cache(bb, src, 1, tmp_path / "out", batch_size=3, shard_images=4, num_workers=0)
    assert f"skipped 2 unreadable image(s); see {path / 'skipped.json'}" in caplog.text
    assert path.parent == tmp_path / "out" and path.name.startswith("tiny-vit-test-L1-")
    c = open_cache(path, verify=True)
    skipped = json.loads((path / "skipped.json").read_text())
    assert {s["image_id"] for s in skipped} == {"cat/4.png", "dog/2.png"}
    assert all(s["image_id"].split("/")[1] in s["error"] for s in skipped)
    keep = [i for i in range(len(src)) if src.image_id(i) not in ("cat/4.png", "dog/2.png")]
    assert c.n_images == 10 and c.manifest.n_skipped == 2
    assert c.image_ids == [src.image_id(i) for i in keep]
    assert list(c.labels) == [src.label(i) for i in keep]
    assert c.class_names == ["cat", "dog"] and c.layout == bb.layout
    want = _forward(bb, src, keep)
    got = np.concatenate([a.numpy() for _, a in c.iter_images(group_size=4)])
    assert np.allclose(got, want, rtol=1e-3, atol=1e-3)
    assert np.array_equal(got, want.astype(np.float16).astype(np.float32))
    stored = got.astype(np.float64).reshape(-1, bb.d_model)
    assert np.allclose(c.mean_d, stored.mean(0), atol=1e-6)
    assert c.std == pytest.approx(np.sqrt(((stored - stored.mean(0)) ** 2).mean()), rel=1e-10)
    # the journal stays, for repairs
    assert (path / "progress.json").exists() and not (path / ".lock").exists()
    # a second run does nothing
    before = (path / "manifest.json").stat().st_mtime_ns
    capsys.readouterr()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="visae"):
        assert writer.build_cache(bb, src, 1, tmp_path / "out", batch_size=5, num_workers=0) == path
    assert "cache exists" in caplog.text
    assert capsys.readouterr().out == ""  # stdout stays free for the folder the CLI prints
    assert (path / "manifest.json").stat().st_mtime_ns == before


def test_fail_on_bad_image(bb, tree, tmp_path):
    with pytest.raises(DataError, match=r"4\.png"):
        writer.build_cache(bb, f"folder:{tree}", 0, tmp_path / "o", on_bad_image="fail", num_workers=0,
                           progress=False)


def test_resume_after_kill_is_bitwise_equal(bb, tmp_path, monkeypatch):
    src = open_source("offline:faces", "train", max_images=40)
    kw = dict(batch_size=3, shard_images=8, num_workers=0, progress=False)
    ref = writer.build_cache(bb, src, 1, tmp_path / "ref", **kw)

    def kill(k):
        if k == 2:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(build, "after_shard_hook", kill)
    with pytest.raises(KeyboardInterrupt):
        writer.build_cache(bb, src, 1, tmp_path / "run", **kw)
    part = next((tmp_path / "run").iterdir())
    assert not (part / "manifest.json").exists()
    assert len(json.loads((part / "progress.json").read_text())["shards"]) == 3
    with pytest.raises(CacheError, match="incomplete"):
        open_cache(part)
    # a leftover of the killed run beyond the committed shards is overwritten
    (part / "shard_00003.npy").write_bytes(b"garbage")
    seen = []
    monkeypatch.setattr(build, "after_shard_hook", seen.append)
    assert writer.build_cache(bb, src, 1, tmp_path / "run", **kw) == part
    assert seen == [3, 4]
    assert part.name == ref.name
    for f in sorted(p.name for p in ref.iterdir()):
        if f not in ("manifest.json", "progress.json"):  # these two hold the time the manifest was written
            assert (ref / f).read_bytes() == (part / f).read_bytes(), f
    journals = [json.loads((d / "progress.json").read_text()) for d in (ref, part)]
    for j in journals:
        j["final"]["manifest"].pop("created")
    assert journals[0] == journals[1]
    a, b = open_cache(ref, verify=True), open_cache(part, verify=True)
    assert a.image_ids == b.image_ids and a.n_images == 40
    assert [s.sha256 for s in a.manifest.shards] == [s.sha256 for s in b.manifest.shards]


def test_nan_activations_name_the_image(bb, tmp_path, monkeypatch):
    src = open_source("offline:digits", "train", max_images=12)

    def bad_outputs(pixels, layers):
        out = TinyViTBackbone.block_outputs(bb, pixels, layers)
        out[layers[0]] = out[layers[0]].clone()
        if len(pixels) == 2:  # the last batch of shard 1
            out[layers[0]][1, 3, 0] = float("nan")
        return out

    monkeypatch.setattr(bb, "block_outputs", bad_outputs)
    with pytest.raises(CacheError, match=r"NaN/Inf.*" + src.image_id(11)):
        writer.build_cache(bb, src, 0, tmp_path / "n", batch_size=4, shard_images=5, num_workers=0,
                           progress=False)
    folder = next((tmp_path / "n").iterdir())
    assert (folder / "shard_00001.npy").exists() and not (folder / "shard_00002.npy").exists()


def test_worker_processes_match_main_process(bb, tmp_path):
    src = open_source("offline:textures", "test", max_images=10)
    a = writer.build_cache(bb, src, 1, tmp_path / "a", num_workers=0, progress=False, batch_size=4)
    b = writer.build_cache(bb, src, 1, tmp_path / "b", num_workers=2, progress=False, batch_size=4)
    assert (a / "shard_00000.npy").read_bytes() == (b / "shard_00000.npy").read_bytes()


def test_cli(bb, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from visae.cli import app

    fake = types.ModuleType("visae.backbones.registry")
    fake.load_backbone = lambda name, device="auto", weights_path=None, image_size=None: bb  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "visae.backbones.registry", fake)
    args = ["cache", "--backbone", "tiny", "--source", "offline:faces", "--layer", "1", "--out",
            str(tmp_path),
            "--max-images", "6", "--num-workers", "0", "--set", "shard_images=4"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    folder = re.search(re.escape(str(tmp_path)) + r"/\S+", r.output).group(0)
    c = open_cache(folder, verify=True)
    assert c.n_images == 6 and len(c.manifest.shards) == 2
    r2 = CliRunner().invoke(app, args)
    assert "cache exists" in r2.output
    bad = CliRunner().invoke(app, [*args, "--set", "shard_imags=3"])
    assert bad.exit_code == 2 and "shard_imags" in bad.output


def test_deleted_shard_is_rebuilt_on_rerun(bb, tmp_path):
    src = open_source("offline:faces", "test", max_images=12)
    kw = dict(batch_size=4, shard_images=4, num_workers=0, progress=False)
    path = writer.build_cache(bb, src, 1, tmp_path, **kw)
    original = (path / "shard_00001.npy").read_bytes()
    (path / "shard_00001.npy").unlink()
    assert writer.build_cache(bb, src, 1, tmp_path, **kw) == path
    assert (path / "shard_00001.npy").read_bytes() == original
    c = open_cache(path, verify=True)
    assert c.n_images == 12 and (path / "progress.json").exists()


def test_cli_weights_path_and_image_size_reach_the_backbone(bb, tmp_path, monkeypatch):
    """The README's --weights-path and an --image-size option with help text; stdout is the folder alone."""
    from typer.testing import CliRunner

    from visae.cli import app

    seen = {}

    def load_backbone(name, device="auto", weights_path=None, image_size=None):
        seen.update(name=name, weights_path=weights_path, image_size=image_size)
        return bb

    fake = types.ModuleType("visae.backbones.registry")
    fake.load_backbone = load_backbone  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "visae.backbones.registry", fake)
    help_text = CliRunner().invoke(app, ["cache", "--help"]).output
    assert "--weights-path" in help_text and "--image-size" in help_text and "resolution" in help_text
    weights = tmp_path / "w.safetensors"
    r = CliRunner().invoke(app,
                           ["cache", "--backbone", "tiny", "--source", "offline:faces", "--split", "test",
                                 "--layer", "1", "--out", str(tmp_path / "c"), "--max-images", "4",
                            "--num-workers",
                                 "0", "--weights-path", str(weights), "--image-size", "32", "--set",
                            "progress=false"])
    assert r.exit_code == 0, r.output
    assert seen == {"name": "tiny", "weights_path": str(weights), "image_size": 32}
    folder = r.stdout.strip()
    assert "\n" not in folder and "-faces-test-4-" in folder
    assert (tmp_path / "c" / folder.split("/")[-1]).is_dir()
