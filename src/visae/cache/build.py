"""One (possibly resumed or repairing) build of a cache folder: batched forward passes into fp16 shards.

Shard ``k`` holds the readable images among source indices ``k·S … (k+1)·S − 1``; batches never cross a
shard boundary, so a resumed build, and a rebuilt shard, are bitwise equal to an uninterrupted build.
The journal (``progress.json``) lists each committed shard with its labels, ids, skipped images and the
running statistics; when the cache is complete it also holds the final files' content
(:mod:`visae.cache.repair` rebuilds lost or damaged files from it).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from visae import __version__
from visae.backbones.base import Backbone
from visae.cache.config import CacheConfig
from visae.cache.manifest import SCHEMA_VERSION, CacheManifest, ShardInfo
from visae.cache.naming import cache_key
from visae.cache.positions import SUBSAMPLED_SCHEMA_VERSION, sample_positions
from visae.cache.stats import StreamingStats
from visae.cache.store import final_files, write_final_files, write_shard
from visae.datasets.base import ImageSource
from visae.device import cpu_budget
from visae.errors import CacheError, DataError
from visae.io import atomic_write_json, hash_json

after_shard_hook: Callable[[int], None] | None = None
"""Called with the shard index after each shard is committed (tests use it to simulate a kill)."""

JOURNAL = "progress.json"
log = logging.getLogger(__name__)


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
            image_id = self.source.image_id(index)
            return index, None, f"{image_id}: cannot preprocess image ({type(e).__name__}: {e})"


def _collate(items: list[tuple[int, Any, str | None]]) -> tuple[list[int], torch.Tensor | None,
                                                                list[tuple[int, str]]]:
    good = [(i, t) for i, t, err in items if err is None]
    bad = [(i, err) for i, _t, err in items if err is not None]
    pixels = torch.stack([t for _, t in good]) if good else None
    return [i for i, _ in good], pixels, bad


def read_journal(folder: Path, cache_hash: str) -> dict[str, Any]:
    """The journal of ``folder`` if it is readable and of this cache, else ``{}``."""
    try:
        state = json.loads((folder / JOURNAL).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(state,
                      dict) or state.get("hash") != cache_hash or not isinstance(state.get("shards"), list):
        return {}
    return state


class _Shard:
    """What one shard accumulates until it is committed."""

    def __init__(self, k: int, d: int) -> None:
        self.k = k
        self.parts: list[np.ndarray] = []
        self.prefix_parts: list[np.ndarray] = []
        self.rows: list[int] = []
        self.skipped: list[dict[str, Any]] = []
        self.stats = StreamingStats(d)


class CacheBuild:
    """Build, resume or repair the cache of ``layer`` of ``backbone`` over ``source`` in ``folder``."""

    def __init__(self, backbone: Backbone, source: ImageSource, layer: int, folder: Path,
                 cfg: CacheConfig) -> None:
        self.bb, self.src, self.layer, self.folder, self.cfg = backbone, source, layer, folder, cfg
        self.key = cache_key(backbone, source, layer, cfg.keep_prefix, cfg.tokens_per_image,
                             cfg.position_seed)
        self.hash = hash_json(self.key)
        self.layout = backbone.layout
        self.d = backbone.d_model
        self.journal = read_journal(folder, self.hash)
        self.shard_images: int = self.journal.get("shard_images", cfg.shard_images)
        self.entries: list[dict[str, Any]] = self.journal.get("shards", [])
        self.stats = (StreamingStats.from_state(self.journal["stats"], self.d) if "stats" in self.journal
                      else StreamingStats(self.d))

    @property
    def n_shards(self) -> int:
        """Shards of the complete cache."""
        return math.ceil(len(self.src) / self.shard_images)

    def _write_journal(self) -> None:
        state: dict[str, Any] = {"hash": self.hash, "shard_images": self.shard_images, "shards": self.entries}
        if "final" in self.journal:  # complete: the running sums are no longer needed
            state["final"] = self.journal["final"]
        else:
            state["stats"] = self.stats.state()
        self.journal = state
        atomic_write_json(self.folder / JOURNAL, state)

    def _batches(self, shards: list[int]) -> list[list[int]]:
        n, s, b = len(self.src), self.shard_images, self.cfg.batch_size
        out: list[list[int]] = []
        for k in shards:
            lo, hi = k * s, min(n, (k + 1) * s)
            out.extend(list(range(i, min(hi, i + b))) for i in range(lo, hi, b))
        return out

    def _loader(self, shards: list[int]) -> DataLoader[Any]:
        workers = self.cfg.num_workers
        if workers is None:
            workers = min(8, max(0, cpu_budget() - 1))
        return DataLoader(_Decode(self.src, self.bb.transform), batch_sampler=self._batches(shards),
                          num_workers=workers, collate_fn=_collate, pin_memory=self.bb.device.type == "cuda",
                          prefetch_factor=4 if workers else None)

    def run(self, shards: list[int] | None = None) -> None:
        """Compute ``shards`` (default: those not committed yet), then write the final files if complete."""
        todo = list(range(len(self.entries), self.n_shards)) if shards is None else sorted(shards)
        if todo:
            self._compute(todo)
        if len(self.entries) != self.n_shards:
            raise CacheError(f"{self.folder}: internal error: {len(self.entries)} of {self.n_shards} shards "
                             "committed")
        if shards is None or "final" not in self.journal:
            self._finish()

    def _compute(self, todo: list[int]) -> None:
        from tqdm.auto import tqdm

        n = len(self.src)
        total = sum(min(n, (k + 1) * self.shard_images) - k * self.shard_images for k in todo)
        bar = tqdm(total=total, unit="img", unit_scale=False, desc=f"cache {self.bb.name} L{self.layer}",
                   disable=not self.cfg.progress, dynamic_ncols=True)
        pending: Future[None] | None = None
        pos = 0
        cur = _Shard(todo[0], self.d)
        with ThreadPoolExecutor(max_workers=1) as pool:
            try:
                for good_idx, pixels, bad in self._loader(todo):
                    self._add_batch(cur, good_idx, pixels, bad)
                    bar.update(len(good_idx) + len(bad))
                    seen = good_idx + [i for i, _ in bad]
                    if seen and max(seen) + 1 >= min(n, (cur.k + 1) * self.shard_images):
                        if pending is not None:
                            pending.result()
                        pending = pool.submit(self._commit, cur)
                        pos += 1
                        cur = _Shard(todo[pos] if pos < len(todo) else -1, self.d)
                if pending is not None:
                    pending.result()
            finally:
                bar.close()

    def _add_batch(self, cur: _Shard, good_idx: list[int], pixels: torch.Tensor | None,
                   bad: list[tuple[int, str]]) -> None:
        for i, err in bad:
            if self.cfg.on_bad_image == "fail":
                raise DataError(f"{err} (image {i}, id {self.src.image_id(i)}); "
                                "set on_bad_image=skip to skip unreadable images")
            cur.skipped.append({"index": i, "image_id": self.src.image_id(i), "error": err})
        if pixels is not None:
            with torch.inference_mode():
                tokens_btd = self.bb.block_outputs(pixels.to(self.bb.device, non_blocking=True),
                                                   [self.layer])[self.layer]
                half_btd = tokens_btd.to(torch.float16)
                finite_b = torch.isfinite(half_btd).flatten(1).all(dim=1)
                if not bool(finite_b.all()):
                    bad_ids = [self.src.image_id(good_idx[j])
                               for j in torch.nonzero(~finite_b).flatten().tolist()]
                    raise CacheError(
                        f"{self.bb.name} layer {self.layer}: NaN/Inf activations (or beyond the float16 "
                        f"range) for image(s) {', '.join(bad_ids[:10])}; nothing was written for shard "
                        f"{cur.k}. Check the images and the backbone's weights")
                patches = self._kept(half_btd[:, self.layout.n_prefix:], good_idx)
                cur.stats.update(patches.reshape(-1, self.d))
                cur.parts.append(patches.cpu().numpy())
                if self.cfg.keep_prefix:
                    cur.prefix_parts.append(half_btd[:, :self.layout.n_prefix].cpu().numpy())
        cur.rows.extend(good_idx)

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

    def _commit(self, cur: _Shard) -> None:
        p, d = self.cfg.tokens_per_image or self.layout.n_patches, self.d
        acts = np.concatenate(cur.parts) if cur.parts else np.empty((0, p, d), dtype=np.float16)
        prefix = None
        if self.cfg.keep_prefix:
            prefix = (np.concatenate(cur.prefix_parts) if cur.prefix_parts
                      else np.empty((0, self.layout.n_prefix, d), dtype=np.float16))
        info = write_shard(self.folder, cur.k, acts, prefix, self._positions(cur.rows))
        if cur.k < len(self.entries):
            self._check_rebuilt(cur.k, info)
        else:
            if cur.stats.n_tokens:
                self.stats.merge(cur.stats.n_tokens, cur.stats.mean_d, cur.stats.m2_d)
            labels = self.src.labels
            self.entries.append({**info.model_dump(mode="json"), "labels": [int(labels[i]) for i in cur.rows],
                                 "ids": [self.src.image_id(i) for i in cur.rows], "skipped": cur.skipped})
            self._write_journal()
        if after_shard_hook is not None:
            after_shard_hook(cur.k)

    def _check_rebuilt(self, k: int, info: ShardInfo) -> None:
        """A rebuilt shard must equal the one the journal records, or the cache would mix two builds."""
        entry = self.entries[k]
        for name, want, got in ((info.file, entry["sha256"], info.sha256),
                                (info.prefix_file, entry.get("prefix_sha256"), info.prefix_sha256),
                                (info.positions_file, entry.get("positions_sha256"), info.positions_sha256)):
            if name and want != got:
                (self.folder / name).unlink(missing_ok=True)
                raise CacheError(f"{self.folder / name}: the rebuilt shard differs from the one this cache "
                                 "recorded (another device, torch or weights version made the rest); delete "
                                 f"the folder {self.folder} and rerun 'visae cache' to rebuild the "
                                 "whole cache")

    def final_content(self) -> dict[str, Any]:
        """The final files' content, from the journal's entries (the manifest's ``created`` set now)."""
        import datetime as _dt

        shards = [ShardInfo(**{k: e[k] for k in ShardInfo.model_fields if k in e}) for e in self.entries]
        skipped = [s for e in self.entries for s in e["skipped"]]
        if not any(e["ids"] for e in self.entries):
            raise DataError(f"{self.src.spec}: none of the {len(self.src)} images could be read "
                            f"(first error: {skipped[0]['error'] if skipped else 'no images'})")
        fields: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "hash": self.hash, "backbone": self.bb.name,
            "weights_id": self.bb.weights_id, "control": getattr(self.bb, "control", None),
            "layer": self.layer,
            "source": self.key["source"], "layout": self.layout.to_dict(), "d_model": self.d,
            "n_patches": self.layout.n_patches, "dtype": "float16", "class_names": list(self.src.class_names),
            "preprocessing": self.key["preprocessing"], "shard_images": self.shard_images,
            "n_images": int(sum(s.n_images for s in shards)), "shards": shards, "n_skipped": len(skipped),
            "has_prefix": bool(shards) and all(s.prefix_file for s in shards), "visae_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        if self.cfg.tokens_per_image is not None:
            fields.update(schema_version=SUBSAMPLED_SCHEMA_VERSION,
                          tokens_per_image=self.cfg.tokens_per_image,
                          position_seed=self.cfg.position_seed)
        manifest = CacheManifest(**fields)
        return {"manifest": manifest.model_dump(mode="json"), "stats": self.stats.to_json()}

    def _finish(self) -> None:
        """Record the final content in the journal, then write the final files (the manifest last)."""
        self.journal["final"] = self.final_content()
        self._write_journal()
        write_final_files(self.folder, final_files(self.entries, self.journal["final"]))
        skipped = self.journal["final"]["manifest"]["n_skipped"]
        if skipped and self.cfg.progress:
            log.warning("skipped %d unreadable image(s); see %s", skipped, self.folder / "skipped.json")
