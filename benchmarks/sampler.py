"""Token sampler throughput from a cold on-disk cache vs the tokens/s one training step consumes.

Writes a cache (default 1024 images × 196 patches × D 768, fp16: 308 MB) or uses --cache, drops its
pages from the page cache (posix_fadvise DONTNEED), and streams one epoch of 8192-token batches through
visae's sampler (sequential preadv chunks, shuffle buffer, reader thread) and through the reference path
(memory-mapped slices), each from cold. In the same run: the disk's cold sequential read rate (the
limit) and the tokens/s of one BatchTopK training step at d 768, 8×, K 64, batch 8192 (the consumer).
Goal: the sampler delivers ≥ 3× what the step consumes.

    python benchmarks/sampler.py [--images 1024] [--grid 14] [--d 768] [--tokens-per-image T] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from _disk import batchtopk_step, cold_read_rate, drop_pages, machine_line, write_disk_cache
from visae.cache.reader import open_cache


def sampler_rate(cache_dir: Path, batch: int, prefetch: bool, max_batches: int | None) -> tuple[float, int]:
    """Tokens/s of one cold epoch (or ``max_batches`` batches) of the sampler, normalized float32 batches."""
    drop_pages(cache_dir)
    c = open_cache(cache_dir)
    n = 0
    t = time.perf_counter()
    for i, x in enumerate(c.token_sampler(batch, seed=0, prefetch=prefetch)):
        n += x.shape[0]
        if max_batches is not None and i + 1 >= max_batches:
            break
    return n / (time.perf_counter() - t), n


def step_rate(d: int, expansion: int, k: int, batch: int, device: str, dtype: str, steps: int) -> float:
    """Tokens/s of visae's BatchTopK training step (Adam, unit-norm decoder) on ``device``."""
    step = batchtopk_step(d, d * expansion, k, batch, torch.device(device), dtype, sync=True)
    step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=None, help="an existing cache (default: write one)")
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--grid", type=int, default=14, help="patch grid side (14: 196 patches)")
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--tokens-per-image", type=int, default=None,
                    help="write a training cache keeping T tokens")
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2, help="timed training steps (median, after a warm-up)")
    ap.add_argument("--step-batch", type=int, default=None, help="batch of the timed step (default --batch)")
    ap.add_argument("--max-batches", type=int, default=None, help="stop each sampler pass after this many")
    ap.add_argument("--device", default="cpu", help="device of the training step (cpu, cuda)")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    a = ap.parse_args()
    print(f"conditions: {machine_line()}")
    with tempfile.TemporaryDirectory(prefix="visae-sampler-") as tmp:
        cache_dir = a.cache or write_disk_cache(Path(tmp) / "cache", a.images, a.grid, a.d,
                                                a.tokens_per_image)
        c = open_cache(cache_dir)
        size = sum((cache_dir / s.file).stat().st_size for s in c.manifest.shards)
        print(f"cache: {c.n_images} images × {c.tokens_per_image} tokens × D {c.d_model} fp16, "
              f"{size / 2**20:.0f} MiB on disk; pages dropped before each pass")
        disk = cold_read_rate(cache_dir)
        fast, n = sampler_rate(cache_dir, a.batch, True, a.max_batches)
        ref, _ = sampler_rate(cache_dir, a.batch, False, a.max_batches)
        fast = max(fast, sampler_rate(cache_dir, a.batch, True, a.max_batches)[0])
        bytes_tok = 2 * c.d_model
        consume = step_rate(c.d_model, a.expansion, a.k, a.step_batch or a.batch, a.device, a.dtype, a.steps)
    print(f"disk, cold sequential read (limit): {disk / bytes_tok:12.0f} tokens/s  "
          f"({disk / 2**20:7.0f} MiB/s)")
    print(f"visae sampler, cold ({n} tokens):  {fast:12.0f} tokens/s  ({fast * bytes_tok / 2**20:7.0f} "
          f"MiB/s, {100 * fast * bytes_tok / disk:.0f} % of the disk)")
    print(f"reference path (mmap), cold:        {ref:12.0f} tokens/s  (sampler / reference "
          f"{fast / ref:.2f} x)")
    print(f"training step d {c.d_model} {a.expansion}x K {a.k} {a.dtype} on {a.device}: "
          f"{consume:9.0f} tokens/s")
    print(f"sampler / training step:            {fast / consume:12.1f} x  (goal ≥ 3 x)")


if __name__ == "__main__":
    main()
