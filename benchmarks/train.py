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


def _time(fn, steps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def gemm_rate(b: int, d: int, f: int, steps: int) -> float:
    """Measured fp32 FLOP/s of the encoder-shaped GEMM."""
    x, w, bias = torch.randn(b, d), torch.randn(d, f), torch.zeros(f)
    return 2 * b * d * f / _time(lambda: torch.addmm(bias, x, w), steps)


def ours_step(d: int, f: int, k: int, b: int, dtype: str = "fp32"):
    from visae.sae.registry import make_sae

    torch.manual_seed(0)
    sae = make_sae("batchtopk", d, d_sae=f, k=k)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    x = torch.randn(b, d)
    cd = torch.bfloat16 if dtype == "bf16" else torch.float32

    def step() -> None:
        sae.training_step(x, cd)
        sae.remove_parallel_grad()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sae.after_step()

    return step


def overcomplete_step(d: int, f: int, k: int, b: int):
    import matplotlib
    import matplotlib.cm

    if not hasattr(matplotlib.cm, "get_cmap"):
        matplotlib.cm.get_cmap = matplotlib.colormaps.get_cmap  # removed in recent matplotlib
    from overcomplete.sae import BatchTopKSAE

    torch.manual_seed(0)
    model = BatchTopKSAE(d, f, top_k=k * b)  # overcomplete's top_k counts the whole batch
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(b, d)

    def step() -> None:
        _, _, recon = model(x)
        loss = (recon - x).pow(2).sum(1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def grid_one_pass_vs_separate(d: int, b: int, steps: int) -> tuple[float, float]:
    """12 configurations (3 widths × 4 K) on one pass vs 12 passes over the same in-memory stream."""
    from visae.sae.registry import make_sae
    from visae.sae.train import TrainConfig, train_on_batches

    cfg = TrainConfig(batch_size=b, progress=False)
    data = [torch.randn(b, d) for _ in range(steps)]
    configs = [(e, k) for e in (8, 16, 32) for k in (8, 16, 24, 32)]

    def make(e: int, k: int):
        torch.manual_seed(0)
        return (f"{e}x_k{k}", make_sae("batchtopk", d, expansion=e, k=k))

    t = time.perf_counter()
    train_on_batches([make(e, k) for e, k in configs], iter([x.clone() for x in data]), cfg)
    one = time.perf_counter() - t

    def reading_stream():  # a separate pass re-reads (here: re-copies) the data each time
        for x in data:
            yield x.clone()

    t = time.perf_counter()
    for e, k in configs:
        train_on_batches([make(e, k)], reading_stream(), cfg)
    return one, time.perf_counter() - t


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
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    d, f, k, b = a.d, a.d * a.expansion, a.k, a.batch
    print(f"conditions: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (other jobs share this machine)")
    print(f"setting: d={d} F={f} K={k} batch={b} fp32 Adam; median of {a.steps} steps after a warm-up")
    # Interleave the measurements so that load changes hit all of them alike.
    rate = gemm_rate(b, d, f, a.steps)
    t_ours = _time(ours_step(d, f, k, b), a.steps)
    t_oc = _time(overcomplete_step(d, f, k, b), a.steps)
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
        one, sep = grid_one_pass_vs_separate(a.grid_d, a.grid_batch, a.grid_steps)
        print(f"grid of 12 (d={a.grid_d}, batch {a.grid_batch}, {a.grid_steps} steps): one pass {one:.1f} s, "
              f"12 separate passes {sep:.1f} s, ratio {sep / one:.2f} x")


if __name__ == "__main__":
    main()
