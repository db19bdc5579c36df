"""Crash-safe writes and path containment."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from visae.errors import VisaeError
from visae.io import atomic_open, atomic_write_json, atomic_write_with, hash_json, safe_join, sha256_file


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    atomic_write_json(path, {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}
    assert not list(tmp_path.glob("*.tmp-*"))


def test_failed_write_keeps_old_content(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write(b"partial")
        raise RuntimeError("killed")
    assert path.read_bytes() == b"old"
    assert not list(tmp_path.glob("*.tmp-*"))


def test_atomic_write_with_numpy(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    atomic_write_with(path, lambda p: np.save(p, np.arange(5)))
    assert np.load(path).tolist() == [0, 1, 2, 3, 4]
    assert len(sha256_file(path)) == 64


def test_hash_json_is_order_independent() -> None:
    assert hash_json({"a": 1, "b": 2}) == hash_json({"b": 2, "a": 1})
    assert hash_json({"a": 1}) != hash_json({"a": 2})


def test_safe_join_refuses_escape(tmp_path: Path) -> None:
    assert safe_join(tmp_path, "sub/file.txt") == (tmp_path / "sub/file.txt").resolve()
    for bad in ("../evil", "/etc/passwd", "a/../../b"):
        with pytest.raises(VisaeError, match="outside"):
            safe_join(tmp_path, bad)


def test_pid_alive_on_this_host() -> None:
    import os

    from visae.io import pid_alive

    assert pid_alive(os.getpid())
    for invalid in (-1, 0, "x", None, 2**80):  # never a process group, never a crash
        assert pid_alive(invalid) is False
        assert pid_alive(invalid, invalid_is_alive=True) is True
