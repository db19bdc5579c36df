"""A scale model: time and peak private memory of cache, train and eval at three sizes of N, F and C.

Each measurement runs in its own forked child (the parent never runs torch, so every child starts
alike); a thread samples the child's resident anonymous memory (``RssAnon``: private memory, not the
page cache of memory-mapped shards) every 2 ms. For each stage and factor the cost's growth is the slope
of log cost on log size (a fitted exponent). The projection multiplies the base point's cost by
``(size / base)^exponent`` for every factor and sums the paper's workload:

- cache: 5 backbones × (1.28M training + 50k validation images), ViT-B/16 at 224 px, layer 11;
- train: 5 backbones × 12 SAEs (F 6144, 12288, 24576 × 4 K), 1.28M training tokens each;
- eval: 5 × 12 SAEs × M1–M4 on 50k validation images × 196 patches, 1000 classes.

M5 (an embedding model over the images), M6 (three OOD caches), M7 (the WordNet hierarchy) and the tasks
need real data and are not in the model; their cost is of the order of M3/M4's probes on their sets.

    python benchmarks/scale.py [--device cpu] [--json out.json] [--gpu-figures gpu.json] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

PAPER = {"backbones": 5, "train_images": 1_280_000, "train_tokens": 1_280_000, "val_images": 50_000,
         "classes": 1000, "widths": (6144, 12288, 24576), "ks_per_width": 4, "patches": 196}


def _anon_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def _child(fn: Callable[..., Any], kwargs: dict[str, Any], conn: Any) -> None:
    start = _anon_bytes()
    peak = [start]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _anon_bytes())
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        go = fn(**kwargs)  # set-up (model, files) is not timed
        t = time.perf_counter()
        if go is not None:
            go()
        dt = time.perf_counter() - t
        stop.set()
        th.join()
        conn.send({"seconds": dt, "peak_private_mb": (max(peak[0], _anon_bytes()) - start) / 2**20})
    except BaseException as e:  # reported to the parent
        conn.send({"error": f"{type(e).__name__}: {e}"})


def measure(fn: Callable[..., Any], **kwargs: Any) -> dict[str, float]:
    """Run ``fn(**kwargs)`` in a forked child, then the callable it returns (timed); wall time of that call
    and
    the child's peak private memory over its start."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_child, args=(fn, kwargs, child))
    p.start()
    out = parent.recv()
    p.join()
    if "error" in out:
        raise RuntimeError(f"{fn.__name__}({kwargs}): {out['error']}")
    return dict(out)


# --- the three stages (run in children)
# ----------------------------------------------------------------------

def _backbone(device: str, tiny: bool) -> Any:
    from visae.cache.testing import TinyViTBackbone

    if tiny:
        return TinyViTBackbone(seed=0, device=device)
    return TinyViTBackbone(seed=0, device=device, img_size=224, patch_size=16, embed_dim=768, depth=12)


def stage_cache(n_images: int, out: str, device: str, tiny: bool) -> Callable[[], Any]:
    """``build_cache`` of a randomly initialised ViT-B/16 (the paper backbones' shape) at its last block."""
    from visae.cache.writer import build_cache

    bb = _backbone(device, tiny)
    return lambda: build_cache(bb, "offline:digits", bb.n_blocks - 1, Path(out) / f"c{n_images}",
                               max_images=n_images, batch_size=16, num_workers=0, progress=False,
                               shard_images=256)


def stage_prepare(folder: str, n_images: int, d: int, n_classes: int) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from _disk import write_disk_cache

    write_disk_cache(Path(folder), n_images, 14, d, n_classes=n_classes)


def stage_train(cache: str, tokens: int, d_sae: int, batch: int, device: str, out: str) -> Callable[[], Any]:
    """``train_saes`` of one BatchTopK SAE (K 64) over ``tokens`` tokens of an on-disk cache."""
    from visae.sae.train import SAESpec, TrainConfig, train_saes

    cfg = TrainConfig(batch_size=batch, steps=max(1, tokens // batch), heldout_batches=1, progress=False,
                      device=device, checkpoint_every=10**9)
    return lambda: train_saes(cache,
                              SAESpec(family="batchtopk", d_sae=d_sae, k=min(64, d_sae // 4)), out, cfg)


def stage_eval(cache: str, d_sae: int, device: str) -> Callable[[], Any]:
    """``visae.evaluate`` M1–M4 of a BatchTopK SAE (threshold calibrated to K 64) on a full cache."""
    import torch

    from visae.cache.reader import open_cache
    from visae.metrics.evaluate import evaluate
    from visae.sae.batchtopk import calibrate_threshold
    from visae.sae.registry import make_sae

    c = open_cache(cache)
    torch.manual_seed(0)
    sae = make_sae("batchtopk", c.d_model, d_sae=d_sae, k=min(64, d_sae // 4))
    sae.set_normalization(torch.from_numpy(c.mean_d), c.std)
    calibrate_threshold(sae, [next(c.token_sampler(min(2048, c.n_tokens), seed=0))])
    return lambda: evaluate(sae.eval(), c, metrics=["m1", "m2", "m3", "m4"], device=device)


# --- sizes, fits, projection
# ---------------------------------------------------------------------------------

def sizes(tiny: bool) -> dict[str, Any]:
    """Base point and the three sizes of each factor (the base is the middle or first size)."""
    if tiny:
        return {"d": 32, "cache_n": [2, 4, 8], "train_n": [256, 512, 1024], "train_f": [64, 128, 256],
                "train_base": (512, 128), "batch": 128, "eval_n": [10, 20, 40], "eval_f": [64, 128, 256],
                "eval_c": [2, 4, 8], "eval_base": (20, 128, 4)}
    return {"d": 768, "cache_n": [8, 16, 32], "train_n": [16384, 32768, 65536],
            "train_f": [768, 1536, 3072], "train_base": (32768, 1536), "batch": 1024,
            "eval_n": [128, 256, 512], "eval_f": [1536, 3072, 6144], "eval_c": [4, 8, 16],
            "eval_base": (256, 3072, 8)}


def exponent(xs: list[float], ys: list[float]) -> float:
    """Slope of log y on log x (how a cost grows with a size)."""
    ys = [max(y, 1e-9) for y in ys]
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def fixed_and_exponent(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """``y ≈ a + b·x^e`` through three sizes in geometric progression (ratio r): ``r^e = (y3 − y2)/(y2 − y1)``
    and ``a = y1 − (y2 − y1)/(r^e − 1)``, ``a`` clamped to [0, 0.9·min y]; then ``e`` is refitted as the
    slope of log(y − a) on log x. Where the costs do not grow (noise), ``a = 0`` and ``e`` is the plain
    slope."""
    a = 0.0
    if len(xs) == 3 and ys[2] > ys[1] > ys[0]:
        r = math.sqrt(xs[2] / xs[0])
        re = (ys[2] - ys[1]) / (ys[1] - ys[0])
        if re > 1.0 + 1e-9 and r > 1:
            a = ys[0] - (ys[1] - ys[0]) / (re - 1.0)
    a = min(max(a, 0.0), 0.9 * min(ys))
    return a, exponent(xs, [y - a for y in ys])


def _best(run: Callable[[int], dict[str, float]], repeats: int) -> tuple[float, float]:
    """The fastest of ``repeats`` runs (other jobs only ever slow one down) and the largest peak memory."""
    ms = [run(r) for r in range(repeats)]
    return min(m["seconds"] for m in ms), max(m["peak_private_mb"] for m in ms)


def run_all(device: str, tiny: bool, repeats: int = 1) -> dict[str, Any]:
    """Every measurement, each point the fastest of ``repeats``; returns {stage: {factor: [(size, seconds,
    peak MB), …]}, base points}."""
    s = sizes(tiny)
    res: dict[str, Any] = {"device": device, "tiny": tiny, "sizes": s, "cache": {}, "train": {}, "eval": {},
                           "repeats": repeats, "load_at_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="visae-scale-") as tmp:
        root = Path(tmp)
        res["cache"]["N"] = [(n, *_best(lambda r, n=n: measure(stage_cache, n_images=n,
                                                               out=str(root / f"cache{r}"), device=device,
                                                               tiny=tiny), repeats))
                             for n in s["cache_n"]]
        big = (max(s["train_n"]) + 2 * s["batch"]) // 196 + 2  # the held-out batch comes on top
        measure(stage_prepare, folder=str(root / "train"), n_images=big, d=s["d"], n_classes=4)
        n0, f0 = s["train_base"]
        tr = dict(cache=str(root / "train"), batch=s["batch"], device=device)
        done: dict[tuple[Any, ...], tuple[float, float]] = {}  # the base point is measured once

        def train(n: int, f: int) -> tuple[float, float]:
            if ("t", n, f) not in done:
                done["t", n, f] = _best(lambda r: measure(stage_train, tokens=n, d_sae=f,
                                                          out=str(root / f"t{n}-{f}-{r}"), **tr), repeats)
            return done["t", n, f]

        def ev(n: int, f: int, c: int) -> tuple[float, float]:
            if ("e", n, f, c) not in done:
                done["e", n, f, c] = _best(lambda r: _eval(root, n, f, c, s["d"], device), repeats)
            return done["e", n, f, c]

        res["train"]["N"] = [(n, *train(n, f0)) for n in s["train_n"]]
        res["train"]["F"] = [(f, *train(n0, f)) for f in s["train_f"]]
        en, ef, ec = s["eval_base"]
        res["eval"]["N"] = [(n, *ev(n, ef, ec)) for n in s["eval_n"]]
        res["eval"]["F"] = [(f, *ev(en, f, ec)) for f in s["eval_f"]]
        res["eval"]["C"] = [(c, *ev(en, ef, c)) for c in s["eval_c"]]
    return res


def _pair(m: dict[str, float]) -> tuple[float, float]:
    return m["seconds"], m["peak_private_mb"]


def _eval(root: Path, n: int, f: int, c: int, d: int, device: str) -> dict[str, float]:
    folder = root / f"e{n}-{c}"
    if not folder.exists():
        measure(stage_prepare, folder=str(folder), n_images=n, d=d, n_classes=c)
    return measure(stage_eval, cache=str(folder), d_sae=f, device=device)


def fits(res: dict[str, Any]) -> dict[str, dict[str, tuple[float, float, float]]]:
    """{stage: {factor: (fixed seconds, time exponent of the growing part, memory exponent)}}."""
    out: dict[str, dict[str, tuple[float, float, float]]] = {}
    for stage in ("cache", "train", "eval"):
        out[stage] = {}
        for factor, rows in res[stage].items():
            xs = [r[0] for r in rows]
            a, e = fixed_and_exponent(xs, [r[1] for r in rows])
            out[stage][factor] = (a, e, exponent(xs, [max(r[2], 1.0) for r in rows]))
    return out


def _at(res: dict[str, Any], stage: str, factor: str, size: float) -> float:
    return float(next(r[1] for r in res[stage][factor] if r[0] == size))


def _grow(f: dict[str, tuple[float, float, float]], t0: float, ratios: dict[str, float]) -> float:
    """Cost at ``size = base · ratio`` for each factor: the fixed part of the first factor plus the growing
    part of the base point times ``ratio^exponent`` for every factor."""
    a = f[next(iter(ratios))][0]
    return a + max(t0 - a, 0.0) * math.prod(r ** f[k][1] for k, r in ratios.items())


def project(res: dict[str, Any]) -> dict[str, float]:
    """Projected seconds of the paper's workload per stage (all backbones and SAEs)."""
    s, f = res["sizes"], fits(res)
    n_c = s["cache_n"][-1]
    cache = _grow(f["cache"], _at(res, "cache", "N", n_c),
                  {"N": (PAPER["train_images"] + PAPER["val_images"]) / n_c})
    n0, f0 = s["train_base"]
    t0 = _at(res, "train", "N", n0)
    train = sum(_grow(f["train"], t0, {"N": PAPER["train_tokens"] / n0, "F": w / f0})
                for w in PAPER["widths"]) * PAPER["ks_per_width"]
    en, ef, ec = s["eval_base"]
    e0 = _at(res, "eval", "N", en)
    ev = sum(_grow(f["eval"], e0, {"N": PAPER["val_images"] / en, "F": w / ef, "C": PAPER["classes"] / ec})
             for w in PAPER["widths"]) * PAPER["ks_per_width"]
    b = PAPER["backbones"]
    return {"cache": b * cache, "train": b * train, "eval": b * ev}


def _marginal(rows: list[Any]) -> tuple[float, float]:
    """Cost per unit of size between the two largest sizes (≥ 0; the fixed part cancels) and the size."""
    (x1, t1), (x2, t2) = sorted((r[0], r[1]) for r in rows)[-2:]
    return max((t2 - t1) / (x2 - x1), 0.0), x2


def project_linear(res: dict[str, Any]) -> dict[str, float]:
    """Projected seconds from an additive model with each cost linear in its drivers, fitted from marginal
    costs (the two largest sizes of each factor): caching ∝ images; training ∝ tokens × (p + q·F);
    evaluation ∝ images × (r + q_F·(F − F0) + q_C·(C − C0)). Unlike :func:`project` it does not raise a
    noisy exponent to a 10⁴-fold extrapolation."""
    s = res["sizes"]
    cache = _marginal(res["cache"]["N"])[0] * (PAPER["train_images"] + PAPER["val_images"])
    n0, f0 = s["train_base"]
    per_token = _marginal(res["train"]["N"])[0]
    q = min(_marginal(res["train"]["F"])[0] / n0, per_token / f0)  # s per token per feature
    train = PAPER["ks_per_width"] * sum(PAPER["train_tokens"] * (per_token + q * (w - f0))
                                        for w in PAPER["widths"])
    en, ef, ec = s["eval_base"]
    per_image = _marginal(res["eval"]["N"])[0]
    q_f = _marginal(res["eval"]["F"])[0] / en
    q_c = _marginal(res["eval"]["C"])[0] / en
    ev = PAPER["ks_per_width"] * sum(PAPER["val_images"]
                                     * (per_image + q_f * (w - ef) + q_c * (PAPER["classes"] - ec))
                                     for w in PAPER["widths"])
    b = PAPER["backbones"]
    return {"cache": b * cache, "train": b * train, "eval": b * ev}


def _hours(sec: float) -> str:
    return f"{sec / 3600:10.1f} h" if math.isfinite(sec) else "         —"


def report(res: dict[str, Any], gpu: dict[str, Any] | None) -> None:
    """Print the measurements, the fitted exponents and the projection table."""
    f = fits(res)
    for stage in ("cache", "train", "eval"):
        for factor, rows in res[stage].items():
            pts = ", ".join(f"{x:g}: {t:.2f} s / {m:.0f} MB" for x, t, m in rows)
            a, e, m = f[stage][factor]
            print(f"{stage:5s} vs {factor}: {pts}   time ≈ {a:.1f} s + c·{factor}^{e:.2f}, "
                  f"private memory ∝ {factor}^{m:.2f}")
    fit, lin = project(res), project_linear(res)
    g = project_linear(gpu) if gpu else None
    print(f"\nprojected cost of the paper's workload (5 backbones × 12 SAEs, 1.28M training tokens, 50k "
          f"validation images, 1000 classes; M1–M4), {res['device']}, {os.cpu_count()} CPUs, load "
          f"{res.get('load_at_start', float('nan')):.1f} at the start, {os.getloadavg()[0]:.1f} now:")
    print(f"{'stage':8s} {'power-law fits':>16s} {'linear, marginal costs':>24s} {'one GPU (linear)':>18s}")
    for k in (*lin, "total"):
        pick = (lambda d: sum(d.values())) if k == "total" else (lambda d: d[k])  # noqa: B023
        gpu_cell = _hours(pick(g)) if g else "not measured"
        print(f"{k:8s} {_hours(pick(fit)):>16s} {_hours(pick(lin)):>24s} {gpu_cell:>18s}")
    print("power-law: base cost × (size/base)^exponent per factor (one noisy exponent dominates a 10⁴-fold "
          "extrapolation); linear: each cost linear in its drivers at the marginal cost between the two "
          "largest sizes (see project_linear)")
    if gpu is None:
        print("GPU column: needs gpu.sh figures — run benchmarks/gpu.sh on a GPU machine (it writes "
              "gpu-figures/scale.json), then pass --gpu-figures gpu-figures/scale.json")
    if res["tiny"]:
        print("(--tiny sizes: a rehearsal of the script, not a projection to rely on)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (checks the script in seconds)")
    ap.add_argument("--json", type=Path,
                    help="also write the measurements here (gpu.sh: gpu-figures/scale.json)")
    ap.add_argument("--gpu-figures", type=Path, help="a --json file from a GPU run: fills the GPU column")
    ap.add_argument("--from-json", type=Path, help="report a saved run instead of measuring")
    ap.add_argument("--repeats", type=int, default=2,
                    help="runs per point, the fastest kept (a shared machine's bursts only slow runs down)")
    a = ap.parse_args()
    gpu = json.loads(a.gpu_figures.read_text()) if a.gpu_figures else None
    import importlib

    for mod in ("torch", "torch._dynamo", "visae.cache.writer", "visae.metrics.evaluate", "visae.sae.train"):
        # imported once here, not timed in every child (torch.optim's first use imports torch._dynamo:
        # seconds); no torch op runs here
        importlib.import_module(mod)
    if a.from_json:
        res = json.loads(a.from_json.read_text())
    else:
        print(f"conditions: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, device {a.device}")
        res = run_all(a.device, a.tiny, a.repeats)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=1))
    report(res, gpu)


if __name__ == "__main__":
    main()
