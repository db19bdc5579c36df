"""Low-level writing of cache files, shared by the writer and the synthetic-cache helper.

Every file goes through :mod:`visae.io` (temporary name, fsync, rename).
"""

from __future__ import annotations

import datetime as _dt
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from visae import __version__
from visae.cache.manifest import CacheManifest, ShardInfo
from visae.cache.stats import StreamingStats
from visae.io import atomic_write_bytes, atomic_write_json, atomic_write_with, sha256_file


def shard_file(k: int) -> str:
    """File name of patch-token shard ``k``."""
    return f"shard_{k:05d}.npy"


def prefix_file(k: int) -> str:
    """File name of prefix-token shard ``k``."""
    return f"prefix_{k:05d}.npy"


def save_npy(path: Path, arr: np.ndarray) -> str:
    """Write ``arr`` as ``.npy`` atomically; return the file's sha256."""
    atomic_write_with(path, lambda tmp: np.save(tmp, arr, allow_pickle=False))
    return sha256_file(path)


def write_shard(dir_path: Path, k: int, acts_npd: np.ndarray, prefix_nkd: np.ndarray | None = None,
                positions_nt: np.ndarray | None = None) -> ShardInfo:
    """Write shard ``k`` (float16), optionally its prefix tokens and kept patch positions; return its
    entry."""
    info: dict[str, Any] = {"file": shard_file(k), "n_images": int(acts_npd.shape[0]),
                            "sha256": save_npy(dir_path / shard_file(k),
                                               np.ascontiguousarray(acts_npd, np.float16))}
    if prefix_nkd is not None:
        info["prefix_file"] = prefix_file(k)
        info["prefix_sha256"] = save_npy(dir_path / prefix_file(k),
                                         np.ascontiguousarray(prefix_nkd, np.float16))
    if positions_nt is not None:
        from visae.cache.positions import positions_file

        info["positions_file"] = positions_file(k)
        info["positions_sha256"] = save_npy(dir_path / positions_file(k),
                                            np.ascontiguousarray(positions_nt, np.int16))
    return ShardInfo(**info)


def write_final(dir_path: Path, *, manifest_fields: dict[str, Any], shards: list[ShardInfo],
                labels: np.ndarray,
                image_ids: list[str], stats: StreamingStats, skipped: list[dict[str, Any]]) -> CacheManifest:
    """Write labels, ids, stats, skipped list and, last, the manifest (the commit record)."""
    save_npy(dir_path / "labels.npy", np.asarray(labels, dtype=np.int64))
    atomic_write_json(dir_path / "image_ids.json", list(image_ids))
    atomic_write_json(dir_path / "stats.json", stats.to_json())
    atomic_write_json(dir_path / "skipped.json", skipped)
    manifest = CacheManifest(
        **manifest_fields,
        n_images=int(sum(s.n_images for s in shards)),
        shards=shards,
        n_skipped=len(skipped),
        has_prefix=bool(shards) and all(s.prefix_file for s in shards),
        visae_version=__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    atomic_write_json(dir_path / "manifest.json", manifest.model_dump(mode="json"))
    return manifest


FINAL_FILES = ("labels.npy", "image_ids.json", "stats.json", "skipped.json", "manifest.json")
"""The files written when a cache is complete, in writing order (the manifest, the commit record, last)."""


def json_bytes(obj: Any) -> bytes:
    """Exactly what :func:`visae.io.atomic_write_json` writes for ``obj``."""
    return (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode("utf-8")


def final_files(entries: list[dict[str, Any]], final: dict[str, Any]) -> dict[str, bytes]:
    """The bytes of every final file, from the journal's shard entries and final record."""
    buf = io.BytesIO()
    np.save(buf, np.asarray([lab for e in entries for lab in e["labels"]], dtype=np.int64),
            allow_pickle=False)
    return {"labels.npy": buf.getvalue(),
            "image_ids.json": json_bytes([i for e in entries for i in e["ids"]]),
            "stats.json": json_bytes(final["stats"]),
            "skipped.json": json_bytes([s for e in entries for s in e["skipped"]]),
            "manifest.json": json_bytes(final["manifest"])}


def write_final_files(dir_path: Path, files: dict[str, bytes]) -> None:
    """Write the given final files atomically, the manifest last."""
    for name in FINAL_FILES:
        if name in files:
            atomic_write_bytes(dir_path / name, files[name])
