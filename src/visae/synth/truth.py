"""The ground-truth file of a synthetic cache: what was planted, beside the cache it explains.

``ground_truth.json`` (schema below) and ``ground_truth.npz`` (``dictionary`` ``[F, D]`` unit atoms,
``bias`` ``[D]``) sit in the cache folder; a hierarchical model also writes ``hierarchy.json`` there (the
format of :mod:`visae.datasets.hierarchy`: one sibling group per superclass), which M7's ``hierarchy: auto``
reads. :class:`GroundTruth` loads them and re-draws any image's true codes from the stored settings (the
draw is checked against the stored dictionary).

``ground_truth.json``::

    {"schema_version": 1, "config": {SynthConfig settings}, "null_expectation": -1/(P-1),
     "features": [{"index", "role", "kind", "parent", "class", "magnitude", "radius",
                   "expected_morans_i", "expected_maps"}, ...],
     "classes": [{"index", "name", "group", "features", "variants"}, ...],
     "edges": [[parent, child], ...], "overlap": {"mean_abs_cos", "max_abs_cos"},
     "per_token": {"mean_active", "mean_active_per_image"}, "npz_sha256": ...}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from visae.errors import CacheError, ConfigError
from visae.io import atomic_write_json, atomic_write_with, sha256_file
from visae.synth.config import SynthConfig
from visae.synth.model import KINDS, ROLES, SyntheticModel

GROUND_TRUTH = "ground_truth.json"
GROUND_TRUTH_NPZ = "ground_truth.npz"
HIERARCHY = "hierarchy.json"
SCHEMA_VERSION = 1


def _feature_table(model: SyntheticModel, expected: np.ndarray, maps: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    for f in range(model.cfg.n_features):
        rows.append({"index": f, "role": ROLES[int(model.role_f[f])], "kind": KINDS[int(model.kind_f[f])],
                     "parent": int(model.parent_f[f]), "class": int(model.class_of_f[f]),
                     "magnitude": float(model.magnitude_f[f]), "radius": float(model.radius_f[f]),
                     "expected_morans_i": None if np.isnan(expected[f]) else float(expected[f]),
                     "expected_maps": int(maps[f])})
    return rows


def _per_token(model: SyntheticModel, n_scenes: int = 128) -> dict[str, float]:
    active_tokens, features = 0, 0
    for i in range(n_scenes):
        sc = model.scene(2 * 10**9 + i, "test")
        active_tokens += len(sc.patch_k)
        features += len(np.unique(sc.feature_k))
    return {"mean_active": active_tokens / (n_scenes * model.n_patches),
            "mean_active_per_image": features / n_scenes}


def write_ground_truth(folder: Path, model: SyntheticModel, n_scenes: int = 512) -> None:
    """Write ``ground_truth.json``/``.npz`` (and ``hierarchy.json`` with a hierarchy) into ``folder``."""
    cfg = model.cfg
    npz = folder / GROUND_TRUTH_NPZ

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, dictionary=model.dictionary_fd, bias=model.bias_d)

    atomic_write_with(npz, save)
    expected, maps = model.expected_morans_i(n_scenes)
    random = model.kind_f == KINDS.index("random")
    expected = np.where(random, model.exact_null(), expected)
    gram = np.abs(model.dictionary_fd @ model.dictionary_fd.T)
    np.fill_diagonal(gram, np.nan)
    classes = [{"index": c, "name": model.class_names[c], "group": int(model.group_of_class[c]),
                "features": [int(f) for f in model.class_features(c)],
                "variants": [int(f) for f in model.variant_features(c)]} for c in range(cfg.n_classes)]
    doc = {"schema_version": SCHEMA_VERSION,
           "config": cfg.model_dump(mode="json", exclude={"out", "progress"}),
           "null_expectation": model.exact_null(),
           "features": _feature_table(model, expected, maps), "classes": classes,
           "edges": [[int(model.parent_f[f]), f] for f in range(cfg.n_features) if model.parent_f[f] >= 0],
           "overlap": {"mean_abs_cos": float(np.nanmean(gram)) if cfg.n_features > 1 else 0.0,
                       "max_abs_cos": float(np.nanmax(gram)) if cfg.n_features > 1 else 0.0},
           "per_token": _per_token(model), "npz_sha256": sha256_file(npz)}
    atomic_write_json(folder / GROUND_TRUTH, doc)
    if cfg.n_groups:
        groups = {f"g{g}": [model.class_names[c] for c in range(cfg.n_classes)
                            if model.group_of_class[c] == g] for g in range(cfg.n_groups)}
        atomic_write_json(folder / HIERARCHY, {
            "name": f"synth-{cfg.preset}", "groups": groups,
            "group_info": {name: {"depth": 1, "parent_feature": int(g)} for g, name in enumerate(groups)},
            "provenance": {"source": "visae synth", "rule": "one sibling group per planted superclass"}})


@dataclass
class GroundTruth:
    """What a synthetic cache planted: the model's settings, atoms and per-feature facts."""

    folder: Path
    doc: dict[str, Any]
    dictionary_fd: np.ndarray
    bias_d: np.ndarray

    @classmethod
    def load(cls, cache_dir: Path | str) -> GroundTruth:
        """Read the ground truth of the synthetic cache ``cache_dir`` (ConfigError when it has none)."""
        folder = Path(cache_dir)
        path = folder / GROUND_TRUTH
        if not path.is_file():
            raise ConfigError(f"{folder}: no {GROUND_TRUTH}: this is not a synthetic cache; ground-truth "
                              "scoring (recovery) needs a cache written by 'visae synth'")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            with np.load(folder / GROUND_TRUTH_NPZ) as z:
                dictionary, bias = np.asarray(z["dictionary"]), np.asarray(z["bias"])
        except (OSError, ValueError, KeyError) as e:
            raise CacheError(f"{path}: unreadable ground truth ({e}); rerun 'visae synth' with the same "
                             "settings to rewrite it") from e
        if doc.get("schema_version") != SCHEMA_VERSION:
            raise CacheError(f"{path}: schema_version {doc.get('schema_version')!r}, this visae reads "
                             f"{SCHEMA_VERSION}; rerun 'visae synth'")
        return cls(folder, doc, dictionary, bias)

    @cached_property
    def config(self) -> SynthConfig:
        """The generator settings."""
        return SynthConfig(**self.doc["config"])

    @cached_property
    def model(self) -> SyntheticModel:
        """The generator, rebuilt from the stored settings (checked against the stored atoms)."""
        model = SyntheticModel(self.config)
        if not np.allclose(model.dictionary_fd, self.dictionary_fd, atol=1e-12):
            raise CacheError(f"{self.folder / GROUND_TRUTH_NPZ}: the settings in {GROUND_TRUTH} draw another "
                             "dictionary than the stored one (written by another visae version?); rerun "
                             "'visae synth'")
        return model

    @property
    def n_features(self) -> int:
        """F*."""
        return int(self.dictionary_fd.shape[0])

    def column(self, key: str) -> np.ndarray:
        """One column of the feature table as an array (``expected_morans_i``: NaN where unknown)."""
        values = [row[key] for row in self.doc["features"]]
        if key == "expected_morans_i":
            return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        return np.asarray(values)

    @property
    def edges(self) -> list[tuple[int, int]]:
        """(parent, child) feature pairs of the hierarchy."""
        return [(int(p), int(c)) for p, c in self.doc["edges"]]

    def class_features(self, cls: int) -> list[int]:
        """The informative features of class ``cls``."""
        return list(self.doc["classes"][cls]["features"])

    def scene_indices(self, image_ids: list[str]) -> np.ndarray:
        """Scene index of each cache row, from its image id ``<split>-<index>``."""
        try:
            return np.array([int(i.rsplit("-", 1)[1]) for i in image_ids], dtype=np.int64)
        except (IndexError, ValueError) as e:
            raise CacheError(f"{self.folder}: image ids are not synthetic scene ids ({e})") from e

    def codes(self, indices: np.ndarray | list[int], split: str | None = None) -> list[tuple[int, np.ndarray,
                                                                                              np.ndarray,
                                                                                              np.ndarray]]:
        """True sparse codes ``(label, patch_k, feature_k, value_k)`` of the given scenes."""
        split = split or self.config.split
        out = []
        for i in indices:
            sc = self.model.scene(int(i), split)
            out.append((sc.label, sc.patch_k, sc.feature_k, sc.value_k))
        return out
