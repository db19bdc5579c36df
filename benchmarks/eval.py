"""M1 + M2 wall time and peak memory: ``visae.evaluate`` vs the paper authors' package (visaebench 0.1.0).

Builds (or reuses) a cache of the offline DINOv2-S/14, layer 11, over ``offline:digits`` under
``.visae-bench/``, trains (or reuses) one 8× BatchTopK SAE on it, then runs each evaluator in its own
subprocess so that peak RSS (ru_maxrss) and tracemalloc peaks are per evaluator:

- ours: ``visae.evaluate(sae, cache, metrics=["m1", "m2"])`` — one streaming pass, codes shared;
- peer: ``visaebench`` ``FeatureLocalization`` (M1) and ``FVU`` (M2) called on the same activations and SAE
  with paper settings (``max_active_fraction=1``, no feature or image caps). Their API takes an in-memory
  tensor ``[N, P, D]`` (or ``torch.save`` shard files), not our memory-mapped ``.npy`` shards, so the cache is
  loaded into RAM for them; their FVU takes ``[N·P, D]``.

    .venv/bin/python benchmarks/eval.py [--images 512] [--train-steps 100] [--device cpu]

``pip install --no-deps visaebench==0.1.0`` first (its declared dependencies are not needed for M1/M2).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

BENCH_DIR = Path(".visae-bench")


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads (robust to a shared machine's load)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare(args: argparse.Namespace) -> tuple[Path, Path]:
    """The cache and SAE checkpoint folders, built once and reused."""
    import visae
    from visae.sae.train import SAESpec, TrainConfig

    cache_dir = visae.build_cache("dinov2-s14-offline", "offline:digits", layer=11,
                                  out_dir=BENCH_DIR / "caches",
                                  max_images=args.images, device=args.device, progress=False)
    name = f"batchtopk_8x_k{args.k}_s{args.train_steps}"
    sae_dir = BENCH_DIR / "saes" / Path(cache_dir).name / name
    if not (sae_dir / "config.yaml").is_file():
        visae.train_saes(cache_dir, SAESpec(family="batchtopk", expansion=8, k=args.k, name=name),
                         sae_dir.parent,
                         TrainConfig(steps=args.train_steps, batch_size=2048, heldout_batches=2,
                                     device=args.device, progress=False,
                                     checkpoint_every=10**6))
    return Path(cache_dir), sae_dir


def run_ours(cache_dir: Path, sae_dir: Path, device: str) -> dict[str, Any]:
    """visae.evaluate with M1 + M2 (paper Table 2 settings)."""
    import visae

    sae = visae.load_sae(sae_dir)
    cache = visae.open_cache(cache_dir)
    before = peak_rss_mb()
    tracemalloc.start()
    t0, c0 = time.perf_counter(), cpu_seconds()
    res = visae.evaluate(sae, cache, metrics=["m1", "m2"], device=device, group_size=64)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"seconds": seconds, "cpu_s": cpu, "rss_before_mb": before, "peak_rss_mb": peak_rss_mb(),
            "tracemalloc_peak_mb": traced / 2**20, "m1": res["m1"].value, "m1_n_eval": res["m1"].n_eval,
            "fvu": res["m2"].value, "l0": res["m2"].mean_l0, "dead": res["m2"].dead}


def run_peer(cache_dir: Path, sae_dir: Path, device: str) -> dict[str, Any]:
    """visaebench 0.1.0 FeatureLocalization + FVU on the same activations and SAE."""
    import torch
    from visaebench.metrics.reconstruction.fvu import FVU
    from visaebench.metrics.spatial_coherence.localization import FeatureLocalization

    import visae

    sae = visae.load_sae(sae_dir).to(device).eval()
    cache = visae.open_cache(cache_dir)
    mean = sae.act_mean.clone()  # the same normalization visae.evaluate applies
    std = float(sae.act_std)
    before = peak_rss_mb()
    tracemalloc.start()
    t0, c0 = time.perf_counter(), cpu_seconds()
    acts = torch.cat([a for _, a in cache.iter_images(group_size=256)])  # their API needs it in memory
    layout = cache.layout
    m1 = FeatureLocalization(grid_size=(layout.grid_h, layout.grid_w), min_active_patches=5,
                             max_active_fraction=1.0, min_images_per_feature=50, max_features=10**9,
                             max_images_per_feature=10**9, batch_size=512, image_batch_size=64)
    with torch.no_grad():
        r1 = m1.compute(sae, acts, device=str(device), mean=mean.to(device), std=std)
        r2 = FVU(batch_size=512).compute(sae, acts.reshape(-1, acts.shape[-1]), device=str(device), mean=mean,
                                         std=std, dict_size=sae.d_sae)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"seconds": seconds, "cpu_s": cpu, "rss_before_mb": before, "peak_rss_mb": peak_rss_mb(),
            "tracemalloc_peak_mb": traced / 2**20, "m1": r1.value,
            "m1_n_eval": r1.metadata["num_evaluable_features"],
            "fvu": r2.value, "l0": r2.metadata["l0"], "dead": r2.metadata.get("dead_features")}


# --- M3 / M4 / M6 / M7 (probe metrics)
# ---------------------------------------------------------------------------
PROBE_GROUPS = ([0, 6, 8, 9], [1, 4, 7], [2, 3, 5])
"""Timing-only sibling groups over the first ten classes (offline:digits has no real hierarchy)."""


def probe_hierarchy(cache_dir: Path) -> Path:
    """A hierarchy JSON over the cache's class names (PROBE_GROUPS), for M7 on both sides."""
    import visae
    from visae.io import atomic_write_json

    names = visae.open_cache(cache_dir).class_names
    path = BENCH_DIR / "digits_bench_hierarchy.json"
    atomic_write_json(path, {"name": "digits-bench", "groups": {
        f"g{i}": [names[j] for j in g if j < len(names)] for i, g in enumerate(PROBE_GROUPS)}})
    return path


PAPER_KS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]


def run_ours_probes(cache_dir: Path, sae_dir: Path, device: str) -> dict[str, Any]:
    """visae.evaluate with M3 + M4 + M6 + M7 (paper Table 2 settings, sklearn engine).

    M6 treats the same cache as its out-of-domain set (split 80/20 inside), as the peer's run does.
    """
    import visae

    sae = visae.load_sae(sae_dir)
    cache = visae.open_cache(cache_dir)
    configs = {"m7": {"hierarchy": str(probe_hierarchy(cache_dir))},
               "m6": {"datasets": [{"name": "digits", "train_cache": str(cache_dir)}]}}
    # visaebench's metric modules import scikit-learn when they are imported, before its clock starts;
    # visae imports it on first use: load it here so that neither clock counts the import (1–4 s)
    import importlib

    for module in ("sklearn.feature_selection", "sklearn.linear_model", "sklearn.model_selection"):
        importlib.import_module(module)

    before = peak_rss_mb()
    tracemalloc.start()
    t0, c0 = time.perf_counter(), cpu_seconds()
    res = visae.evaluate(sae, cache, metrics=["m3", "m4", "m6", "m7"], configs=configs, device=device,
                         group_size=64)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"seconds": seconds, "cpu_s": cpu, "rss_before_mb": before, "peak_rss_mb": peak_rss_mb(),
            "tracemalloc_peak_mb": traced / 2**20, "m3": res["m3"].value, "m4": res["m4"].value,
            "m6": res["m6"].value, "m7": res["m7"].value}


def run_peer_probes(cache_dir: Path, sae_dir: Path, device: str) -> dict[str, Any]:
    """visaebench 0.1.0 DownstreamPreservation + SparseProbing (the paper's 11 budgets) +
    CrossDomainGeneralization
    (the same cache as its out-of-domain set) + FeatureAbsorption on the same data."""
    import torch
    from visaebench.metrics.concept_detection.cross_domain import CrossDomainGeneralization
    from visaebench.metrics.concept_detection.sparse_probing import SparseProbing
    from visaebench.metrics.disentanglement.absorption import FeatureAbsorption
    from visaebench.metrics.reconstruction.downstream import DownstreamPreservation

    import visae

    sae = visae.load_sae(sae_dir).to(device).eval()
    cache = visae.open_cache(cache_dir)
    groups = {f"g{i}": {"class_indices": [j for j in g if j < len(cache.class_names)], "hierarchy_depth": 1}
              for i, g in enumerate(PROBE_GROUPS)}
    mean, std, labels = sae.act_mean.clone(), float(sae.act_std), cache.labels
    before = peak_rss_mb()
    tracemalloc.start()
    t0, c0 = time.perf_counter(), cpu_seconds()
    acts = torch.cat([a for _, a in cache.iter_images(group_size=256)])  # their API needs it in memory
    with torch.no_grad():
        kw = {"device": str(device), "labels": labels, "mean": mean, "std": std, "seed": 42}
        r3 = DownstreamPreservation(max_iter=1000).compute(sae, acts, **kw)
        r4 = SparseProbing(k_values=PAPER_KS).compute(sae, acts, **kw)
        r6 = CrossDomainGeneralization(k_probe=128).compute(
            sae, acts, ood_datasets={"digits": {"activations": acts, "labels": labels}},
            **{k: v for k, v in kw.items() if k != "labels"})
        r7 = FeatureAbsorption().compute(sae, acts, sibling_groups=groups, **kw)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"seconds": seconds, "cpu_s": cpu, "rss_before_mb": before, "peak_rss_mb": peak_rss_mb(),
            "tracemalloc_peak_mb": traced / 2**20, "m3": r3.value, "m4": r4.value, "m6": r6.value,
            "m7": r7.value}


def thread_env(threads: int | None) -> dict[str, str] | None:
    """The environment of a child run with every BLAS/OpenMP pool (torch's too) at ``threads``; None: as
    inherited."""
    if threads is None:
        return None
    import os

    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    return {**os.environ, **{name: str(threads) for name in names}}


def report_probes(cache_dir: Path, sae_dir: Path, device: str, threads: int | None = None) -> None:
    """Run both probe evaluators in subprocesses and print seconds, memory and values side by side;
    ``threads`` fixes both sides' thread pools (the peer without visae's per-probe thread choice)."""
    out: dict[str, dict[str, Any]] = {}
    if threads is not None:
        print(f"both sides with OMP/OpenBLAS/MKL threads = {threads}")
    for who in ("ours-probes", "peer-probes"):
        proc = subprocess.run([sys.executable, __file__, "--run", who, "--cache-dir", str(cache_dir),
                               "--sae-dir", str(sae_dir), "--device", device],
                              capture_output=True, text=True, check=False, env=thread_env(threads))
        if proc.returncode != 0:
            print(f"{who}: failed\n{proc.stderr[-3000:]}")
            continue
        out[who] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{'':12} {'M3+M4+M6+M7 s':>14} {'peak RSS MB':>12} {'(+ over start)':>15} {'tracemalloc MB':>15} "
          f"{'M3':>7} {'M4':>7} {'M6':>7} {'M7':>7}")
    for who, r in out.items():
        print(f"{who:12} {r['seconds']:14.2f} {r['peak_rss_mb']:12.0f} "
              f"{r['peak_rss_mb'] - r['rss_before_mb']:15.0f} {r['tracemalloc_peak_mb']:15.1f} "
              f"{r['m3']!s:>7.7} {r['m4']!s:>7.7} {r['m6']!s:>7.7} {r['m7']!s:>7.7}")
    if len(out) == 2:
        print(f"speed-up ours vs peer (M3+M4+M6+M7): "
              f"{out['peer-probes']['seconds'] / out['ours-probes']['seconds']:.2f}× wall, "
              f"{out['peer-probes']['cpu_s'] / out['ours-probes']['cpu_s']:.2f}× CPU time "
              f"({out['ours-probes']['cpu_s']:.1f} vs {out['peer-probes']['cpu_s']:.1f} CPU s)")
        print("note: both sides probe the paper's 11 M4 budgets (1 … 1024). The peer's M4 value is an "
              "accuracy-curve area, its M6 a composite (FVU, coverage, overlap, one k=128 probe; ours: raw, "
              "recon, all-codes and top-128 probes) and its M7 an overlap/F1-gap rate, not the paper's F1(1) "
              "< α, F1(4) > β criterion, so only the timings are comparable.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512,
                        help="cache a stratified subset of this many images")
    parser.add_argument("--k", type=int, default=64, help="BatchTopK k")
    parser.add_argument("--train-steps", type=int, default=100, help="SAE training steps (batch 2048 tokens)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--run", choices=["ours", "peer", "ours-probes", "peer-probes"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--probes-only", action="store_true", help="only the M3/M4/M6/M7 comparison")
    parser.add_argument("--threads", type=int, default=None,
                        help="probe comparison: set both sides' BLAS/OpenMP threads (default: inherited)")
    parser.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sae-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.run:  # child process: one evaluator, report as JSON
        fn = {"ours": run_ours, "peer": run_peer, "ours-probes": run_ours_probes,
              "peer-probes": run_peer_probes}[args.run]
        print(json.dumps(fn(args.cache_dir, args.sae_dir, args.device)))
        return

    cache_dir, sae_dir = prepare(args)
    from visae.cache.reader import open_cache

    cache = open_cache(cache_dir)
    print(f"cache {cache_dir}: {cache.n_images} images × {cache.layout.n_patches} patches × {cache.d_model}; "
          f"SAE {sae_dir.name}; device {args.device}")
    if args.probes_only:
        report_probes(cache_dir, sae_dir, args.device, args.threads)
        return
    out: dict[str, dict[str, Any]] = {}
    for who in ("ours", "peer"):
        proc = subprocess.run([sys.executable, __file__, "--run", who, "--cache-dir", str(cache_dir),
                               "--sae-dir", str(sae_dir), "--device", args.device],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(f"{who}: failed\n{proc.stderr[-3000:]}")
            continue
        out[who] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{'':6} {'M1+M2 s':>9} {'peak RSS MB':>12} {'(+ over start)':>15} {'tracemalloc MB':>15} "
          f"{'M1':>8} {'N_eval':>7} {'FVU':>8} {'L0':>7} {'dead':>5}")
    for who, r in out.items():
        print(f"{who:6} {r['seconds']:9.2f} {r['peak_rss_mb']:12.0f} "
              f"{r['peak_rss_mb'] - r['rss_before_mb']:15.0f} {r['tracemalloc_peak_mb']:15.1f} "
              f"{r['m1']:8.4f} {r['m1_n_eval']:7d} {r['fvu']:8.4f} {r['l0']:7.1f} {r['dead']!s:>5}")
    if len(out) == 2:
        growth = {who: r["peak_rss_mb"] - r["rss_before_mb"] for who, r in out.items()}
        print(f"speed-up ours vs peer: {out['peer']['seconds'] / out['ours']['seconds']:.2f}×; "
              "peak RSS growth ratio: "
              f"{growth['peer'] / max(1.0, growth['ours']):.2f}×")
        print("note: visaebench's FVU uses one scalar mean over all dims and subtracts the mean residual "
              "(Var(x − x̂)/Var(x)); ours is eq. 4 with the per-dimension mean, so the two can differ.")
    report_probes(cache_dir, sae_dir, args.device, args.threads)


if __name__ == "__main__":
    main()
