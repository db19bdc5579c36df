"""Building an activation cache: batched forward passes, fp16 shards, streaming stats, resume after a kill.

Protocol (docs/cache-protocol.md): shard ``k`` holds the readable images among source indices
``k·S … (k+1)·S − 1`` (``S`` = ``shard_images``). A shard is committed when ``progress.json`` (rewritten
atomically after the shard file is in place) lists it, together with its labels, ids, skipped images
and the running statistics. A rerun starts at the first shard not listed, so every image is stored
exactly once; batches never cross a shard boundary, so a resumed build is bitwise equal to an
uninterrupted one. ``manifest.json`` is written last.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from visae.backbones.base import Backbone
from visae.cache.config import CacheConfig
from visae.cache.manifest import SCHEMA_VERSION, ShardInfo
from visae.cache.positions import SUBSAMPLED_SCHEMA_VERSION, check_tokens_per_image, sample_positions
from visae.cache.stats import StreamingStats
from visae.cache.store import write_final, write_shard
from visae.config import build_config
from visae.datasets.base import ImageSource
from visae.errors import CacheError, ConfigError, DataError
from visae.io import atomic_write_json, check_output_dir, hash_json, remove_leftover_tmp

after_shard_hook: Callable[[int], None] | None = None
"""Called with the shard index after each shard is committed (tests use it to simulate a kill)."""


def _slug(text: str, max_len: int = 40) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return s[-max_len:].strip("-.") or "x"


def describe_preprocessing(backbone: Backbone) -> dict[str, Any]:
    """What the backbone's transform does, for the cache hash (``Backbone.preprocessing_spec()``).

    Object addresses in repr() text (``<function f at 0x7f…>``) are removed so the hash is stable.
    """
    from visae.backbones.base import preprocessing_of

    return {"image_size": list(backbone.layout.image_size), **preprocessing_of(backbone)}


def cache_key(backbone: Backbone, source: ImageSource, layer: int, keep_prefix: bool,
              tokens_per_image: int | None = None, position_seed: int = 42) -> dict[str, Any]:
    """Everything that determines a cache's content; its hash names the folder."""
    key = {"backbone": backbone.name, "weights_id": backbone.weights_id, "layer": layer,
           "source": source.fingerprint(), "preprocessing": describe_preprocessing(backbone),
           "dtype": "float16", "keep_prefix": keep_prefix, "schema_version": SCHEMA_VERSION}
    if tokens_per_image is not None:  # full caches keep the key (and folder) they always had
        key.update(tokens_per_image=tokens_per_image, position_seed=position_seed,
                   schema_version=SUBSAMPLED_SCHEMA_VERSION)
    return key


def cache_dir_for(out_dir: Path, backbone: Backbone, source: ImageSource, layer: int,
                  keep_prefix: bool = False, tokens_per_image: int | None = None, position_seed: int = 42) -> Path:
    """``<out_dir>/<backbone>-L<layer>-<source-slug>[-t<T>]-<hash16>``."""
    h = hash_json(cache_key(backbone, source, layer, keep_prefix, tokens_per_image, position_seed))
    tag = "" if tokens_per_image is None else f"-t{tokens_per_image}"
    return Path(out_dir) / f"{_slug(backbone.name)}-L{layer}-{_slug(source.spec)}{tag}-{h}"


class _Decode(Dataset[tuple[int, Any, str | None]]):
    """Source index → (index, transformed tensor or None, error or None); decoding errors are data."""

    def __init__(self, source: ImageSource, transform: Callable[[Any], torch.Tensor]) -> None:
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[int, Any, str | None]:
        try:
            return index, self.transform(self.source.load(index)), None
        except DataError as e:
            return index, None, str(e)
        except Exception as e:  # a transform failing on a strange image is a bad image too
            return index, None, f"{self.source.image_id(index)}: cannot preprocess image ({type(e).__name__}: {e})"


def _collate(items: list[tuple[int, Any, str | None]]) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    good = [(i, t) for i, t, err in items if err is None]
    bad = [(i, err) for i, _t, err in items if err is not None]
    pixels = torch.stack([t for _, t in good]) if good else None
    return [i for i, _ in good], pixels, bad


@contextlib.contextmanager
def _lock(folder: Path) -> Iterator[None]:
    """One writer per cache folder; a lock left by a dead process on this host is taken over."""
    path = folder / ".lock"
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                other = json.loads(path.read_text())
            except (OSError, ValueError):
                other = {}
            alive = True
            if other.get("host") == me["host"]:
                try:
                    os.kill(int(other.get("pid", -1)), 0)
                except (ProcessLookupError, ValueError, OverflowError):
                    alive = False
                except PermissionError:
                    alive = True
            if alive and other:
                raise CacheError(f"{folder}: another 'visae cache' (pid {other.get('pid')} on {other.get('host')}) "
                                 f"is writing this cache; wait for it, or delete {path} if it is gone") from None
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _resolve(backbone: Backbone | str, source: ImageSource | str, cfg: CacheConfig) -> tuple[Backbone, ImageSource]:
    if isinstance(backbone, str):
        from visae.backbones.registry import load_backbone

        bb = load_backbone(backbone, device=cfg.device, weights_path=cfg.weights_path, image_size=cfg.image_size)
    else:
        bb = backbone
        _check_backbone_object(bb, cfg)
    if isinstance(source, str):
        from visae.datasets.registry import open_source

        src = open_source(source, split=cfg.split, max_images=cfg.max_images, seed=cfg.subset_seed,
                          stratified=cfg.stratified)
    else:
        from visae.datasets.subset import take_subset

        src = take_subset(source, cfg.max_images, seed=cfg.subset_seed, stratified=cfg.stratified)
    return bb, src


def _check_backbone_object(bb: Backbone, cfg: CacheConfig) -> None:
    """Settings that build a backbone cannot change one already built: refuse them unless they agree."""
    from visae.device import pick_device

    problems = []
    if cfg.weights_path is not None:
        problems.append(f"weights_path={cfg.weights_path!r} (its weights are {bb.weights_id})")
    if cfg.image_size is not None and (cfg.image_size, cfg.image_size) != tuple(bb.layout.image_size):
        problems.append(f"image_size={cfg.image_size} (it runs at {bb.layout.image_size[0]}×{bb.layout.image_size[1]})")
    if cfg.device not in ("", "auto"):
        want, have = pick_device(cfg.device), torch.device(bb.device)
        if want.type != have.type or (want.index or 0) != (have.index or 0):
            problems.append(f"device={cfg.device!r} (it is on {have})")
    if problems:
        raise ConfigError(f"build_cache: {', '.join(problems)} cannot be applied to the Backbone object "
                          f"{bb.name!r}, which is already built; build it with load_backbone({bb.name!r}, …) "
                          "with those settings, or pass the backbone's name instead of the object")


def build_cache(backbone: Backbone | str, source: ImageSource | str, layer: int, out_dir: Path | str,
                config: CacheConfig | None = None, **kwargs: Any) -> Path:
    """Cache the patch tokens of ``layer`` of ``backbone`` over ``source`` under ``out_dir``; return the folder.

    ``backbone`` is a registry/timm name or a :class:`Backbone`; ``source`` a spec or an
    :class:`ImageSource`. Other settings come from ``config`` or keyword arguments (fields of
    :class:`CacheConfig`). An existing complete cache is returned at once; a partial one is resumed.
    """
    if config is not None and kwargs:
        raise ConfigError("build_cache: pass either config=… or keyword settings, not both")
    base = dict(config.to_dict() if config is not None else kwargs)
    base.update(backbone=backbone if isinstance(backbone, str) else backbone.name,
                source=source if isinstance(source, str) else source.spec, layer=layer, out=str(out_dir))
    cfg = build_config(CacheConfig, base, source="build_cache")
    check_output_dir(out_dir)
    bb, src = _resolve(backbone, source, cfg)
    bb.check_layer(layer)
    check_tokens_per_image(cfg.tokens_per_image, bb.layout.n_patches)
    folder = cache_dir_for(Path(out_dir), bb, src, layer, cfg.keep_prefix, cfg.tokens_per_image, cfg.position_seed)
    if (folder / "manifest.json").is_file():
        missing = _missing_shards(folder)
        if not missing:
            if cfg.progress:
                print(f"cache exists: {folder}")
            return folder
        if cfg.progress:
            print(f"cache {folder}: rebuilding from missing {missing[0]}")
        _reopen_for_repair(folder, missing[0])
    folder.mkdir(parents=True, exist_ok=True)
    with _lock(folder):
        remove_leftover_tmp(folder)  # partial files of a killed run: never read, only reclaimed
        _CacheBuild(bb, src, layer, folder, cfg).run()
    return folder


def _missing_shards(folder: Path) -> list[str]:
    """Shard files the manifest lists that are not on disk (deleted after a checksum failure)."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        files = [f for s in manifest["shards"] for f in (s["file"], s.get("prefix_file"), s.get("positions_file")) if f]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [f for f in files if not (folder / f).is_file()]


def _reopen_for_repair(folder: Path, first_missing: str) -> None:
    """Turn a complete cache with a lost shard back into a partial one that resumes at that shard.

    The shards before it are kept (their statistics are recomputed from the stored values); the lost
    shard and the ones after it are rebuilt by the normal resume path.
    """
    from visae.cache.manifest import CacheManifest

    m = CacheManifest.model_validate_json((folder / "manifest.json").read_text())
    if m.shard_images is None:
        raise CacheError(f"{folder}: {first_missing} is missing and the manifest predates repair support; "
                         "delete the folder and rerun 'visae cache'")
    labels = np.load(folder / "labels.npy")
    ids = json.loads((folder / "image_ids.json").read_text())
    skipped = json.loads((folder / "skipped.json").read_text()) if (folder / "skipped.json").is_file() else []
    keep = next(k for k, s in enumerate(m.shards) if first_missing in (s.file, s.prefix_file, s.positions_file))
    stats = StreamingStats(m.d_model)
    entries = []
    row = 0
    for k, info in enumerate(m.shards[:keep]):
        arr = np.load(folder / info.file, mmap_mode="r")
        for s0 in range(0, len(arr), 16):
            stats.update(np.array(arr[s0:s0 + 16]).reshape(-1, m.d_model))
        entries.append({**info.model_dump(mode="json"),
                        "labels": [int(v) for v in labels[row:row + info.n_images]],
                        "ids": ids[row:row + info.n_images],
                        "skipped": [s for s in skipped if s["index"] // m.shard_images == k]})
        row += info.n_images
    atomic_write_json(folder / "progress.json", {"hash": m.hash, "shard_images": m.shard_images,
                                                 "shards": entries, "stats": stats.state()})
    (folder / "manifest.json").unlink()


class _CacheBuild:
    """One (possibly resumed) build of one cache folder."""

    def __init__(self, backbone: Backbone, source: ImageSource, layer: int, folder: Path, cfg: CacheConfig) -> None:
        self.bb, self.src, self.layer, self.folder, self.cfg = backbone, source, layer, folder, cfg
        self.key = cache_key(backbone, source, layer, cfg.keep_prefix, cfg.tokens_per_image, cfg.position_seed)
        self.hash = hash_json(self.key)
        self.layout = backbone.layout
        self.d = backbone.d_model
        self.progress_path = folder / "progress.json"
        state = self._read_progress()
        self.shard_images: int = state.get("shard_images", cfg.shard_images)
        self.entries: list[dict[str, Any]] = state.get("shards", [])
        self.stats = (StreamingStats.from_state(state["stats"], self.d) if "stats" in state
                      else StreamingStats(self.d))

    def _read_progress(self) -> dict[str, Any]:
        if not self.progress_path.is_file():
            return {}
        try:
            state = json.loads(self.progress_path.read_text())
        except (OSError, ValueError):
            return {}  # unreadable progress: start over (shards are rewritten)
        if state.get("hash") != self.hash:
            return {}
        return state

    def _write_progress(self) -> None:
        atomic_write_json(self.progress_path, {
            "hash": self.hash, "shard_images": self.shard_images, "shards": self.entries,
            "stats": self.stats.state()})

    def _batches(self, first_shard: int) -> list[list[int]]:
        n, s, b = len(self.src), self.shard_images, self.cfg.batch_size
        out: list[list[int]] = []
        for k in range(first_shard, math.ceil(n / s)):
            lo, hi = k * s, min(n, (k + 1) * s)
            out.extend(list(range(i, min(hi, i + b))) for i in range(lo, hi, b))
        return out

    def run(self) -> None:
        n = len(self.src)
        n_shards = math.ceil(n / self.shard_images)
        first = len(self.entries)
        device = self.bb.device
        workers = self.cfg.num_workers
        if workers is None:
            workers = min(8, max(0, (os.cpu_count() or 1) - 1))
        loader = DataLoader(_Decode(self.src, self.bb.transform), batch_sampler=self._batches(first),
                            num_workers=workers, collate_fn=_collate, pin_memory=device.type == "cuda",
                            prefetch_factor=4 if workers else None)
        from tqdm.auto import tqdm

        bar = tqdm(total=n, initial=min(n, first * self.shard_images), unit="img", unit_scale=False,
                   desc=f"cache {self.bb.name} L{self.layer}", disable=not self.cfg.progress, dynamic_ncols=True)
        pending: Future[None] | None = None
        shard_k = first
        parts: list[np.ndarray] = []
        prefix_parts: list[np.ndarray] = []
        rows: list[int] = []
        skipped: list[dict[str, Any]] = []
        shard_stats = StreamingStats(self.d)
        n_prefix = self.layout.n_prefix
        with ThreadPoolExecutor(max_workers=1) as pool:
            try:
                for good_idx, pixels, bad in loader:
                    for i, err in bad:
                        if self.cfg.on_bad_image == "fail":
                            raise DataError(f"{err} (image {i}, id {self.src.image_id(i)}); "
                                            "set on_bad_image=skip to skip unreadable images")
                        skipped.append({"index": i, "image_id": self.src.image_id(i), "error": err})
                    if pixels is not None:
                        with torch.inference_mode():
                            tokens_btd = self.bb.block_outputs(pixels.to(device, non_blocking=True),
                                                               [self.layer])[self.layer]
                            half_btd = tokens_btd.to(torch.float16)
                            finite_b = torch.isfinite(half_btd).flatten(1).all(dim=1)
                            if not bool(finite_b.all()):
                                bad_ids = [self.src.image_id(good_idx[j])
                                           for j in torch.nonzero(~finite_b).flatten().tolist()]
                                raise CacheError(
                                    f"{self.bb.name} layer {self.layer}: NaN/Inf activations (or beyond the float16 "
                                    f"range) for image(s) {', '.join(bad_ids[:10])}; nothing was written for shard "
                                    f"{shard_k}. Check the images and the backbone's weights")
                            patches = self._kept(half_btd[:, n_prefix:], good_idx)
                            shard_stats.update(patches.reshape(-1, self.d))
                            parts.append(patches.cpu().numpy())
                            if self.cfg.keep_prefix:
                                prefix_parts.append(half_btd[:, :n_prefix].cpu().numpy())
                        rows.extend(good_idx)
                    bar.update(len(good_idx) + len(bad))
                    last = (good_idx + [i for i, _ in bad])
                    if last and max(last) + 1 >= min(n, (shard_k + 1) * self.shard_images):
                        if pending is not None:
                            pending.result()
                        pending = pool.submit(self._commit, shard_k, parts, prefix_parts, rows, skipped, shard_stats)
                        shard_k += 1
                        parts, prefix_parts, rows, skipped = [], [], [], []
                        shard_stats = StreamingStats(self.d)
                if pending is not None:
                    pending.result()
            finally:
                bar.close()
        if len(self.entries) != n_shards:
            raise CacheError(f"{self.folder}: internal error: {len(self.entries)} of {n_shards} shards committed")
        self._finish()

    def _positions(self, rows: list[int]) -> np.ndarray | None:
        """Kept patch positions of source images ``rows`` (None for a full cache)."""
        t = self.cfg.tokens_per_image
        return None if t is None else sample_positions(rows, self.layout.n_patches, t, self.cfg.position_seed)

    def _kept(self, patches_bpd: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """The patch tokens this cache stores: all of them, or the seeded ``tokens_per_image`` positions."""
        pos = self._positions(rows)
        if pos is None:
            return patches_bpd
        idx = torch.from_numpy(pos.astype(np.int64)).to(patches_bpd.device)
        return torch.gather(patches_bpd, 1, idx[:, :, None].expand(-1, -1, patches_bpd.shape[2]))

    def _commit(self, k: int, parts: list[np.ndarray], prefix_parts: list[np.ndarray], rows: list[int],
                skipped: list[dict[str, Any]], shard_stats: StreamingStats) -> None:
        p, d = self.cfg.tokens_per_image or self.layout.n_patches, self.d
        acts = np.concatenate(parts) if parts else np.empty((0, p, d), dtype=np.float16)
        prefix = None
        if self.cfg.keep_prefix:
            prefix = (np.concatenate(prefix_parts) if prefix_parts
                      else np.empty((0, self.layout.n_prefix, d), dtype=np.float16))
        info = write_shard(self.folder, k, acts, prefix, self._positions(rows))
        if shard_stats.n_tokens:
            self.stats.merge(shard_stats.n_tokens, shard_stats.mean_d, shard_stats.m2_d)
        labels = self.src.labels
        self.entries.append({**info.model_dump(mode="json"), "labels": [int(labels[i]) for i in rows],
                             "ids": [self.src.image_id(i) for i in rows], "skipped": skipped})
        self._write_progress()
        if after_shard_hook is not None:
            after_shard_hook(k)

    def _finish(self) -> None:
        shards = [ShardInfo(**{k: e[k] for k in ShardInfo.model_fields if k in e}) for e in self.entries]
        labels = np.asarray([lab for e in self.entries for lab in e["labels"]], dtype=np.int64)
        ids = [i for e in self.entries for i in e["ids"]]
        skipped = [s for e in self.entries for s in e["skipped"]]
        if not ids:
            raise DataError(f"{self.src.spec}: none of the {len(self.src)} images could be read "
                            f"(first error: {skipped[0]['error'] if skipped else 'no images'})")
        fields = {
            "schema_version": SCHEMA_VERSION, "hash": self.hash, "backbone": self.bb.name,
            "weights_id": self.bb.weights_id, "control": getattr(self.bb, "control", None),
            "layer": self.layer, "source": self.key["source"],
            "layout": self.layout.to_dict(), "d_model": self.d, "n_patches": self.layout.n_patches,
            "dtype": "float16", "class_names": list(self.src.class_names),
            "preprocessing": self.key["preprocessing"], "shard_images": self.shard_images,
        }
        if self.cfg.tokens_per_image is not None:
            fields.update(schema_version=SUBSAMPLED_SCHEMA_VERSION, tokens_per_image=self.cfg.tokens_per_image,
                          position_seed=self.cfg.position_seed)
        write_final(self.folder, manifest_fields=fields, shards=shards, labels=labels, image_ids=ids,
                    stats=self.stats, skipped=skipped)
        self.progress_path.unlink(missing_ok=True)
        if skipped and self.cfg.progress:
            print(f"skipped {len(skipped)} unreadable image(s); see {self.folder / 'skipped.json'}")
