"""Moran's I throughput: visae's separable box-sum kernel vs esda map by map vs the dense P × P weight-matrix
form.

Prints maps/s for each from one run on the same random maps, checks they agree, and the ratios
(goals: ≥ 100× esda, ≥ 3× the dense form).

    .venv/bin/python benchmarks/m1.py [--grid 16 16] [--maps 20000] [--esda-maps 300] [--device cpu]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from visae.device import pick_device
from visae.metrics.m1_spatial import morans_i, queen_weight_sum


def dense_weights(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Binary queen P × P matrix (what the paper authors' package builds)."""
    wm = torch.zeros(h * w, h * w, dtype=dtype)
    for r in range(h):
        for c in range(w):
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    if (dr or dc) and 0 <= r + dr < h and 0 <= c + dc < w:
                        wm[r * w + c, (r + dr) * w + c + dc] = 1.0
    return wm.to(device)


def morans_i_dense(maps_nhw: torch.Tensor, wm: torch.Tensor) -> torch.Tensor:
    """Batched dense form: I = P/ΣW · Σ((Z W) ∘ Z) / Σ Z², Z the centred maps [n, P]."""
    z = maps_nhw.flatten(1)
    z = z - z.mean(dim=1, keepdim=True)
    num = ((z @ wm) * z).sum(dim=1)
    den = (z * z).sum(dim=1)
    return z.shape[1] / wm.sum() * num / den


def timed(fn, repeats: int, sync: bool) -> float:
    """Best wall time of ``repeats`` calls (after one warm-up); the best is the least disturbed by load."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, nargs=2, default=(16, 16), help="H W (DINOv2 at 224 px: 16 16)")
    parser.add_argument("--maps", type=int, default=20000, help="maps per batched call")
    parser.add_argument("--esda-maps", type=int, default=300, help="maps scored one by one with esda")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: stable on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    h, w = args.grid
    device = pick_device(args.device)
    sync = device.type == "cuda"
    gen = torch.Generator().manual_seed(0)
    maps = torch.relu(torch.randn(args.maps, h, w, generator=gen) - 0.5)  # sparse-code-like, many zeros
    maps_dev = maps.to(device)
    wm = dense_weights(h, w, device, torch.float32)
    assert float(wm.sum()) == queen_weight_sum(h, w)

    t_ours = timed(lambda: morans_i(maps_dev), args.repeats, sync)
    t_dense = timed(lambda: morans_i_dense(maps_dev, wm), args.repeats, sync)

    import esda
    from libpysal.weights import lat2W

    weights = lat2W(h, w, rook=False)
    sub = maps[: args.esda_maps].double().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        ref = np.array([esda.Moran(m.ravel(), weights, transformation="B", permutations=0).I for m in sub])
        t_esda = time.perf_counter() - t0

    ours = morans_i(maps_dev).cpu().double().numpy()
    dense = morans_i_dense(maps_dev, wm).cpu().double().numpy()
    err_esda = float(np.nanmax(np.abs(ours[: len(ref)] - ref)))
    err_dense = float(np.nanmax(np.abs(ours - dense)))

    rate_ours = args.maps / t_ours
    rate_dense = args.maps / t_dense
    rate_esda = len(sub) / t_esda
    print(f"device {device}; grid {h}×{w} (P = {h * w}); {args.maps} maps per batched call; "
          f"torch threads {torch.get_num_threads()}")
    print(f"visae morans_i (separable box): {rate_ours:12,.0f} maps/s")
    print(f"dense P×P form ((Z@W)*Z):        {rate_dense:12,.0f} maps/s")
    print(f"esda.Moran map by map:           {rate_esda:12,.0f} maps/s  ({len(sub)} maps)")
    print(f"ratio vs esda:  {rate_ours / rate_esda:10.1f}×  (goal ≥ 100×)")
    print(f"ratio vs dense: {rate_ours / rate_dense:10.2f}×  (goal ≥ 3×)")
    print(f"max |Δ| vs esda {err_esda:.2e}; vs dense {err_dense:.2e}")


if __name__ == "__main__":
    main()
