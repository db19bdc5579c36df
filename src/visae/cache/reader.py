"""Reading an activation cache: manifest, statistics, a per-image iterator and a shuffled token sampler
(:mod:`visae.cache.sampler`).

The on-disk format is described in docs/cache-protocol.md. Shards are memory-mapped; nothing reads a
whole cache into memory.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from visae.backbones.layout import TokenLayout
from visae.cache.manifest import CacheManifest
from visae.cache.positions import SUBSAMPLED_SCHEMA_VERSION
from visae.errors import CacheError
from visae.io import sha256_file


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CacheError(f"{path}: {what} is missing; rerun 'visae cache' to rebuild the cache") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CacheError(f"{path}: {what} is not valid JSON ({e}); rerun 'visae cache' to rebuild "
                         "it") from None


def _float32_copy(arr: np.ndarray) -> torch.Tensor:
    """A fresh float32 tensor of ``arr``; torch converts float16 on every thread (numpy on one)."""
    if arr.dtype != np.float16:
        return torch.from_numpy(arr.astype(np.float32))
    with warnings.catch_warnings():  # a read-only memory map: only read here, by the conversion
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr).to(torch.float32)


def read_npy(path: Path, what: str, repair: str, mmap: bool = False) -> np.ndarray:
    """``np.load`` of one cache file; an empty, truncated or unreadable file is a CacheError naming it and
    saying how to repair it (never a bare EOFError or ValueError)."""
    try:
        if path.stat().st_size == 0:
            raise CacheError(f"{path}: the {what} file is empty (0 bytes); {repair}")
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:
        raise CacheError(f"{path}: unreadable {what} file ({type(e).__name__}: {e}); {repair}") from None


class ActivationCache:
    """An opened, complete cache folder."""

    path: Path
    manifest: CacheManifest

    def __init__(self, path: Path | str, verify: bool = False) -> None:
        self.path = Path(path)
        manifest_path = self.path / "manifest.json"
        if not manifest_path.is_file():
            if (self.path / "progress.json").is_file():
                raise CacheError(f"{self.path}: the cache is incomplete (no manifest.json, progress.json "
                                 "present); rerun the same 'visae cache' command to finish it")
            raise CacheError(f"{self.path}: not an activation cache (no manifest.json); build one with "
                             "'visae cache'")
        raw = _read_json(manifest_path, "manifest.json")
        if not isinstance(raw, dict):
            raise CacheError(f"{manifest_path}: expected a JSON object")
        version = raw.get("schema_version")
        if isinstance(version, int) and version > SUBSAMPLED_SCHEMA_VERSION:
            raise CacheError(f"{manifest_path}: cache schema version {version} is newer than this visae "
                             f"supports ({SUBSAMPLED_SCHEMA_VERSION}); upgrade visae (pip install -U visae)")
        try:
            self.manifest = CacheManifest.model_validate(raw)
        except ValidationError as e:
            raise CacheError(f"{manifest_path}: invalid manifest: {e}") from None
        manifest = self.manifest
        self._layout = TokenLayout.from_dict(manifest.layout)
        if self._layout.n_patches != manifest.n_patches:
            raise CacheError(f"{manifest_path}: layout has {self._layout.n_patches} patches, manifest says "
                             f"{manifest.n_patches}")
        counts = [shard.n_images for shard in manifest.shards]
        if sum(counts) != manifest.n_images:
            raise CacheError(f"{manifest_path}: shards hold {sum(counts)} images, manifest says "
                             f"{manifest.n_images}")
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._labels = self._load_labels()
        ids = _read_json(self.path / "image_ids.json", "image_ids.json")
        if not isinstance(ids, list) or len(ids) != manifest.n_images:
            raise CacheError(f"{self.path / 'image_ids.json'}: expected a list of {manifest.n_images} ids")
        self._image_ids = [str(image_id) for image_id in ids]
        stats = _read_json(self.path / "stats.json", "stats.json")
        try:
            self._mean_d = np.asarray(stats["mean"], dtype=np.float32)
            self._std = float(stats["std"])
        except (KeyError, TypeError, ValueError):
            raise CacheError(f"{self.path / 'stats.json'}: expected {{'mean': [...], 'std': "
                             f"float}}") from None
        if self._mean_d.shape != (manifest.d_model,):
            raise CacheError(f"{self.path / 'stats.json'}: mean has {self._mean_d.size} values, expected "
                             f"{manifest.d_model}")
        self._mean_t = torch.from_numpy(self._mean_d)
        self._shards: list[np.ndarray | None] = [None] * len(manifest.shards)
        for info in manifest.shards:
            if (manifest.tokens_per_image is None) != (info.positions_file is None):
                raise CacheError(f"{manifest_path}: shard {info.file} and "
                                 f"tokens_per_image={manifest.tokens_per_image} disagree on stored "
                                 "positions; the manifest is corrupt: rerun 'visae cache'")
            for name in (info.file, info.prefix_file, info.positions_file):
                # A manifest is data: its file names must be plain names inside this folder.
                if name is not None and (name != Path(name).name or name in ("", ".", "..")):
                    raise CacheError(f"{manifest_path}: shard file {name!r} is not a plain file name inside "
                                     "the cache folder; refusing to read it (the manifest is corrupt "
                                     "or hostile)")
            if not (self.path / info.file).is_file():
                raise CacheError(f"{self.path / info.file}: shard missing; rerun 'visae cache' to rebuild it")
        if verify:
            self.verify()

    def _load_labels(self) -> np.ndarray:
        p = self.path / "labels.npy"
        if not p.is_file():
            raise CacheError(f"{p}: labels.npy is missing; rerun 'visae cache' to rebuild the "
                             "cache")
        labels = read_npy(p, "labels", "rerun 'visae cache' (the same command) to rebuild it")
        if labels.shape != (self.manifest.n_images,):
            raise CacheError(f"{p}: expected {self.manifest.n_images} labels, found shape {labels.shape}")
        return labels.astype(np.int64, copy=False)

    def shard(self, k: int) -> np.ndarray:
        """Memory-mapped shard ``k``: float16 ``[n_images_k, T, D]`` (T = :attr:`tokens_per_image`)."""
        arr = self._shards[k]
        if arr is None:
            info = self.manifest.shards[k]
            p = self.path / info.file
            arr = read_npy(p, "shard", "delete it and rerun 'visae cache' (the same command) to rebuild it",
                           mmap=True)
            want = (info.n_images, self.tokens_per_image, self.manifest.d_model)
            if arr.shape != want or arr.dtype != np.float16:
                raise CacheError(f"{p}: shape {arr.shape} {arr.dtype}, manifest says {want} float16; "
                                 "delete the shard and rerun 'visae cache' to rebuild it")
            self._shards[k] = arr
        return arr

    @property
    def layout(self) -> TokenLayout:
        """Token layout (grid, patch size, prefix tokens) of the backbone that produced the cache."""
        return self._layout

    @property
    def n_images(self) -> int:
        """Images stored (skipped ones excluded)."""
        return self.manifest.n_images

    @property
    def n_patches(self) -> int:
        """Patch positions of the backbone's grid P."""
        return self.manifest.n_patches

    @property
    def tokens_per_image(self) -> int:
        """Patch tokens stored per image: P for a full cache, fewer for a training cache."""
        return self.manifest.tokens_per_image or self.manifest.n_patches

    @property
    def is_subsampled(self) -> bool:
        """True for a training cache that keeps only ``tokens_per_image`` seeded positions per image."""
        return self.manifest.tokens_per_image is not None

    def require_full_grid(self, what: str) -> None:
        """CacheError unless every patch of every image is stored (M1–M7, tasks and reports need grids)."""
        if self.is_subsampled:
            m = self.manifest
            raise CacheError(
                f"{self.path}: a training cache keeping {m.tokens_per_image} of {m.n_patches} patch "
                f"positions per image (tokens_per_image={m.tokens_per_image}, position seed "
                f"{m.position_seed}); {what} needs every patch of each image: point it at a cache built "
                "without tokens_per_image")

    def positions(self, start: int, stop: int) -> np.ndarray:
        """Stored patch positions (int64 ``[n, T]``) of images ``start … stop-1`` (all of 0 … P-1 when
        full)."""
        stop = min(stop, self.n_images)
        if not self.is_subsampled:
            return np.broadcast_to(np.arange(self.n_patches), (max(0, stop - start), self.n_patches)).copy()
        parts = []
        for k, info in enumerate(self.manifest.shards):
            lo, hi = int(self._offsets[k]), int(self._offsets[k + 1])
            if hi <= start or lo >= stop or info.positions_file is None:
                continue
            pos = read_npy(self.path / info.positions_file, "positions file",
                           "delete it and rerun 'visae cache' (the same command) to rebuild it", mmap=True)
            parts.append(np.asarray(pos[max(start, lo) - lo:min(stop, hi) - lo], dtype=np.int64))
        return np.concatenate(parts) if parts else np.empty((0, self.tokens_per_image), dtype=np.int64)

    @property
    def d_model(self) -> int:
        """Activation width D."""
        return self.manifest.d_model

    @property
    def n_tokens(self) -> int:
        """Stored tokens: n_images × tokens_per_image."""
        return self.manifest.n_images * self.tokens_per_image

    @property
    def labels(self) -> np.ndarray:
        """int64 [N]."""
        return self._labels

    @property
    def image_ids(self) -> list[str]:
        """Stable ids of the stored images, in row order."""
        return self._image_ids

    @property
    def class_names(self) -> list[str]:
        """Class names indexed by label."""
        return self.manifest.class_names

    @property
    def mean_d(self) -> np.ndarray:
        """Per-dimension mean (float32 [D]) from stats.json."""
        return self._mean_d

    @property
    def std(self) -> float:
        """Scalar std from stats.json."""
        return self._std

    def normalize(self, acts: torch.Tensor) -> torch.Tensor:
        """(acts − mean_d) / std with this cache's statistics."""
        mean = self._mean_t.to(device=acts.device, dtype=acts.dtype)
        return (acts - mean) / self._std

    def _to_torch(self, arr: np.ndarray, normalize: bool) -> torch.Tensor:
        t = _float32_copy(arr)  # always a fresh copy: consumers may work in place
        # A float32 sum is finite when every entry is and float16 entries cannot overflow it, so the full
        # elementwise check runs only when the one cheap reduction says something is off.
        if not math.isfinite(float(t.sum())) and not bool(torch.isfinite(t).all()):
            raise CacheError(f"{self.path}: the cache holds NaN/Inf activations (visae's writer never stores "
                             "them: the files were altered or written by another tool); run open_cache(path, "
                             "verify=True), delete bad shards and rerun 'visae cache'")
        return self.normalize(t) if normalize else t

    def read_images(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start … stop-1`` as float16 ``[n, P, D]`` (a copy); CacheError for a training cache."""
        self.require_full_grid("reading whole images (M1–M7, the tasks, reports)")
        parts = []
        k = int(np.searchsorted(self._offsets, start, side="right")) - 1
        pos = start
        while pos < stop:
            lo = pos - int(self._offsets[k])
            hi = min(stop, int(self._offsets[k + 1])) - int(self._offsets[k])
            parts.append(np.asarray(self.shard(k)[lo:hi]))
            pos += hi - lo
            k += 1
        if not parts:
            return np.empty((0, self.n_patches, self.d_model), dtype=np.float16)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def iter_images(self, group_size: int = 64, normalize: bool = False, start: int = 0,
                    stop: int | None = None) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Ordered groups ``(index_n, acts_npd float32)`` of images start … stop-1."""
        stop = self.n_images if stop is None else min(stop, self.n_images)
        if group_size < 1:
            raise CacheError(f"group_size must be ≥ 1, got {group_size}")
        for g0 in range(max(0, start), stop, group_size):
            g1 = min(stop, g0 + group_size)
            yield np.arange(g0, g1, dtype=np.int64), self._to_torch(self.read_images(g0, g1), normalize)

    def n_batches(self, batch_size: int, epochs: int = 1, drop_last: bool = True) -> int:
        """Number of batches :meth:`token_sampler` yields."""
        from visae.cache.sampler import TokenStream

        return TokenStream([self]).n_batches(batch_size, epochs, drop_last)

    def token_sampler(self, batch_size: int, seed: int = 42, normalize: bool = True, epochs: int = 1,
                      start_step: int = 0, drop_last: bool = True, buffer_tokens: int | None = None,
                      prefetch: bool = True) -> Iterator[torch.Tensor]:
        """Shuffled patch-token batches ``[batch_size, D]`` float32; see :meth:`TokenStream.token_sampler`."""
        from visae.cache.sampler import TokenStream

        return TokenStream([self]).token_sampler(batch_size, seed, normalize, epochs, start_step, drop_last,
                                                 buffer_tokens, prefetch)

    def read_rows_into(self, k: int, r0: int, r1: int, out_td: np.ndarray) -> None:
        """Read rows ``r0 … r1-1`` of shard ``k`` into ``out_td`` (float16 ``[(r1-r0)·T, D]``) with one
        sequential ``preadv`` (no page-by-page memory-map faults)."""
        arr = self.shard(k)
        offset = int(getattr(arr, "offset", 0)) + r0 * int(arr.strides[0])
        view = memoryview(out_td.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
        want = (r1 - r0) * int(arr.strides[0])
        if view.nbytes != want or not out_td.flags.c_contiguous:
            raise CacheError(f"read_rows_into: output buffer holds {view.nbytes} bytes, rows need {want}")
        p = self.path / self.manifest.shards[k].file
        fd = os.open(p, os.O_RDONLY)
        try:
            done = 0
            while done < want:
                n = os.preadv(fd, [view[done:]], offset + done)
                if n <= 0:
                    raise CacheError(f"{p}: file ends early (read {done} of {want} bytes at offset "
                                     f"{offset}); rerun 'visae cache' (the same command) with --verify to "
                                     "rebuild it")
                done += n
        finally:
            os.close(fd)

    def verify(self) -> None:
        """Check every shard's sha256 against the manifest; CacheError names the first bad shard."""
        for info in self.manifest.shards:
            pairs = [(info.file, info.sha256)]
            if info.prefix_file and info.prefix_sha256:
                pairs.append((info.prefix_file, info.prefix_sha256))
            if info.positions_file and info.positions_sha256:
                pairs.append((info.positions_file, info.positions_sha256))
            for name, want in pairs:
                p = self.path / name
                if not p.is_file():
                    raise CacheError(f"{name}: missing from {self.path}; rerun 'visae cache' to rebuild it")
                got = sha256_file(p)
                if got != want:
                    raise CacheError(f"{name}: sha256 mismatch (manifest {want[:8]}…, file {got[:8]}…); "
                                     "rerun 'visae cache' (the same command) with --verify to rebuild it")

    def __repr__(self) -> str:
        m = self.manifest
        return (f"ActivationCache({str(self.path)!r}, backbone={m.backbone}, layer={m.layer}, "
                f"n_images={m.n_images}, P={m.n_patches}, D={m.d_model}"
                + (f", tokens_per_image={m.tokens_per_image})" if m.tokens_per_image else ")"))


def open_cache(path: Path | str | ActivationCache, verify: bool = False) -> ActivationCache:
    """Open a complete cache folder (``manifest.json`` present); CacheError otherwise.

    An already open cache is returned as it is (``verify`` then checks its shards again).
    """
    if isinstance(path, ActivationCache):
        if verify:
            path.verify()
        return path
    return ActivationCache(path, verify=verify)
