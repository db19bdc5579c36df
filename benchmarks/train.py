"""SAE training speed: our BatchTopK step vs overcomplete's BatchTopKSAE vs the machine's GEMM roofline.

Setting (DESIGN.md): d_in 768, 8× expansion, K = 64, batch 8192 tokens, fp32, Adam, CPU. The roofline
counts the step's unavoidable work per token: encoder matmul (2·D·F), its weight gradient (2·D·F), a
sparse decode of K columns (2·K·D) and its two gradients (4·K·D), at the fp32 GEMM rate measured here.
Also prints the bf16 figure, and a 12-configuration grid trained on one pass vs 12 separate passes.

    python benchmarks/train.py [--steps 3] [--d 768] [--batch 8192]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

DEVICE = torch.device("cpu")


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, steps: int) -> float:
    fn()  # warm-up
    _sync()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def gemm_rate(b: int, d: int, f: int, steps: int, dtype: torch.dtype = torch.float32) -> float:
    """Measured FLOP/s of the encoder-shaped GEMM."""
    x, w, bias = (torch.randn(b, d, device=DEVICE, dtype=dtype),
                  torch.randn(d, f, device=DEVICE, dtype=dtype),
                  torch.zeros(f, device=DEVICE, dtype=dtype))
    return 2 * b * d * f / _time(lambda: torch.addmm(bias, x, w), steps)


def ours_step(d: int, f: int, k: int, b: int, dtype: str = "fp32"):
    from _disk import batchtopk_step

    return batchtopk_step(d, f, k, b, DEVICE, dtype)


def overcomplete_step(d: int, f: int, k: int, b: int):
    import matplotlib
    import matplotlib.cm

    if not hasattr(matplotlib.cm, "get_cmap"):
        matplotlib.cm.get_cmap = matplotlib.colormaps.get_cmap  # removed in recent matplotlib
    from overcomplete.sae import BatchTopKSAE

    torch.manual_seed(0)
    model = BatchTopKSAE(d, f, top_k=k * b, device=str(DEVICE))  # overcomplete's top_k counts the whole batch
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(b, d, device=DEVICE)

    def step() -> None:
        _, _, recon = model(x)
        loss = (recon - x).pow(2).sum(1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def grid_from_disk(d: int, batch: int, steps: int, device: str, threads_note: str) -> None:
    """12 configurations (3 widths × 4 K) trained by one ``train_saes`` pass vs 12 passes, each pass reading
    a real on-disk cache from cold (pages dropped first), as 12 separate ``visae train`` runs would."""
    import tempfile
    from pathlib import Path

    from _disk import drop_pages, write_disk_cache
    from visae.cache.reader import open_cache
    from visae.sae.train import SAESpec, TrainConfig, train_saes

    specs = [SAESpec(family="batchtopk", expansion=e, k=k) for e in (8, 16, 32) for k in (8, 16, 24, 32)]
    cfg = TrainConfig(batch_size=batch, steps=steps, heldout_batches=1, progress=False, device=device,
                      checkpoint_every=10**9)
    with tempfile.TemporaryDirectory(prefix="visae-grid-") as tmp:
        n_images = -(-(steps + 1) * batch // 196)
        cache = write_disk_cache(Path(tmp) / "cache", n_images, 14, d)
        size = sum(f.stat().st_size for f in cache.glob("shard_*.npy"))

        cpu: dict[str, float] = {}

        def run(group: list[SAESpec], out: str) -> float:
            drop_pages(cache)
            t, c = time.perf_counter(), time.process_time()
            train_saes(cache, group, Path(tmp) / out, cfg)
            cpu[out] = time.process_time() - c
            return time.perf_counter() - t

        def read_pass() -> float:  # what one pass costs without any SAE: cold read, shuffle, fp32, normalize
            drop_pages(cache)
            t = time.perf_counter()
            for i, _ in enumerate(open_cache(cache).token_sampler(batch, seed=42)):
                if i + 1 >= steps + 1:
                    break
            return time.perf_counter() - t

        r = read_pass()
        one = run(specs, "one")
        sep = sum(run([s], f"sep{i}") for i, s in enumerate(specs))
        r = min(r, read_pass())
    c = max(one - r, 1e-9)
    print(f"grid of 12 from a cold on-disk cache ({n_images} images × 196 × d {d}, {size / 2**20:.0f} MiB; "
          f"batch {batch}, {steps} steps, {device}; {threads_note}):")
    cpu_one, cpu_sep = cpu["one"], sum(v for k, v in cpu.items() if k != "one")
    print(f"  one pass for 12 SAEs:        {one:8.1f} s wall, {cpu_one:8.1f} s CPU (all threads)")
    print(f"  12 passes (one SAE each):    {sep:8.1f} s wall, {cpu_sep:8.1f} s CPU   "
          f"ratio {sep / one:.2f} x wall, {cpu_sep / cpu_one:.2f} x CPU  "
          "(goal ≥ 3 x; CPU time is the figure that a loaded machine disturbs least)")
    print(f"  one pass's reading alone R:  {r:8.1f} s   (cold read, shuffle, fp32, normalize); training C ≈ "
          f"{c:.1f} s")
    print(f"  model (12R + C) / (R + C):   {(12 * r + c) / (r + c):8.2f} x; the ratio reaches 3 x once R ≥ "
          "0.22 C, i.e. where reading the cache costs a fifth of training all 12 (GPU-speed training, or a "
          "slow disk)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--grid-d", type=int, default=128)
    ap.add_argument("--grid-batch", type=int, default=2048)
    ap.add_argument("--grid-steps", type=int, default=10)
    ap.add_argument("--skip-grid", action="store_true")
    ap.add_argument("--bf16-batch", type=int, default=1024,
                    help="batch of the bf16 measurement (CPUs without bf16 matrix units are very slow)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (benchmarks/gpu.sh)")
    ap.add_argument("--grid-only", action="store_true", help="only the grid-from-disk comparison")
    ap.add_argument("--skip-peer", action="store_true", help="skip overcomplete (e.g. not installed)")
    a = ap.parse_args()
    global DEVICE
    DEVICE = torch.device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    d, f, k, b = a.d, a.d * a.expansion, a.k, a.batch
    print(f"conditions: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (other jobs share this machine), "
          f"device {DEVICE}" + (f" ({torch.cuda.get_device_name(DEVICE)})" if DEVICE.type == "cuda" else ""))
    if a.grid_only:
        grid_from_disk(a.grid_d, a.grid_batch, a.grid_steps, a.device,
                       f"load average {os.getloadavg()[0]:.1f}")
        return
    print(f"setting: d={d} F={f} K={k} batch={b} fp32 Adam; median of {a.steps} steps after a warm-up")
    # Interleave the measurements so that load changes hit all of them alike.
    rate = gemm_rate(b, d, f, a.steps)
    t_ours = _time(ours_step(d, f, k, b), a.steps)
    t_oc = float("nan") if a.skip_peer else _time(overcomplete_step(d, f, k, b), a.steps)
    rate = max(rate, gemm_rate(b, d, f, a.steps))
    t_bf16 = _time(ours_step(d, f, k, a.bf16_batch, "bf16"), 1)
    flops_per_token = 4 * d * f + 6 * k * d
    roof = rate / flops_per_token
    ours, oc = b / t_ours, b / t_oc
    print(f"fp32 GEMM rate (measured):        {rate / 1e9:8.1f} GFLOP/s")
    print(f"roofline (4DF + 6KD per token):   {roof:10.0f} tokens/s")
    print(f"ours  BatchTopK fp32:             {ours:10.0f} tokens/s  ({t_ours:.2f} s/step)")
    print(f"overcomplete BatchTopKSAE fp32:   {oc:10.0f} tokens/s  ({t_oc:.2f} s/step)")
    print(f"ours / overcomplete:              {ours / oc:10.2f} x")
    print(f"ours / roofline:                  {100 * ours / roof:10.1f} %")
    print(f"ours  BatchTopK bf16 matmul:      {a.bf16_batch / t_bf16:10.0f} tokens/s  "
          f"({t_bf16:.2f} s/step at batch {a.bf16_batch})")
    if not a.skip_grid:
        grid_from_disk(a.grid_d, a.grid_batch, a.grid_steps, a.device,
                       f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
