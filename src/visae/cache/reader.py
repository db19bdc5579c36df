"""Reading an activation cache: manifest, statistics, a per-image iterator and a shuffled token sampler.

The on-disk format is described in docs/cache-protocol.md. Shards are memory-mapped; nothing reads a
whole cache into memory.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from visae.backbones.layout import TokenLayout
from visae.cache.manifest import SCHEMA_VERSION, CacheManifest
from visae.errors import CacheError
from visae.io import sha256_file

DEFAULT_BUFFER_TOKENS = 1 << 17
"""Tokens held (fp16) by the training sampler's shuffle buffer: 192 MiB at D=768."""

CHUNK_TOKENS = 4096
"""The sampler reads images in contiguous chunks of about this many tokens (a few MiB)."""


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CacheError(f"{path}: {what} is missing; rerun 'visae cache' to rebuild the cache") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CacheError(f"{path}: {what} is not valid JSON ({e}); rerun 'visae cache' to rebuild it") from None


class ActivationCache:
    """An opened, complete cache folder."""

    path: Path
    manifest: CacheManifest

    def __init__(self, path: Path | str, verify: bool = False) -> None:
        self.path = Path(path)
        manifest_path = self.path / "manifest.json"
        if not manifest_path.is_file():
            if (self.path / "progress.json").is_file():
                raise CacheError(f"{self.path}: the cache is incomplete (no manifest.json, progress.json present); "
                                 "rerun the same 'visae cache' command to finish it")
            raise CacheError(f"{self.path}: not an activation cache (no manifest.json); build one with 'visae cache'")
        raw = _read_json(manifest_path, "manifest.json")
        if not isinstance(raw, dict):
            raise CacheError(f"{manifest_path}: expected a JSON object")
        version = raw.get("schema_version")
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise CacheError(f"{manifest_path}: cache schema version {version} is newer than this visae supports "
                             f"({SCHEMA_VERSION}); upgrade visae (pip install -U visae)")
        try:
            self.manifest = CacheManifest.model_validate(raw)
        except ValidationError as e:
            raise CacheError(f"{manifest_path}: invalid manifest: {e}") from None
        m = self.manifest
        self._layout = TokenLayout.from_dict(m.layout)
        if self._layout.n_patches != m.n_patches:
            raise CacheError(f"{manifest_path}: layout has {self._layout.n_patches} patches, manifest says {m.n_patches}")
        counts = [s.n_images for s in m.shards]
        if sum(counts) != m.n_images:
            raise CacheError(f"{manifest_path}: shards hold {sum(counts)} images, manifest says {m.n_images}")
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._labels = self._load_labels()
        ids = _read_json(self.path / "image_ids.json", "image_ids.json")
        if not isinstance(ids, list) or len(ids) != m.n_images:
            raise CacheError(f"{self.path / 'image_ids.json'}: expected a list of {m.n_images} ids")
        self._image_ids = [str(i) for i in ids]
        stats = _read_json(self.path / "stats.json", "stats.json")
        try:
            self._mean_d = np.asarray(stats["mean"], dtype=np.float32)
            self._std = float(stats["std"])
        except (KeyError, TypeError, ValueError):
            raise CacheError(f"{self.path / 'stats.json'}: expected {{'mean': [...], 'std': float}}") from None
        if self._mean_d.shape != (m.d_model,):
            raise CacheError(f"{self.path / 'stats.json'}: mean has {self._mean_d.size} values, expected {m.d_model}")
        self._mean_t = torch.from_numpy(self._mean_d)
        self._shards: list[np.ndarray | None] = [None] * len(m.shards)
        for info in m.shards:
            for name in (info.file, info.prefix_file):
                # A manifest is data: its file names must be plain names inside this folder.
                if name is not None and (name != Path(name).name or name in ("", ".", "..")):
                    raise CacheError(f"{manifest_path}: shard file {name!r} is not a plain file name inside the "
                                     "cache folder; refusing to read it (the manifest is corrupt or hostile)")
            if not (self.path / info.file).is_file():
                raise CacheError(f"{self.path / info.file}: shard missing; rerun 'visae cache' to rebuild it")
        if verify:
            self.verify()

    def _load_labels(self) -> np.ndarray:
        p = self.path / "labels.npy"
        try:
            labels = np.load(p, allow_pickle=False)
        except FileNotFoundError:
            raise CacheError(f"{p}: labels.npy is missing; rerun 'visae cache' to rebuild the cache") from None
        except ValueError as e:
            raise CacheError(f"{p}: unreadable ({e}); rerun 'visae cache' to rebuild it") from None
        if labels.shape != (self.manifest.n_images,):
            raise CacheError(f"{p}: expected {self.manifest.n_images} labels, found shape {labels.shape}")
        return labels.astype(np.int64, copy=False)

    def shard(self, k: int) -> np.ndarray:
        """Memory-mapped shard ``k``: float16 ``[n_images_k, P, D]``."""
        arr = self._shards[k]
        if arr is None:
            info = self.manifest.shards[k]
            p = self.path / info.file
            try:
                arr = np.load(p, mmap_mode="r", allow_pickle=False)
            except ValueError as e:
                raise CacheError(f"{p}: unreadable shard ({e}); delete it and rerun 'visae cache' to rebuild it") from None
            want = (info.n_images, self.manifest.n_patches, self.manifest.d_model)
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
        """Patch tokens per image P."""
        return self.manifest.n_patches

    @property
    def d_model(self) -> int:
        """Activation width D."""
        return self.manifest.d_model

    @property
    def n_tokens(self) -> int:
        """n_images × n_patches."""
        return self.manifest.n_images * self.manifest.n_patches

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
        t = torch.from_numpy(np.asarray(arr, dtype=np.float32))
        if not bool(torch.isfinite(t).all()):
            raise CacheError(f"{self.path}: the cache holds NaN/Inf activations (visae's writer never stores "
                             "them: the files were altered or written by another tool); run open_cache(path, "
                             "verify=True), delete bad shards and rerun 'visae cache'")
        return self.normalize(t) if normalize else t

    def read_images(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start … stop-1`` as float16 ``[n, P, D]`` (a copy)."""
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
        per_epoch = self.n_tokens // batch_size if drop_last else math.ceil(self.n_tokens / batch_size)
        return per_epoch * epochs

    def _chunks(self) -> list[tuple[int, int, int]]:
        """Contiguous image ranges ``(shard, row_start, row_stop)`` the sampler shuffles and reads."""
        per_chunk = max(1, CHUNK_TOKENS // max(1, self.n_patches))
        out = []
        for k, info in enumerate(self.manifest.shards):
            for r in range(0, info.n_images, per_chunk):
                out.append((k, r, min(info.n_images, r + per_chunk)))
        return out

    def token_sampler(self, batch_size: int, seed: int = 42, normalize: bool = True, epochs: int = 1,
                      start_step: int = 0, drop_last: bool = True,
                      buffer_tokens: int | None = None) -> Iterator[torch.Tensor]:
        """Shuffled patch-token batches ``[batch_size, D]`` float32 over all shards, bounded memory.

        Each epoch visits every token exactly once: contiguous chunks of images (a few MiB each) are
        taken in a seeded random order from all shards, gathered into a buffer of about
        ``buffer_tokens`` tokens, and permuted inside it; the tokens left over after the last full batch
        of a buffer are carried into the next one. With ``drop_last`` the final partial batch of each
        epoch is dropped. Deterministic for a seed; ``start_step`` skips that many batches (resume after
        a kill) without reading the skipped data.
        """
        if batch_size < 1:
            raise CacheError(f"batch_size must be ≥ 1, got {batch_size}")
        buffer_tokens = max(buffer_tokens or DEFAULT_BUFFER_TOKENS, 2 * batch_size)
        chunks = self._chunks()
        P, D = self.n_patches, self.d_model
        step = 0
        for epoch in range(epochs):
            if step + self.n_batches(batch_size, 1, drop_last) <= start_step:
                step += self.n_batches(batch_size, 1, drop_last)
                continue
            rng = np.random.default_rng([seed, epoch])
            order = rng.permutation(len(chunks))
            carry = np.empty((0, D), dtype=np.float16)
            pos = 0
            while pos < len(order):
                window: list[tuple[int, int, int]] = []
                n_win = 0
                while pos < len(order) and (not window or n_win < buffer_tokens):
                    c = chunks[order[pos]]
                    window.append(c)
                    n_win += (c[2] - c[1]) * P
                    pos += 1
                n_avail = len(carry) + n_win
                perm = rng.permutation(n_avail)
                n_full = n_avail // batch_size
                if step + n_full <= start_step:
                    carry = self._gather(carry, window, perm[n_full * batch_size:])
                    step += n_full
                    continue
                buf = np.concatenate([carry, *(self.shard(k)[r0:r1].reshape(-1, D) for k, r0, r1 in window)])
                for b in range(n_full):
                    if step >= start_step:
                        yield self._to_torch(buf[perm[b * batch_size:(b + 1) * batch_size]], normalize)
                    step += 1
                carry = buf[perm[n_full * batch_size:]]
                del buf
            if not drop_last and len(carry):
                if step >= start_step:
                    yield self._to_torch(carry, normalize)
                step += 1

    def _gather(self, carry: np.ndarray, window: list[tuple[int, int, int]], idx: np.ndarray) -> np.ndarray:
        """Tokens ``idx`` of the virtual buffer ``carry ++ window`` without reading the whole window."""
        P, D = self.n_patches, self.d_model
        out = np.empty((len(idx), D), dtype=np.float16)
        in_carry = idx < len(carry)
        out[in_carry] = carry[idx[in_carry]]
        starts = np.cumsum([0] + [(r1 - r0) * P for _, r0, r1 in window]) + len(carry)
        for j, (k, r0, _r1) in enumerate(window):
            sel = np.nonzero((idx >= starts[j]) & (idx < starts[j + 1]))[0]
            if len(sel):
                local = idx[sel] - starts[j]
                out[sel] = self.shard(k)[r0 + local // P, local % P]
        return out

    def verify(self) -> None:
        """Check every shard's sha256 against the manifest; CacheError names the first bad shard."""
        for info in self.manifest.shards:
            pairs = [(info.file, info.sha256)]
            if info.prefix_file and info.prefix_sha256:
                pairs.append((info.prefix_file, info.prefix_sha256))
            for name, want in pairs:
                p = self.path / name
                if not p.is_file():
                    raise CacheError(f"{name}: missing from {self.path}; rerun 'visae cache' to rebuild it")
                got = sha256_file(p)
                if got != want:
                    raise CacheError(f"{name}: sha256 mismatch (manifest {want[:8]}…, file {got[:8]}…); "
                                     "delete the shard and rerun 'visae cache' to rebuild it")

    def __repr__(self) -> str:
        m = self.manifest
        return (f"ActivationCache({str(self.path)!r}, backbone={m.backbone}, layer={m.layer}, "
                f"n_images={m.n_images}, P={m.n_patches}, D={m.d_model})")


def open_cache(path: Path | str, verify: bool = False) -> ActivationCache:
    """Open a complete cache folder (``manifest.json`` present); CacheError otherwise."""
    return ActivationCache(path, verify=verify)
