"""What lies under a folder: activation caches and SAE checkpoints, with backbone, layer, source, split and
image count (``visae ls DIR``). Only manifests and configs are read, never shards or weights."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from visae.sae.hub import checkpoint_markers

MAX_DEPTH = 8
"""Folders deeper than this below the listed one are not visited."""


@dataclass
class Entry:
    """One cache or SAE found under the listed folder."""

    kind: str
    """``cache`` or ``sae``."""
    path: Path
    backbone: str = "?"
    layer: str = "?"
    source: str = "?"
    split: str = "?"
    n_images: str = "?"
    details: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError):
        return None


def _cache_entry(dir_path: Path) -> Entry:
    m = _read(dir_path / "manifest.json")
    if not isinstance(m, dict):
        return Entry("cache", dir_path, details="unreadable manifest.json")
    src: dict[str, Any] = m["source"] if isinstance(m.get("source"), dict) else {}
    return Entry("cache", dir_path, backbone=str(m.get("backbone", "?")), layer=str(m.get("layer", "?")),
                 source=str(src.get("spec", "?")), split=str(src.get("split", "?")),
                 n_images=str(m.get("n_images", "?")),
                 details=f"d={m.get('d_model', '?')} patches={m.get('n_patches', '?')} "
                         f"hash={str(m.get('hash', ''))[:10]}",
                 extra={"hash": m.get("hash")})


def _sae_format(dir_path: Path, names: set[str]) -> str:
    """``visae`` or the registered format's name (its detector reads at most a file's first byte)."""
    if {"model.safetensors", "config.yaml"} <= names:
        return "visae"
    from visae.sae.formats import detect_format

    try:
        found = detect_format(dir_path)
    except OSError:
        return "unreadable"
    return found[0].name if found is not None else "unknown"


def _sae_entry(dir_path: Path, names: set[str]) -> Entry:
    fmt = _sae_format(dir_path, names)
    entry = Entry("sae", dir_path, details=fmt)
    if fmt == "visae":
        cfg = _read(dir_path / "config.yaml")
        if isinstance(cfg, dict):
            k = f" k={cfg['k']}" if cfg.get("k") is not None else ""
            entry.details = f"{cfg.get('family', '?')} d_sae={cfg.get('d_sae', '?')}{k}"
            prov: dict[str, Any] = cfg["provenance"] if isinstance(cfg.get("provenance"), dict) else {}
            entry.extra = {"cache": prov.get("cache"), "cache_hash": prov.get("cache_hash"),
                           "backbone": prov.get("backbone"), "layer": prov.get("layer")}
    elif fmt == "reference":
        from visae.errors import CheckpointError
        from visae.sae.hub import read_reference

        try:
            pointer = read_reference(dir_path) or {}
        except CheckpointError:  # a listing never fails on one bad folder
            pointer = {}
        entry.details = f"reference → {pointer.get('ref', '?')}"
    elif fmt == "saelens":
        cfg = _read(dir_path / "cfg.json")
        if isinstance(cfg, dict):
            entry.details = f"saelens {cfg.get('architecture', 'standard')} d_sae={cfg.get('d_sae', '?')}"
    return entry


def _fill_from_cache(entry: Entry, caches: dict[str, Entry]) -> None:
    """An SAE's backbone/layer/source/split/images: those of the cache it was trained on."""
    cache = caches.get(str(entry.extra.get("cache_hash")))
    if cache is None and entry.extra.get("cache"):
        path = Path(str(entry.extra["cache"]))
        if (path / "manifest.json").is_file():
            cache = _cache_entry(path)
    if cache is not None:
        entry.backbone, entry.layer, entry.source = cache.backbone, cache.layer, cache.source
        entry.split, entry.n_images = cache.split, cache.n_images
    if entry.extra.get("backbone"):
        entry.backbone = str(entry.extra["backbone"])
    if entry.extra.get("layer") is not None:
        entry.layer = str(entry.extra["layer"])


def scan(root: Path | str) -> list[Entry]:
    """Caches and SAE checkpoints under ``root`` (itself included), in path order."""
    root_path = Path(root)
    found: list[Entry] = []
    base_depth = len(root_path.parts)
    markers = checkpoint_markers()
    for dir_name, subdirs, files in os.walk(root_path):
        here = Path(dir_name)
        names = set(files)
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".")
                            and len(here.parts) - base_depth < MAX_DEPTH)
        if "manifest.json" in names and any(f.startswith("shard_") for f in names):
            found.append(_cache_entry(here))
            subdirs[:] = []
        elif any(set(marker) <= names for marker in markers):
            found.append(_sae_entry(here, names))
            subdirs[:] = []
    caches = {str(e.extra.get("hash")): e for e in found if e.kind == "cache"}
    for e in found:
        if e.kind == "sae":
            _fill_from_cache(e, caches)
    return sorted(found, key=lambda e: str(e.path))


def format_entries(root: Path, entries: list[Entry]) -> str:
    """An aligned table, paths relative to ``root``."""
    header = ("kind", "path", "backbone", "layer", "source", "split", "images", "details")
    rows = [header] + [(e.kind, str(e.path.relative_to(root)) if e.path != root else ".", e.backbone, e.layer,
                        e.source, e.split, e.n_images, e.details) for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
                     for r in rows)


__all__ = ["Entry", "format_entries", "scan"]
