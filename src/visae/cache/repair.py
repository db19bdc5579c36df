"""Finding and repairing a damaged complete cache on a rerun of ``visae cache``.

A complete cache keeps its journal (``progress.json``: every shard's record, labels, ids and skipped
images, and the final files' content). A rerun compares each final file (``manifest.json``,
``labels.npy``, ``image_ids.json``, ``stats.json``, ``skipped.json``) with what the journal says it must
hold, and checks each shard's ``.npy`` header and size (a truncated shard) and, with ``verify``, its
sha256. Lost or damaged final files are rewritten from the journal; lost or damaged shards are computed
again (batches never cross a shard boundary, so a rebuilt shard is bitwise equal to the lost one, which
is checked against its recorded sha256). A lost journal is rebuilt from intact final files. When neither
copy survives, the error names the folder to delete.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from visae.backbones.layout import TokenLayout
from visae.cache.build import JOURNAL, CacheBuild
from visae.cache.manifest import CacheManifest
from visae.cache.store import FINAL_FILES, final_files, json_bytes, write_final_files
from visae.errors import CacheError
from visae.io import atomic_write_bytes, sha256_file


@dataclass
class Damage:
    """What a rerun found wrong with a complete cache."""

    journal: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)  # final file → "missing" or "damaged"
    shards: dict[int, str] = field(default_factory=dict)  # shard index → what is wrong
    journal_lost: bool = False

    def __bool__(self) -> bool:
        return bool(self.files or self.shards or self.journal_lost)

    def describe(self, entries: list[dict[str, Any]]) -> str:
        """``labels.npy (missing), shard_00001.npy (truncated)``."""
        parts = [f"{n} ({why})" for n, why in self.files.items()]
        parts += [f"{entries[k]['file']} ({why})" for k, why in self.shards.items()]
        return ", ".join(parts + ([f"{JOURNAL} (missing)"] if self.journal_lost else []))


def npy_problem(path: Path, shape: tuple[int, ...], sha256: str | None = None,
                dtype_want: type = np.float16) -> str | None:
    """Why the ``.npy`` at ``path`` is not the recorded one (missing, truncated, …), or None."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            got_shape, fortran, dtype = read(f)
            offset = f.tell()
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError):
        return "not a .npy file"
    want = np.dtype(dtype_want)
    if tuple(got_shape) != shape or dtype != want or fortran:
        return f"shape {tuple(got_shape)} {dtype}, expected {shape} {want}"
    expected = offset + int(np.prod(shape)) * want.itemsize
    if size != expected:
        return (f"truncated: {size} bytes, expected {expected}" if size < expected
                else f"{size} bytes, expected {expected}")
    if sha256 is not None and sha256_file(path) != sha256:
        return "sha256 differs"
    return None


def journal_from_finals(folder: Path, cache_hash: str) -> dict[str, Any] | None:
    """The journal of a complete cache, rebuilt from its final files; None unless they are intact."""
    try:
        raw = json.loads((folder / "manifest.json").read_text())
        m = CacheManifest.model_validate(raw)
        labels = np.load(folder / "labels.npy", allow_pickle=False)
        ids = json.loads((folder / "image_ids.json").read_text())
        skipped = json.loads((folder / "skipped.json").read_text())
        stats = json.loads((folder / "stats.json").read_text())
    except (OSError, ValueError, EOFError, ValidationError):
        return None
    if (m.hash != cache_hash or m.shard_images is None or not isinstance(ids, list)
            or not isinstance(skipped, list)):
        return None
    if labels.shape != (m.n_images,) or len(ids) != m.n_images:
        return None
    entries, row = [], 0
    for k, info in enumerate(m.shards):
        rows = slice(row, row + info.n_images)
        entries.append({**info.model_dump(mode="json"), "labels": [int(v) for v in labels[rows]],
                        "ids": ids[rows],
                        "skipped": [s for s in skipped if isinstance(s, dict)
                                    and s.get("index", -1) // m.shard_images == k]})
        row += info.n_images
    journal: dict[str, Any] = {"hash": cache_hash, "shard_images": m.shard_images, "shards": entries,
               "final": {"manifest": raw, "stats": stats}}
    files = final_files(entries, journal["final"])
    if any((folder / n).read_bytes() != files[n] for n in FINAL_FILES):
        return None  # not what visae writes: a hand-edited or foreign folder is not trusted
    return journal


def find_damage(job: CacheBuild, verify: bool = False) -> Damage | None:
    """What is wrong with the complete cache of ``job`` (empty Damage: nothing); None if it is not complete.

    CacheError names the folder to delete when a damaged final file has no intact journal to come from.
    """
    folder = job.folder
    journal, lost = job.journal, False
    if "final" not in journal or len(journal["shards"]) != job.n_shards:
        if not (folder / "manifest.json").exists():
            return None  # never finished: the normal resume path
        rebuilt = journal_from_finals(folder, job.hash)
        if rebuilt is None:
            bad = [n for n in FINAL_FILES if not (folder / n).is_file()] or ["its final files"]
            raise CacheError(f"{folder}: {', '.join(bad)} missing or damaged, and the journal {JOURNAL} that "
                             f"could rebuild them is missing or damaged too; delete the folder {folder} and "
                             "rerun 'visae cache' to rebuild the cache")
        journal, lost = rebuilt, True
    damage = Damage(journal, journal_lost=lost)
    for name, want in final_files(journal["shards"], journal["final"]).items():
        path = folder / name
        if not path.is_file():
            damage.files[name] = "missing"
        elif path.read_bytes() != want:
            damage.files[name] = "damaged"
    m = journal["final"]["manifest"]
    for k, e in enumerate(journal["shards"]):
        why = _shard_problem(folder, e, m, verify)
        if why is not None:
            damage.shards[k] = why
    return damage


def _shard_problem(folder: Path, e: dict[str, Any], m: dict[str, Any], verify: bool) -> str | None:
    """What is wrong with shard entry ``e``'s files (tokens, prefix tokens, kept positions), or None."""
    n, d, t = e["n_images"], m["d_model"], m.get("tokens_per_image") or m["n_patches"]
    files: list[tuple[str, tuple[int, ...], str | None, type]] = [(e["file"], (n, t, d), e["sha256"],
                                                                   np.float16)]
    if e.get("prefix_file"):
        files.append((e["prefix_file"], (n, TokenLayout.from_dict(m["layout"]).n_prefix, d),
                      e.get("prefix_sha256"),
                      np.float16))
    if e.get("positions_file"):
        files.append((e["positions_file"], (n, t), e.get("positions_sha256"), np.int16))
    for name, shape, sha, dtype in files:
        why = npy_problem(folder / name, shape, sha if verify else None, dtype)
        if why is not None:
            return why if name == e["file"] else f"{name} {why}"
    return None


def repair(job: CacheBuild, damage: Damage) -> None:
    """Rebuild exactly what ``damage`` lists: shards first, then the final files (manifest last), the
    journal."""
    folder = job.folder
    if damage.journal_lost:
        job.journal, job.entries = damage.journal, damage.journal["shards"]
        if os.access(folder, os.W_OK):
            atomic_write_bytes(folder / JOURNAL, json_bytes(damage.journal))
    if damage.shards:
        job.run(shards=list(damage.shards))
    if damage.files:
        files = final_files(damage.journal["shards"], damage.journal["final"])
        write_final_files(folder, {n: files[n] for n in damage.files})
