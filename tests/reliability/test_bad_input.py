"""Bad input: each case fails with an error naming the file or field and what is wrong, and loses nothing
already written. Images (corrupt, truncated, empty, grayscale, CMYK, 16-bit, decompression bomb), cache
files (checksum, newer schema, NaN/Inf), checkpoints (width, family, training state), configs, a full
disk, two writers at once, and the CLI's one-line errors (exit code 2)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import visae.study.testing  # noqa: F401  (tiny-vit-a)
from visae.backbones.layout import TokenLayout
from visae.cache.reader import open_cache
from visae.cache.testing import TinyViTBackbone, write_synthetic_cache
from visae.cache.writer import build_cache
from visae.config import load_config
from visae.datasets.images import load_image_file
from visae.errors import CacheError, CheckpointError, ConfigError, DataError, DiskFullError, StudyError
from visae.io import sha256_file
from visae.sae.checkpoint import load_sae, save_sae
from visae.sae.registry import make_sae
from visae.sae.train import SAESpec, TrainConfig, train_saes

LAYOUT = TokenLayout(("cls",), 4, 4, 8)
BAD_INPUTS: list[str] = []  # every bad input tried, for the report (printed by the last test)


def _tried(name: str) -> None:
    BAD_INPUTS.append(name)


def _png(path: Path, seed: int, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).convert(mode).save(path)
    return path


def _image_folder(root: Path, n_per_class: int = 4) -> Path:
    for c in ("a", "b"):
        for i in range(n_per_class):
            _png(root / c / f"{i}.png", seed=hash((c, i)) % 1000)
    return root


# --- images
# --------------------------------------------------------------------------------------------------
def test_bad_image_files_name_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = _png(tmp_path / "good.png", 0)
    raw = good.read_bytes()
    cases = {
        "zero-byte": (tmp_path / "empty.png", b"", "empty image file"),
        "corrupt": (tmp_path / "corrupt.png", os.urandom(500), "not a readable image"),
        "truncated": (tmp_path / "trunc.png", raw[: len(raw) // 2], "truncated"),
    }
    for name, (path, data, words) in cases.items():
        path.write_bytes(data)
        with pytest.raises(DataError) as e:
            load_image_file(path)
        assert str(path) in str(e.value) and words in str(e.value), (name, str(e.value))
        _tried(f"image: {name}")
    big = _png(tmp_path / "bomb.png", 1)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 32×32 = 1024 px is a "bomb" now
    with pytest.raises(DataError, match="too large") as e:
        load_image_file(big)
    assert str(big) in str(e.value)
    _tried("image: decompression bomb")


def test_unusual_modes_convert_to_rgb(tmp_path: Path) -> None:
    gray = _png(tmp_path / "gray.png", 2, "L")
    assert load_image_file(gray).mode == "RGB"
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 0, 0, 0)).save(cmyk)  # no ink: white
    assert np.asarray(load_image_file(cmyk)).min() >= 250
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(deep)  # 16-bit full scale
    img = Image.open(deep)
    assert img.mode.startswith("I")
    assert np.asarray(load_image_file(deep)).min() == 255  # scaled, not clipped to 255 from 65535 by luck
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(deep)
    assert abs(int(np.asarray(load_image_file(deep))[0, 0, 0]) - 128) <= 1
    _tried("image: grayscale")
    _tried("image: CMYK")
    _tried("image: 16-bit")


def test_bad_images_in_a_cache_skip_or_fail(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "imgs")
    (root / "a" / "zz-empty.png").write_bytes(b"")
    (root / "b" / "zz-corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    bb = TinyViTBackbone(seed=0)
    folder = build_cache(bb, f"folder:{root}", 1, tmp_path / "c", shard_images=4, batch_size=4, num_workers=0,
                         progress=False, device="cpu")
    cache = open_cache(folder, verify=True)
    skipped = json.loads((folder / "skipped.json").read_text())
    assert cache.n_images == 8 and {s["image_id"] for s in skipped} == {"a/zz-empty.png", "b/zz-corrupt.png"}
    assert all("zz-" in s["error"] for s in skipped)
    with pytest.raises(DataError, match=r"zz-empty\.png"):
        build_cache(bb, f"folder:{root}", 1, tmp_path / "c2", shard_images=4, batch_size=4, num_workers=0,
                    progress=False, device="cpu", on_bad_image="fail")
    _tried("cache: unreadable images skipped / fatal")


# --- caches
# --------------------------------------------------------------------------------------------------
def _synthetic(tmp_path: Path, n: int = 12, d: int = 8, **kw: Any) -> Path:
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(n, 16, d)).astype(np.float32)
    return write_synthetic_cache(tmp_path / "syn", acts, np.arange(n) % 3, ["x", "y", "z"], LAYOUT,
                                 shard_images=4, **kw)


def test_shard_checksum_failure_then_repair(tmp_path: Path) -> None:
    bb = TinyViTBackbone(seed=0)
    kw = {"shard_images": 4, "batch_size": 4, "num_workers": 0, "progress": False, "device": "cpu"}
    root = _image_folder(tmp_path / "imgs")
    folder = build_cache(bb, f"folder:{root}", 1, tmp_path / "c", **kw)
    want = {p.name: p.read_bytes() for p in folder.glob("*.npy")}
    shard = folder / "shard_00001.npy"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheError, match=r"shard_00001\.npy: sha256 mismatch.*with --verify"):
        open_cache(folder, verify=True)
    # what the message says to do; the rerun rebuilds just that shard
    assert build_cache(bb, f"folder:{root}", 1, tmp_path / "c", verify=True, **kw) == folder
    open_cache(folder, verify=True)
    assert {p.name: p.read_bytes() for p in folder.glob("*.npy")} == want
    _tried("cache: shard checksum mismatch")


def test_manifest_newer_schema_and_hostile_names(tmp_path: Path) -> None:
    folder = _synthetic(tmp_path)
    mpath = folder / "manifest.json"
    original = json.loads(mpath.read_text())
    mpath.write_text(json.dumps({**original, "schema_version": 99}))
    with pytest.raises(CacheError, match=r"manifest.json: cache schema version 99 is newer.*upgrade"):
        open_cache(folder)
    _tried("cache: manifest from a newer schema")
    (tmp_path / "x.npy").write_bytes((folder / "shard_00000.npy").read_bytes())
    for bad in ("../x.npy", str(tmp_path / "x.npy"), "sub/../../x.npy"):
        m = json.loads(json.dumps(original))
        m["shards"][0]["file"] = bad
        mpath.write_text(json.dumps(m))
        with pytest.raises(CacheError, match="not a plain file name"):
            open_cache(folder)
    _tried("cache: manifest shard names outside the folder")


def test_nan_in_a_shard_is_refused_at_train_and_eval(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(12, 16, 8)).astype(np.float32)
    acts[5, 3, 2] = np.nan
    folder = write_synthetic_cache(tmp_path / "nan", acts, np.arange(12) % 3, ["x", "y", "z"], LAYOUT,
                                   shard_images=4)
    cfg = TrainConfig(batch_size=16, heldout_batches=1, device="cpu", progress=False)
    with pytest.raises(CacheError, match="NaN/Inf"):
        train_saes(folder, SAESpec(family="topk", d_sae=16, k=2), tmp_path / "t", cfg)
    from visae.metrics.evaluate import evaluate

    sae = make_sae("topk", 8, d_sae=16, k=2)
    with pytest.raises(CacheError, match="NaN/Inf"):
        evaluate(sae, folder, metrics=["m2"], device="cpu")
    _tried("shard: NaN activations (train, eval)")


def test_nan_from_the_backbone_at_cache_time(tmp_path: Path) -> None:
    class NaNBackbone(TinyViTBackbone):
        def block_outputs(self, pixels_bchw: torch.Tensor, layers: Any) -> dict[int, torch.Tensor]:
            out = super().block_outputs(pixels_bchw, layers)
            if pixels_bchw.shape[0] and float(pixels_bchw[0].mean()) > -10 and self.calls >= 1:
                out = {k: torch.where(torch.arange(v.shape[0]).view(-1, 1, 1) == 0, torch.inf, v)
                       for k, v in out.items()}
            self.calls += 1
            return out

    bb = NaNBackbone(seed=0)
    bb.calls = 0  # type: ignore[attr-defined]
    root = _image_folder(tmp_path / "imgs")
    with pytest.raises(CacheError, match=r"NaN/Inf activations .* image\(s\) b/") as e:
        build_cache(bb, f"folder:{root}", 1, tmp_path / "c", shard_images=4, batch_size=4, num_workers=0,
                    progress=False, device="cpu")
    assert "shard 1" in str(e.value)
    folder = next((tmp_path / "c").iterdir())
    progress = json.loads((folder / "progress.json").read_text())
    assert [s["file"] for s in progress["shards"]] == ["shard_00000.npy"]  # the good shard is kept
    assert sha256_file(folder / "shard_00000.npy") == progress["shards"][0]["sha256"]
    _tried("backbone: Inf activations at cache time")


# --- checkpoints
# ---------------------------------------------------------------------------------------------
def test_checkpoint_wrong_width_family_and_state(tmp_path: Path) -> None:
    folder = _synthetic(tmp_path)
    from visae.metrics.evaluate import evaluate

    wide = save_sae(make_sae("topk", 16, d_sae=32, k=2), tmp_path / "wide")
    with pytest.raises(CheckpointError, match="d_in 16 does not match the cache's width 8"):
        evaluate(wide, folder, metrics=["m2"], device="cpu")
    _tried("checkpoint: wrong width")
    jr = save_sae(make_sae("jumprelu", 8, d_sae=16, k=2), tmp_path / "jr")
    cfg_text = (jr / "config.yaml").read_text().replace("family: jumprelu", "family: topk")
    (jr / "config.yaml").write_text(cfg_text)
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensors do not match the topk SAE"):
        load_sae(jr)
    (jr / "config.yaml").write_text(cfg_text.replace("family: topk", "family: mystery"))
    with pytest.raises(CheckpointError, match=r"config.yaml: field 'family'"):
        load_sae(jr)
    _tried("checkpoint: wrong family")
    (jr / "model.safetensors").write_bytes(b"\x00" * 10)
    (jr / "config.yaml").write_text(cfg_text.replace("family: topk", "family: jumprelu"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        load_sae(jr)
    _tried("checkpoint: truncated weights")
    out = tmp_path / "train"
    out.mkdir()
    (out / "train_state.pt").write_bytes(b"PK\x03\x04garbage")
    cfg = TrainConfig(batch_size=16, heldout_batches=1, device="cpu", progress=False)
    with pytest.raises(CheckpointError, match=r"train_state\.pt: unreadable training state"):
        train_saes(folder, SAESpec(family="topk", d_sae=16, k=2), out, cfg)
    _tried("training state: corrupt train_state.pt")


# --- configs
# -------------------------------------------------------------------------------------------------
def test_config_unknown_key_wrong_type_missing_file(tmp_path: Path) -> None:
    from visae.cache.config import CacheConfig

    bad = tmp_path / "c.yaml"
    bad.write_text("batch_size: many\nshard_imags: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(CacheConfig, bad)
    msg = str(e.value)
    assert str(bad) in msg and "shard_imags: unknown key" in msg and "batch_size" in msg
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(CacheConfig, tmp_path / "nope.yaml")
    from visae.study.config import check_inputs_exist, load_study_config

    study = tmp_path / "s.yaml"
    study.write_text(json.dumps({"backbones": ["tiny-vit-a"], "layers": [1],
                                 "saes": [{"expansions": [2], "ks": [4]}],
                                 "data": {"train": {"spec": "folder:does-not-exist"},
                                          "eval": {"spec": "offline:digits"}}}))
    with pytest.raises(ConfigError, match=r"data.train.spec: .*does-not-exist does not exist"):
        check_inputs_exist(load_study_config(study))
    _tried("config: unknown key")
    _tried("config: wrong type")
    _tried("config: missing file / missing data path")


# --- full disk
# -----------------------------------------------------------------------------------------------
def test_full_disk_mid_cache_then_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bb = TinyViTBackbone(seed=0)
    root = _image_folder(tmp_path / "imgs")
    kw = {"shard_images": 2, "batch_size": 2, "num_workers": 0, "progress": False, "device": "cpu"}
    ref = build_cache(bb, f"folder:{root}", 1, tmp_path / "ref", **kw)
    real_save = np.save
    calls = {"n": 0}

    def save_until_full(file: Any, arr: Any, *a: Any, **k: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # the third shard: half written, then the disk is full
            with open(file, "wb") as f:
                f.write(b"\x93NUMPY partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(file, arr, *a, **k)

    monkeypatch.setattr(np, "save", save_until_full)
    with pytest.raises(DiskFullError, match=r"shard_00002.npy: the disk is full") as e:
        build_cache(bb, f"folder:{root}", 1, tmp_path / "c", **kw)
    assert "files already complete are intact" in str(e.value)
    monkeypatch.setattr(np, "save", real_save)
    folder = next((tmp_path / "c").iterdir())
    assert not list(folder.glob("*.tmp-*")) and not (folder / "shard_00002.npy").exists()
    progress = json.loads((folder / "progress.json").read_text())
    for s in progress["shards"]:
        assert sha256_file(folder / s["file"]) == s["sha256"]
    build_cache(bb, f"folder:{root}", 1, tmp_path / "c", **kw)  # space freed: resume
    open_cache(folder, verify=True)
    assert {p.name: p.read_bytes() for p in folder.glob("*.npy")} == {p.name: p.read_bytes()
                                                                      for p in ref.glob("*.npy")}
    _tried("disk full while writing a shard")


def test_full_disk_on_a_json_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from visae import io

    target = tmp_path / "r.json"
    io.atomic_write_json(target, {"old": 1})
    real_fsync = os.fsync

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiskFullError, match=r"r\.json: the disk is full"):
        io.atomic_write_json(target, {"new": 2})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert json.loads(target.read_text()) == {"old": 1} and not list(tmp_path.glob("*.tmp-*"))
    _tried("disk full while writing a JSON result")


# --- two writers at once
# -------------------------------------------------------------------------------------
def test_second_writer_is_refused(tmp_path: Path) -> None:
    from visae.study.protocol import study_lock

    holder = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "study").mkdir()
        (tmp_path / "study" / "study.lock").write_text(json.dumps(
            {"pid": holder.pid, "host": os.uname().nodename, "started": "now"}))
        with pytest.raises(StudyError, match=rf"study\.lock: the study is locked by pid {holder.pid}"), \
                study_lock(tmp_path / "study"):
            pass
        cache_dir = tmp_path / "cachelock"
        cache_dir.mkdir()
        (cache_dir / ".lock").write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename}))
        from visae.cache.lock import writer_lock as _lock

        with pytest.raises(CacheError, match=rf"another 'visae cache' \(pid {holder.pid}"), _lock(cache_dir):
            pass
    finally:
        holder.kill()
        holder.wait()
    with study_lock(tmp_path / "study"):  # the holder is gone: its stale lock is taken over
        assert json.loads((tmp_path / "study" / "study.lock").read_text())["pid"] == os.getpid()
    _tried("two writers on one study / cache folder")


# --- CLI: one clean line, exit code 2
# ------------------------------------------------------------------------
def _cli(args: list[str]) -> tuple[int, str]:
    from visae.cli import app

    res = CliRunner().invoke(app, args)
    text = res.output + (res.stderr if res.stderr_bytes is not None else "")
    return res.exit_code, text


def test_cli_errors_are_clean(tmp_path: Path) -> None:
    folder = _synthetic(tmp_path)
    m = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**m, "schema_version": 7}))
    sae = save_sae(make_sae("topk", 8, d_sae=16, k=2), tmp_path / "sae")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("batch_sise: 3\n")
    lock_study = tmp_path / "ls"
    lock_study.mkdir()
    holder = subprocess.Popen(["sleep", "60"])
    (lock_study / "s.yaml").write_text(json.dumps({
        "out_dir": "out", "plugins": ["visae.study.testing"], "backbones": ["tiny-vit-a"], "layers": [1],
        "saes": [{"expansions": [2], "ks": [4]}],
        "data": {"train": {"spec": "offline:digits"}, "eval": {"spec": "offline:digits"}}}))
    (lock_study / "out").mkdir()
    (lock_study / "out" / "study.lock").write_text(json.dumps({"pid": holder.pid,
                                                               "host": os.uname().nodename}))
    cases = {
        "eval, newer cache schema": (["eval", "--sae", str(sae), "--cache", str(folder), "-m", "m2"],
                                     "newer than this visae"),
        "eval, missing checkpoint": (["eval", "--sae", str(tmp_path / "none"), "--cache", str(folder)],
                                     "no such file"),
        "train, unknown config key": (["train", "--cache", str(folder), "--out", str(tmp_path / "t"),
                                       "-c", str(bad_yaml)], "batch_sise: unknown key"),
        "train, bad number list": (["train", "--cache", str(folder), "--out", str(tmp_path / "t"),
                                    "--expansion", "8,x"], "comma-separated numbers"),
        "cache, unknown backbone": (["cache", "-b", "no-such-net", "--source", "offline:digits", "-l", "0",
                                     "-o", str(tmp_path / "c")], "no-such-net"),
        "study, locked folder": (["study", "run", str(lock_study / "s.yaml")], "locked by pid"),
    }
    try:
        for name, (args, words) in cases.items():
            code, text = _cli(args)
            assert code == 2, (name, code, text[-1500:])
            assert "Traceback" not in text and words in text and "error:" in text, (name, text[-1500:])
            _tried(f"CLI: {name}")
    finally:
        holder.kill()
        holder.wait()


def test_zz_report_bad_inputs() -> None:
    print(f"\nbad inputs tried: {len(BAD_INPUTS)}")
    for b in BAD_INPUTS:
        print(f"  {b}")
    repeated = sorted({b for b in BAD_INPUTS if BAD_INPUTS.count(b) > 1})
    assert not repeated, f"bad inputs recorded twice (two tests under one name): {repeated}"
