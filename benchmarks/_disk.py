"""Benchmark helpers: write a synthetic on-disk cache shard by shard, and drop a folder's pages (cold
reads)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from visae.backbones.layout import TokenLayout
from visae.cache.positions import SUBSAMPLED_SCHEMA_VERSION, sample_positions
from visae.cache.stats import StreamingStats
from visae.cache.store import write_final, write_shard


def write_disk_cache(folder: Path, n_images: int, grid: int, d: int, tokens_per_image: int | None = None,
                     shard_images: int = 256, n_classes: int = 10, seed: int = 0) -> Path:
    """A complete cache of Gaussian fp16 tokens (``grid``² patches, width ``d``), written one shard at a
    time."""
    layout = TokenLayout(("cls",), grid, grid, 16)
    p = layout.n_patches
    t = tokens_per_image or p
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    stats = StreamingStats(d)
    shards = []
    for k, s0 in enumerate(range(0, n_images, shard_images)):
        n = min(shard_images, n_images - s0)
        block = rng.standard_normal((n, t, d), dtype=np.float32).astype(np.float16)
        stats.update(block.reshape(-1, d))
        pos = None if tokens_per_image is None else sample_positions(range(s0, s0 + n), p, t, seed)
        shards.append(write_shard(folder, k, block, None, pos))
    fields = {"schema_version": 1, "hash": f"bench-{n_images}-{grid}-{d}-{tokens_per_image}",
              "backbone": "bench",
              "weights_id": "random", "layer": 0, "source": {"spec": "bench"}, "layout": layout.to_dict(),
              "d_model": d, "n_patches": p, "class_names": [f"c{i}" for i in range(n_classes)]}
    if tokens_per_image is not None:
        fields.update(schema_version=SUBSAMPLED_SCHEMA_VERSION, tokens_per_image=t, position_seed=seed)
    labels = np.arange(n_images) % n_classes
    write_final(folder, manifest_fields=fields, shards=shards, labels=labels,
                image_ids=[f"i{i}" for i in range(n_images)], stats=stats, skipped=[])
    return folder


def drop_pages(folder: Path) -> int:
    """Evict ``folder``'s files from the page cache (posix_fadvise DONTNEED); return the bytes covered."""
    total = 0
    for f in sorted(Path(folder).rglob("*")):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)  # only clean pages can be dropped
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            total += f.stat().st_size
    return total


def cold_read_rate(folder: Path, block: int = 8 << 20) -> float:
    """Bytes/s of a cold sequential read of every shard file (the disk's limit for the sampler)."""
    drop_pages(folder)
    buf = memoryview(bytearray(block))
    done = 0
    t = time.perf_counter()
    for f in sorted(Path(folder).glob("shard_*.npy")):
        fd = os.open(f, os.O_RDONLY)
        try:
            off = 0
            while (n := os.preadv(fd, [buf], off)) > 0:
                off += n
            done += off
        finally:
            os.close(fd)
    return done / (time.perf_counter() - t)


def machine_line() -> str:
    """CPU count and load, printed by every benchmark (other jobs share this machine)."""
    return (f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.1f}")


def batchtopk_step(d: int, d_sae: int, k: int, batch: int, device: torch.device, dtype: str = "fp32",
                   sync: bool = False):
    """visae's BatchTopK training step (Adam, unit-norm decoder) on one fixed batch, as a closure;
    ``sync`` waits for the GPU after each step (for per-step timing)."""
    from visae.sae.registry import make_sae

    torch.manual_seed(0)
    sae = make_sae("batchtopk", d, d_sae=d_sae, k=k).to(device)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    x = torch.randn(batch, d, device=device)
    cd = torch.bfloat16 if dtype == "bf16" else torch.float32

    def step() -> None:
        sae.training_step(x, cd)
        sae.remove_parallel_grad()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sae.after_step()
        if sync and device.type == "cuda":
            torch.cuda.synchronize()

    return step
