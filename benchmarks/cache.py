"""Caching throughput against the backbone's bare forward pass (the limit), and the fp16 storage error.

Ours: ``visae.build_cache`` end to end (decoding in worker processes, the backbone's transform, forward,
fp16 conversion, streaming stats, shard writing with sha256), images/s.
Peer / limit: the same backbone's forward pass alone on the same images, already preprocessed into one
tensor, at the same batch size, images/s (measured before and after the caching run; the mean is used).
Goal: caching ≥ 0.9 × bare forward.

Also printed: the relative RMS error of the stored fp16 activations against the fp32 forward pass, and
the same error as a fraction of the centred variance (what an SAE's FVU is measured against).

    .venv/bin/python benchmarks/cache.py --images 256 --source offline:digits --layer 6
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_forward(bb, pixels_nchw: torch.Tensor, layer: int, batch_size: int) -> float:
    """Images/s of the forward pass alone (inputs already on the device)."""
    pixels = pixels_nchw.to(bb.device)
    _sync(bb.device)
    t0 = time.perf_counter()
    for s in range(0, len(pixels), batch_size):
        bb.block_outputs(pixels[s:s + batch_size], [layer])
    _sync(bb.device)
    return len(pixels) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="dinov2-s14-offline")
    ap.add_argument("--source", default="offline:digits")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--layer", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--num-workers", type=int, default=None)
    ap.add_argument("--shard-images", type=int, default=256)
    args = ap.parse_args()

    from visae.backbones.registry import load_backbone
    from visae.cache.reader import open_cache
    from visae.cache.writer import build_cache
    from visae.datasets.registry import open_source

    bb = load_backbone(args.backbone, device=args.device)
    src = open_source(args.source, "train", max_images=args.images)
    n = len(src)
    print(f"backbone {bb.name} on {bb.device}; {n} images of {src.spec}; layer {args.layer}; "
          f"batch {args.batch_size}; torch threads {torch.get_num_threads()}")
    pixels = torch.stack([bb.transform(src.load(i)) for i in range(n)])
    bare_forward(bb, pixels[: args.batch_size], args.layer, args.batch_size)  # warm-up

    bare_before = bare_forward(bb, pixels, args.layer, args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = build_cache(bb, src, args.layer, Path(tmp), batch_size=args.batch_size, progress=False,
                           num_workers=args.num_workers, shard_images=args.shard_images)
        _sync(bb.device)
        ours = n / (time.perf_counter() - t0)
        bare_after = bare_forward(bb, pixels, args.layer, args.batch_size)
        bare = (bare_before + bare_after) / 2

        cache = open_cache(path)
        stored = np.concatenate([a.numpy() for _, a in cache.iter_images(group_size=64)]).astype(np.float64)
        fp32 = []
        with torch.inference_mode():
            for s in range(0, n, args.batch_size):
                fp32.append(bb.patch_tokens(pixels[s:s + args.batch_size].to(bb.device), args.layer)
                            .float().cpu().numpy())
        ref = np.concatenate(fp32).astype(np.float64)
    err2 = ((stored - ref) ** 2).sum()
    rel_rms = np.sqrt(err2 / (ref**2).sum())
    ref_flat = ref.reshape(-1, ref.shape[-1])
    fvu_storage = err2 / ((ref_flat - ref_flat.mean(0)) ** 2).sum()

    print(f"bare forward (limit): {bare:8.1f} images/s (before {bare_before:.1f}, after {bare_after:.1f})")
    print(f"visae build_cache   : {ours:8.1f} images/s")
    print(f"ratio ours / limit  : {ours / bare:8.3f}  (goal >= 0.9)")
    print(f"fp16 storage error  : relative RMS {rel_rms:.2e}; as FVU {fvu_storage:.2e} "
          "(an SAE's FVU is ~1e-1, so storage adds nothing measurable)")


if __name__ == "__main__":
    main()
