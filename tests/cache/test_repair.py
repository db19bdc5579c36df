"""A rerun of build_cache on a damaged complete cache rebuilds exactly what was lost, bitwise."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

import visae.cache.build as build
import visae.cache.writer as writer
from visae.cache.reader import open_cache
from visae.cache.testing import TinyViTBackbone
from visae.datasets.registry import open_source
from visae.errors import CacheError

KW = dict(batch_size=3, shard_images=4, num_workers=0, progress=False)
FINALS = ["manifest.json", "labels.npy", "image_ids.json", "stats.json", "skipped.json"]


@pytest.fixture(scope="module")
def bb() -> TinyViTBackbone:
    return TinyViTBackbone(seed=0)


@pytest.fixture(scope="module")
def src():
    return open_source("offline:faces", "test", max_images=10)


@pytest.fixture(scope="module")
def clean(bb, src, tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """A clean build and its files' bytes."""
    folder = writer.build_cache(bb, src, 1, tmp_path_factory.mktemp("clean"), **KW)
    return folder, _snapshot(folder)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _copy(clean: tuple[Path, dict[str, bytes]], tmp_path: Path) -> Path:
    folder = tmp_path / clean[0].name
    folder.mkdir()
    for name, data in clean[1].items():
        (folder / name).write_bytes(data)
    return folder


def _rerun(bb, src, folder: Path, **kw) -> list[int]:
    """Rerun into ``folder``'s parent; the shards computed."""
    seen: list[int] = []
    old = build.after_shard_hook
    build.after_shard_hook = seen.append
    try:
        assert writer.build_cache(bb, src, 1, folder.parent, **{**KW, **kw}) == folder
    finally:
        build.after_shard_hook = old
    return seen


@pytest.mark.parametrize("name", FINALS)
@pytest.mark.parametrize("how", ["missing", "garbage", "truncated"])
def test_a_lost_or_damaged_final_file_is_rewritten(bb, src, clean, tmp_path, name, how, caplog) -> None:
    folder = _copy(clean, tmp_path)
    path = folder / name
    if how == "missing":
        path.unlink()
    elif how == "garbage":
        path.write_bytes(b"\x00garbage")
    else:
        path.write_bytes(path.read_bytes()[:-7])
    if name != "skipped.json" and (name != "manifest.json" or how != "missing"):
        with pytest.raises(CacheError, match="rerun 'visae cache'"):
            open_cache(folder)  # what the reader says to do …
    with caplog.at_level(logging.INFO, logger="visae"):
        assert _rerun(bb, src, folder, progress=True) == []  # … works, with no forward pass
    assert f"rebuilding {name}" in caplog.text
    assert _snapshot(folder) == clean[1]  # bitwise, manifest time included
    open_cache(folder, verify=True)


def test_truncated_and_missing_shards_are_rebuilt(bb, src, clean, tmp_path) -> None:
    folder = _copy(clean, tmp_path)
    shard = folder / "shard_00001.npy"
    shard.write_bytes(shard.read_bytes()[:-100])  # a disk that filled up, a copy cut short
    (folder / "shard_00002.npy").unlink()
    assert _rerun(bb, src, folder) == [1, 2]  # only those two
    assert _snapshot(folder) == clean[1]


def test_verify_finds_a_flipped_byte(bb, src, clean, tmp_path) -> None:
    folder = _copy(clean, tmp_path)
    shard = folder / "shard_00000.npy"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0x40
    shard.write_bytes(bytes(data))
    assert _rerun(bb, src, folder) == []  # same size: only a checksum finds it
    assert _rerun(bb, src, folder, verify=True) == [0]
    assert _snapshot(folder) == clean[1]


def test_a_healthy_cache_is_left_alone(bb, src, clean, tmp_path, caplog) -> None:
    folder = _copy(clean, tmp_path)
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    with caplog.at_level(logging.INFO, logger="visae"):
        assert _rerun(bb, src, folder, progress=True) == []
    assert "cache exists" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes


def test_a_lost_journal_is_rebuilt_from_the_final_files(bb, src, clean, tmp_path) -> None:
    folder = _copy(clean, tmp_path)
    (folder / "progress.json").unlink()  # as in a cache written before the journal was kept
    (folder / "shard_00001.npy").unlink()
    assert _rerun(bb, src, folder) == [1]
    assert _snapshot(folder) == clean[1]


def test_both_copies_lost_names_what_to_delete(bb, src, clean, tmp_path) -> None:
    folder = _copy(clean, tmp_path)
    (folder / "progress.json").write_text("{")
    (folder / "labels.npy").unlink()
    with pytest.raises(CacheError) as e:
        writer.build_cache(bb, src, 1, folder.parent, **KW)
    msg = str(e.value)
    assert "labels.npy" in msg and f"delete the folder {folder}" in msg and "\n" not in msg
    assert not (folder / "labels.npy").exists()  # nothing else touched


def test_a_rebuilt_shard_that_differs_is_refused(bb, src, clean, tmp_path) -> None:
    folder = _copy(clean, tmp_path)
    journal = json.loads((folder / "progress.json").read_text())
    journal["shards"][1]["sha256"] = "0" * 64  # as if the rest had been made on another device
    (folder / "progress.json").write_text(json.dumps(journal))
    (folder / "shard_00001.npy").unlink()
    with pytest.raises(CacheError, match=r"rebuilt shard differs.*delete the folder"):
        writer.build_cache(bb, src, 1, folder.parent, **KW)
    assert not (folder / "shard_00001.npy").exists()


def test_repaired_labels_equal_a_clean_build_elsewhere(bb, src, clean, tmp_path) -> None:
    """The reference is the clean build; a second clean build differs only in the manifest's time."""
    other = writer.build_cache(bb, src, 1, tmp_path / "again", **KW)
    snap = _snapshot(other)
    for name in ("manifest.json", "progress.json"):
        a, b = json.loads(snap.pop(name)), json.loads(clean[1][name])
        for m in (a, b):
            (m.get("final", {}).get("manifest") or m).pop("created")
        assert a == b
    assert snap == {k: v for k, v in clean[1].items() if k not in ("manifest.json", "progress.json")}
    assert np.load(other / "labels.npy").tolist() == [src.label(i) for i in range(len(src))]
