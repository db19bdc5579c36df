"""Synthetic cache generation (``visae synth``) beside the disk's write rate, measured in the same run.

Ours: ``visae.synth.generate`` end to end (draw each scene, its tokens and noise, fp16 shards with sha256,
streaming statistics; the one-off ground truth timed apart), tokens/s and MB/s written. Also the
generator alone (scenes and tokens in memory, no disk), tokens/s and MB/s of the fp16 bytes it would write.
Limit: the disk's sequential write rate in the same folder (fp16 ``.npy`` shards of the same size written
with ``np.save`` and fsync'ed), MB/s. The issue's goal: generation I/O-bound, i.e. the generator alone
produces bytes faster than the disk takes them.

    .venv/bin/python benchmarks/synth.py --preset paper --images 256
    .venv/bin/python benchmarks/synth.py --preset spatial --images 2000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def disk_write_rate(folder: Path, n_bytes: int, shard_bytes: int) -> float:
    """MB/s of writing ``n_bytes`` of float16 ``.npy`` shards of ``shard_bytes`` each, fsync'ed."""
    rng = np.random.default_rng(0)
    block = rng.standard_normal(shard_bytes // 2, dtype=np.float32).astype(np.float16)
    written = 0
    t0 = time.perf_counter()
    k = 0
    while written < n_bytes:
        path = folder / f"disk_{k:05d}.npy"
        with open(path, "wb") as f:
            np.save(f, block, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        written += block.nbytes
        k += 1
    rate = written / (time.perf_counter() - t0) / 1e6
    for p in folder.glob("disk_*.npy"):
        p.unlink()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--shard-images", type=int, default=128)
    ap.add_argument("--dir", default=None, help="folder on the disk to measure (default: a temp folder)")
    args = ap.parse_args()

    import torch

    from visae.synth import generate, synth_config
    from visae.synth.model import SyntheticModel

    cfg = synth_config(args.preset, n_images=args.images, batch_size=args.batch_size,
                       shard_images=args.shard_images, progress=False)
    p, d = cfg.grid**2, cfg.d
    n_tokens = args.images * p
    n_bytes = n_tokens * d * 2
    print(f"preset {args.preset}: D {d}, P {p}, F* {cfg.n_features}, {args.images} images "
          f"({n_tokens} tokens, {n_bytes / 1e6:.1f} MB fp16); torch threads {torch.get_num_threads()}; "
          f"load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        shard_bytes = args.shard_images * p * d * 2
        disk_before = disk_write_rate(root, max(n_bytes, 4 * shard_bytes), shard_bytes)
        model = SyntheticModel(cfg)
        model.batch_tokens(list(range(min(8, args.images))))  # warm-up
        t0 = time.perf_counter()
        for s in range(0, args.images, args.batch_size):
            model.batch_tokens(list(range(s, min(args.images, s + args.batch_size))))
        gen_s = time.perf_counter() - t0
        import importlib

        gen_module = importlib.import_module("visae.synth.generate")  # the module, not the function

        truth_s = [0.0]
        write_truth = gen_module.write_ground_truth

        def timed_truth(*a: object, **k: object) -> None:
            t = time.perf_counter()
            write_truth(*a, **k)  # type: ignore[arg-type]
            truth_s[0] += time.perf_counter() - t

        gen_module.write_ground_truth = timed_truth  # type: ignore[assignment]
        t0 = time.perf_counter()
        generate(cfg, root / "caches")
        e2e_s = time.perf_counter() - t0 - truth_s[0]
        disk_after = disk_write_rate(root, max(n_bytes, 4 * shard_bytes), shard_bytes)
    disk = (disk_before + disk_after) / 2
    gen_mb = n_bytes / gen_s / 1e6
    print(f"generator alone : {n_tokens / gen_s:12,.0f} tokens/s  {gen_mb:8.1f} MB/s  "
          f"({args.images / gen_s:.1f} img/s)")
    print(f"visae synth     : {n_tokens / e2e_s:12,.0f} tokens/s  {n_bytes / e2e_s / 1e6:8.1f} MB/s  "
          f"(the cache; its ground truth took another {truth_s[0]:.2f} s, once per cache)")
    print(f"disk write      : {'':>12}           {disk:8.1f} MB/s  (before {disk_before:.1f}, after "
          f"{disk_after:.1f}; fsync'ed fp16 .npy)")
    verdict = "I/O-bound" if gen_mb >= disk else "compute-bound"
    print(f"generator / disk = {gen_mb / disk:.2f}: {verdict}; end to end / disk = "
          f"{n_bytes / e2e_s / 1e6 / disk:.2f}")


if __name__ == "__main__":
    main()
