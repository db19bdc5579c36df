"""The two probe engines side by side: scikit-learn lbfgs vs the torch engine, at 10, 100 and 1000 classes.

Overlapping Gaussian classes sized like ImageNet validation (``--per-class`` 50 images per class), split
80/20 stratified (seed 42); one multinomial probe per engine with the paper's settings (C = 1, lbfgs,
``--max-iter``), the same objective. Prints seconds, solver iterations, seconds per iteration, held-out
accuracy and macro one-vs-rest AUC of each engine, and the speed ratio, from one run.

    .venv/bin/python benchmarks/probes.py [--classes 10,100,1000] [--dim 256] [--max-iter 500] [--device cpu]

At 1000 classes a CPU needs minutes per engine (50k × 256 inputs, 1000 outputs); cap ``--max-iter`` there
and compare seconds per iteration, or run it on a GPU (``--device cuda``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def gaussian_classes(n_classes: int, per_class: int, dim: int, sep: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` draws of N(μ_c, I) per class, μ_c ~ N(0, sep²·I): classes overlap for small ``sep``."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=sep, size=(n_classes, dim)).astype(np.float32)
    y = np.repeat(np.arange(n_classes), per_class)
    x = means[y] + rng.standard_normal((len(y), dim), dtype=np.float32)
    return x, y


def run_engine(engine: str, x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray,
               max_iter: int, device: str) -> dict[str, float]:
    """Fit one probe with ``engine``; its time, iterations, accuracy and macro OvR AUC."""
    from visae.metrics.probes import ProbeConfig, fit_probe, ovr_auc

    cfg = ProbeConfig(engine=engine, max_iter=max_iter, device=device)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    probe = fit_probe(x_tr, y_tr, cfg)
    seconds = time.perf_counter() - t0
    proba = probe.predict_proba(x_te)
    return {"seconds": seconds, "iters": probe.n_iter, "converged": probe.converged,
            "acc": probe.accuracy(x_te, y_te), "auc": float(np.nanmean(ovr_auc(y_te, proba, probe.classes)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", default="10,100,1000", help="comma-separated class counts")
    parser.add_argument("--per-class", type=int, default=50, help="images per class (ImageNet val: 50)")
    parser.add_argument("--dim", type=int, default=256, help="feature dimension")
    parser.add_argument("--sep", type=float, default=0.25, help="sd of the class means (overlap: small)")
    parser.add_argument("--max-iter", type=int, default=500,
                        help="solver iteration cap (paper M4/M6/M7: 500)")
    parser.add_argument("--engines", default="sklearn,torch")
    parser.add_argument("--device", default="cpu", help="torch engine device")
    args = parser.parse_args()

    import torch

    from visae.metrics.probes import stratified_split

    print(f"dim {args.dim}, {args.per_class} per class, sep {args.sep}, max_iter {args.max_iter}, torch "
          f"device {args.device}, {torch.get_num_threads()} CPU threads")
    wx, wy = gaussian_classes(3, 20, 8, 1.0, seed=0)
    for engine in args.engines.split(","):  # first calls pay imports and thread start-up: not timed
        run_engine(engine, wx, wy, wx, wy, 20, args.device)
    print(f"{'classes':>7} {'engine':>8} {'seconds':>9} {'iters':>6} {'s/iter':>8} {'conv':>5} {'acc':>7} "
          f"{'AUC':>7}")
    for n_classes in (int(c) for c in args.classes.split(",")):
        x, y = gaussian_classes(n_classes, args.per_class, args.dim, args.sep, seed=n_classes)
        tr, te = stratified_split(y)
        out = {}
        for engine in args.engines.split(","):
            r = out[engine] = run_engine(engine, x[tr], y[tr], x[te], y[te], args.max_iter, args.device)
            print(f"{n_classes:7d} {engine:>8} {r['seconds']:9.2f} {r['iters']:6d} "
                  f"{r['seconds'] / max(1, r['iters']):8.4f} {r['converged']!s:>5} {r['acc']:7.4f} "
                  f"{r['auc']:7.4f}")
        if {"sklearn", "torch"} <= set(out):
            a, b = out["sklearn"], out["torch"]
            print(f"{'':7} torch vs sklearn: {a['seconds'] / b['seconds']:.2f}× faster "
                  f"({a['seconds'] / max(1, a['iters']) / (b['seconds'] / max(1, b['iters'])):.2f}× per "
                  f"iteration); Δacc {100 * (b['acc'] - a['acc']):+.2f} points, ΔAUC "
                  f"{b['auc'] - a['auc']:+.4f}")


if __name__ == "__main__":
    main()
