"""SAE training speed: our BatchTopK step vs overcomplete's BatchTopKSAE vs the machine's GEMM roofline.

Setting (DESIGN.md): d_in 768, 8× expansion, K = 64, batch 8192 tokens, fp32, Adam, CPU. The roofline
counts the step's unavoidable work per token: encoder matmul (2·D·F), its weight gradient (2·D·F), a
sparse decode of K columns (2·K·D) and its two gradients (4·K·D), at the fp32 GEMM rate measured here.
Also prints the bf16 figure, and a 12-configuration grid trained on one pass vs 12 separate passes.

    python benchmarks/train.py [--steps 3] [--d 768] [--batch 8192]
    python benchmarks/train.py --families [--small] [--only FAMILY]   # each family beside its peer
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


def _time_once(fn) -> float:
    _sync()
    t = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t


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


def family_step(family: str, d: int, f: int, k: int | None, b: int, open_per_token: int | None = None,
                **hparams):
    """visae's training step of any family (Adam, the family's own constraints), on one fixed batch.

    ``open_per_token`` sets the encoder bias so that each feature is open on that share of the batch (about
    that many features per token): where a target-L0 family (Gated) spends its run, near its target."""
    from visae.sae.registry import make_sae

    torch.manual_seed(0)
    sae = make_sae(family, d, d_sae=f, k=k, **hparams).to(DEVICE)
    opt = torch.optim.Adam(sae.optimizer_groups(1e-3), lr=1e-3)  # as the trainer builds it
    x = torch.randn(b, d, device=DEVICE)
    if open_per_token is not None:
        with torch.no_grad():
            shared = (x - sae.b_dec) @ sae.W_enc
            sae.b_enc.copy_(-torch.kthvalue(shared, b - b * open_per_token // f, dim=0).values)
            del shared
    sae.training_step(x)  # first call: Archetypal's centroids (k-means), not part of a step
    opt.zero_grad(set_to_none=True)

    def step() -> None:
        sae.training_step(x)
        sae.remove_parallel_grad()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sae.after_step()

    return step


def saelens_step(arch: str, d: int, f: int, k: int, b: int, widths: list[int] | None = None):
    """sae-lens's training step (``training_forward_pass``, backward, Adam) for BatchTopK,
    Matryoshka-BatchTopK or Gated, as its trainer runs it (decoder-norm rescaling off: visae keeps unit
    rows)."""
    import warnings

    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.matryoshka_batchtopk_sae import (
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )
    from sae_lens.saes.sae import TrainStepInput

    torch.manual_seed(0)
    coefficients: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if arch == "gated":
            from sae_lens.saes.gated_sae import GatedTrainingSAE, GatedTrainingSAEConfig

            model = GatedTrainingSAE(GatedTrainingSAEConfig(d_in=d, d_sae=f, device=str(DEVICE)))
            coefficients = {"l1": 1.0}
        elif arch == "matryoshka":
            model = MatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAEConfig(
                d_in=d, d_sae=f, k=k, matryoshka_widths=list(widths or []), device=str(DEVICE),
                rescale_acts_by_decoder_norm=False))
        else:
            model = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=d, d_sae=f, k=k, device=str(DEVICE),
                                                                    rescale_acts_by_decoder_norm=False))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(b, d, device=DEVICE)
    inp = TrainStepInput(sae_in=x, coefficients=coefficients, dead_neuron_mask=None, n_training_steps=0,
                         is_logging_step=False)

    def step() -> None:
        model.training_forward_pass(inp).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def overcomplete_ra_step(d: int, f: int, k: int, b: int, n_centroids: int):
    """overcomplete's RA-SAE (``RATopKSAE``) step: forward (its archetypal projection included), the
    reconstruction loss, backward, Adam."""
    import matplotlib
    import matplotlib.cm

    if not hasattr(matplotlib.cm, "get_cmap"):
        matplotlib.cm.get_cmap = matplotlib.colormaps.get_cmap
    from overcomplete.sae import RATopKSAE

    torch.manual_seed(0)
    x = torch.randn(b, d, device=DEVICE)
    points = x[torch.randperm(b, device=DEVICE)[:n_centroids]].clone()
    model = RATopKSAE(d, f, points=points, top_k=k, device=str(DEVICE))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        _, _, recon = model(x)
        (recon - x).pow(2).sum(1).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def families(d: int, f: int, k: int, b: int, steps: int, only: str | None = None) -> None:
    """Every visae family's step beside its peer's, in one process: single steps alternate (ours, peer,
    ours, peer …, ``steps`` of each after a warm-up) and each side keeps its fastest, so that other jobs on
    the machine, which only ever slow a step, hit neither alone. Each TopK-style family's roofline is at
    the best GEMM rate measured in the same run (the fastest single GEMM, as the steps keep their
    fastest). ``floor`` is the step's share of its sparse floor, the tighter bound: DESIGN.md's roofline
    counts the encoder's weight gradient as a dense matmul, which the sparse kernels replace by a scatter
    over the selected entries, so a step can pass 100 % of the roofline but not of the floor.
    ``floor/peer`` (floor tokens/s over the peer's) is the largest speed-up over the peer that any step
    could show. ``only`` keeps one family's row."""
    widths = [f // 8, f // 4, f // 2, f]
    n_c = min(f, b)
    enc, sparse = 2 * d * f, 2 * k * d  # per token: the encoder matmul; one sparse pass over K codes
    dict_products = 4 * f * n_c * d / b
    # (name, ours, peer, peer's step, FLOPs/token of DESIGN.md's roofline, of the sparse floor): the
    # roofline counts the encoder's weight gradient as a dense matmul (2DF); the sparse kernels compute it
    # from the K selected entries of each token (2KD), so the floor is the encoder matmul and the sparse
    # passes alone (decode, value gradients, decoder and encoder gradient scatters)
    rows = [("batchtopk", lambda: family_step("batchtopk", d, f, k, b),
             "sae-lens BatchTopK", lambda: saelens_step("batchtopk", d, f, k, b),
             2 * enc + 3 * sparse, enc + 4 * sparse),
            ("matryoshka", lambda: family_step("matryoshka", d, f, k, b, widths=widths),
             "sae-lens Matryoshka", lambda: saelens_step("matryoshka", d, f, k, b, widths),
             2 * enc + 3 * sparse + 2 * d * len(widths), enc + 4 * sparse + 2 * d * len(widths)),
            ("archetypal", lambda: family_step("archetypal", d, f, k, b, n_centroids=n_c),
             "overcomplete RATopKSAE", lambda: overcomplete_ra_step(d, f, k, b, n_c),
             2 * enc + 3 * sparse + dict_products, enc + 4 * sparse + dict_products),
            ("gated", lambda: family_step("gated", d, f, k, b, open_per_token=k),
             "sae-lens Gated", lambda: saelens_step("gated", d, f, k, b), 2 * enc + 6 * sparse,
             enc + 6 * sparse),
            ("gated L0≫K", lambda: family_step("gated", d, f, None, b),
             "sae-lens Gated", lambda: saelens_step("gated", d, f, k, b), None, None)]
    if only is not None:
        rows = [r for r in rows if r[0].split()[0] == only]
        if not rows:
            raise SystemExit(f"--only: no family {only!r} (batchtopk, matryoshka, archetypal, gated)")
    gx, gw, gb = (torch.randn(b, d, device=DEVICE), torch.randn(d, f, device=DEVICE),
                  torch.zeros(f, device=DEVICE))

    def fastest_gemm() -> float:  # the encoder-shaped GEMM's rate, fastest of `steps` like the steps below
        torch.addmm(gb, gx, gw)
        return 2 * b * d * f / min(_time_once(lambda: torch.addmm(gb, gx, gw)) for _ in range(steps))

    rate = max(fastest_gemm() for _ in range(2))
    print(f"families: d={d} F={f} K={k} batch={b} fp32 Adam, fastest of {steps} alternating steps; widths "
          f"{widths}; archetypal {n_c} centroids; fp32 GEMM {rate / 1e9:.1f} GFLOP/s; load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"  {'family':<11} {'visae tok/s':>12} {'peer':<24} {'peer tok/s':>11} {'ratio':>7} "
          f"{'roofline':>9} {'floor':>7} {'floor/peer':>10}")
    for name, ours_fn, peer, peer_fn, flops, floor_flops in rows:
        ours_step_fn = ours_fn()
        peer_step_fn = peer_fn() if peer_fn is not None else None
        ours_step_fn()  # warm-up
        if peer_step_fn is not None:
            peer_step_fn()
        t_ours, t_peer = float("inf"), float("inf")
        for _ in range(steps):  # alternate single steps; each side keeps its fastest (load only slows)
            t_ours = min(t_ours, _time_once(ours_step_fn))
            if peer_step_fn is not None:
                t_peer = min(t_peer, _time_once(peer_step_fn))
        rate = max(rate, fastest_gemm())  # the best GEMM rate of the run (load only slows it)
        ours = b / t_ours
        peer_rate = b / t_peer if peer_step_fn is not None else float("nan")
        roof = f"{100 * ours / (rate / flops):8.1f}%" if flops else f"{'dense':>9}"
        floor = f"{100 * ours / (rate / floor_flops):6.1f}%" if floor_flops else f"{'—':>7}"
        # the best ratio possible: a step doing only its floor's work at the GEMM rate
        ceiling = f"{rate / floor_flops / peer_rate:9.2f}x" if floor_flops else f"{'—':>10}"
        print(f"  {name:<11} {ours:12,.0f} {peer or '—':<24} {peer_rate:11,.0f} {ours / peer_rate:6.2f}x "
              f"{roof} {floor} {ceiling}")
        if name == "archetypal" and floor_flops:
            print(f"  {'':<11} archetypal floor {floor_flops / 1e6:.2f} MFLOP/token, of which the dictionary "
                  f"products W C and (∂L/∂D) Cᵀ (4·F·n_c·D/B) {dict_products / 1e6:.2f} "
                  f"({100 * dict_products / floor_flops:.0f}%): a step at the floor is "
                  f"{rate / floor_flops / peer_rate:.2f}x the peer's, the most any implementation of this "
                  "step can reach here")
        del ours_step_fn, peer_step_fn


PAPER_GRID_FLOPS = 4 * 768 * 4 * (6144 + 12288 + 24576)
"""Encoder matmul + its weight gradient per token for the paper's 12 SAEs (d 768, 3 widths × 4 K)."""


def _loop_seconds(out) -> float:
    """Seconds of ``out``'s training loop (the last logged row's ``elapsed_s``): its steps, reads included."""
    import json

    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return max(float(r["elapsed_s"]) for r in rows if "elapsed_s" in r)


def _read_pass(cache, batch: int, n_batches: int) -> float:
    """What one pass costs without any SAE: cold read, shuffle, fp32 conversion, normalization."""
    from _disk import drop_pages
    from visae.cache.reader import open_cache

    drop_pages(cache)
    t = time.perf_counter()
    for i, _ in enumerate(open_cache(cache).token_sampler(batch, seed=42)):
        if i + 1 >= n_batches:
            break
    return time.perf_counter() - t


def _grid_runs(d: int, batch: int, steps: int, device: str, repeats: int) -> dict:
    """Warm-up, R, (one pass of 12, then 12 passes of one) × ``repeats``, R again, the paper-width sampler
    rate. Each side keeps its fastest repeat (other jobs on the machine only ever slow a run down)."""
    import tempfile
    from pathlib import Path

    from _disk import drop_pages, write_disk_cache
    from visae.sae.train import SAESpec, TrainConfig, train_saes

    specs = [SAESpec(family="batchtopk", expansion=e, k=k) for e in (8, 16, 32) for k in (8, 16, 24, 32)]
    cfg = TrainConfig(batch_size=batch, steps=steps, heldout_batches=1, progress=False, device=device,
                      checkpoint_every=10**9, log_every=steps)
    m: dict = {"cpu": {}, "loop": {}, "wall": {}, "reps": []}
    with tempfile.TemporaryDirectory(prefix="visae-grid-") as tmp:
        m["n_images"] = -(-(steps + 1) * batch // 196)
        cache = write_disk_cache(Path(tmp) / "cache", m["n_images"], 14, d)
        m["mib"] = sum(f.stat().st_size for f in cache.glob("shard_*.npy")) / 2**20

        def run(group: list, out: str) -> None:
            drop_pages(cache)
            t, c = time.perf_counter(), time.process_time()
            train_saes(cache, group, Path(tmp) / out, cfg)
            m["cpu"][out], m["wall"][out] = time.process_time() - c, time.perf_counter() - t
            m["loop"][out] = _loop_seconds(Path(tmp) / out)

        t = time.perf_counter()  # one-time costs of the process (torch.optim's first use imports dynamo)
        train_saes(cache, specs[:1], Path(tmp) / "warm-up", cfg.model_copy(update={"steps": 1}))
        m["warm"] = time.perf_counter() - t
        r1 = _read_pass(cache, batch, steps + 1)
        for rep in range(repeats):
            run(specs, f"one{rep}")
            for i, s in enumerate(specs):
                run([s], f"sep{rep}-{i}")
            m["reps"].append({side: [sum(m[k][n] for n in m["wall"] if n.startswith(f"{side}{rep}"))
                                     for k in ("wall", "cpu", "loop")] for side in ("one", "sep")})
        m["r"] = min(r1, _read_pass(cache, batch, steps + 1))
    with tempfile.TemporaryDirectory(prefix="visae-grid-") as tmp:  # the sampler at the paper's width
        n = 8 * 8192
        wide = write_disk_cache(Path(tmp) / "cache", -(-n // 196), 14, 768)
        m["rate768"] = n / min(_read_pass(wide, 8192, 8) for _ in range(2))
    return m


def grid_from_disk(d: int, batch: int, steps: int, device: str, threads_note: str, repeats: int = 2) -> None:
    """12 configurations (3 widths × 4 K) trained by one ``train_saes`` pass vs 12 passes, each pass reading
    a real on-disk cache from cold (pages dropped first), as 12 separate ``visae train`` runs would; then
    the cost model (12R + C)/(R + C) from the measured R and C, and what 3× would need."""
    m = _grid_runs(d, batch, steps, device, repeats)
    one, cpu_one, loop_one = min((r["one"] for r in m["reps"]), key=lambda x: x[0])
    sep_w, cpu_sep, loop_sep = min((r["sep"] for r in m["reps"]), key=lambda x: x[0])
    r = m["r"]
    c = max(one - r, 1e-9)
    tokens = steps * batch
    print(f"grid of 12 from a cold on-disk cache ({m['n_images']} images × 196 × d {d}, {m['mib']:.0f} MiB; "
          f"batch {batch}, {steps} steps, {device}; {threads_note}; each side's fastest of {repeats} "
          "alternating repeats):")
    print(f"  warm-up pass first (1 SAE, 1 step): {m['warm']:.1f} s — the process's one-time costs "
          "(torch.optim's first use imports torch._dynamo), paid by neither side below")
    print(f"  one pass for 12 SAEs:        {one:8.2f} s wall, {cpu_one:8.2f} s CPU (all threads); "
          f"training loop {loop_one:.2f} s, the rest (set-up, held-out, calibration, saving) "
          f"{one - loop_one:.2f} s")
    print(f"  12 passes (one SAE each):    {sep_w:8.2f} s wall, {cpu_sep:8.2f} s CPU; training loops "
          f"{loop_sep:.2f} s, the rest {sep_w - loop_sep:.2f} s")
    print(f"  ratio 12 passes / one pass:  {sep_w / one:8.2f} x wall, {cpu_sep / cpu_one:.2f} x CPU  "
          "(goal ≥ 3 x)")
    print(f"  R, reading one pass alone:   {r:8.3f} s  (cold read, shuffle, fp32, normalize: "
          f"{(steps + 1) * batch / r:,.0f} tokens/s)")
    print(f"  C = one pass − R:            {c:8.2f} s  (training all 12: {tokens / c:,.0f} tokens/s)")
    print(f"  model (12R + C) / (R + C):   {(12 * r + c) / (r + c):8.2f} x  (R/C = {r / c:.3f}); measured / "
          f"model = {sep_w / one / ((12 * r + c) / (r + c)):.2f}")
    print(f"  3 x needs C ≤ 4.5 R = {4.5 * r:.2f} s: the 12 SAEs trained {c / (4.5 * r):.0f} x faster than "
          "here")
    need = m["rate768"] / 4.5
    print(f"  at the paper's grid (d 768, F 6144/12288/24576 × 4 K): this sampler reads d-768 tokens at "
          f"{m['rate768']:,.0f} tokens/s cold, so 3 x needs the 12 SAEs trained at ≥ {need:,.0f} tokens/s, "
          f"≥ {need * PAPER_GRID_FLOPS / 1e12:.1f} TFLOP/s of encoder matmuls (a GPU's range; not a CPU's)")


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
    ap.add_argument("--grid-repeats", type=int, default=2,
                    help="alternating repeats of both sides of the grid (each keeps its fastest)")
    ap.add_argument("--skip-grid", action="store_true")
    ap.add_argument("--bf16-batch", type=int, default=1024,
                    help="batch of the bf16 measurement (CPUs without bf16 matrix units are very slow)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (benchmarks/gpu.sh)")
    ap.add_argument("--grid-only", action="store_true", help="only the grid-from-disk comparison")
    ap.add_argument("--skip-peer", action="store_true", help="skip overcomplete (e.g. not installed)")
    ap.add_argument("--families", action="store_true",
                    help="only every family's step beside its peer's (sae-lens BatchTopK and Matryoshka, "
                         "overcomplete RA-SAE)")
    ap.add_argument("--only", default=None, metavar="FAMILY",
                    help="with --families: only this family's row (batchtopk, matryoshka, archetypal, gated)")
    ap.add_argument("--small", action="store_true",
                    help="small sizes for a quick run: d 128, 8x, K 16, batch 1024")
    a = ap.parse_args()
    if a.small:
        a.d, a.expansion, a.k, a.batch = 128, 8, 16, 1024
    global DEVICE
    DEVICE = torch.device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    d, f, k, b = a.d, a.d * a.expansion, a.k, a.batch
    print(f"conditions: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (other jobs share this machine), "
          f"device {DEVICE}" + (f" ({torch.cuda.get_device_name(DEVICE)})" if DEVICE.type == "cuda" else ""))
    if a.families:
        families(a.d, a.d * a.expansion, a.k, a.batch, a.steps, a.only)
        return
    if a.grid_only:
        grid_from_disk(a.grid_d, a.grid_batch, a.grid_steps, a.device,
                       f"load average {os.getloadavg()[0]:.1f}", a.grid_repeats)
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
                       f"load average {os.getloadavg()[0]:.1f}", a.grid_repeats)


if __name__ == "__main__":
    main()
