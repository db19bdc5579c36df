"""Loading and encoding an exported SAE: visae vs sae-lens on the same SAELens files, and visae reading its
saev export (CPU; a ViT-B-sized TopK SAE, 768 × 12288, k = 64).

Usage: ``python benchmarks/interop.py [--tokens 4096] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def best(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    """Best wall-clock seconds of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    """Print one line per measurement."""
    import sae_lens

    from visae.sae.checkpoint import load_sae, save_sae
    from visae.sae.export import export_saes
    from visae.sae.registry import make_sae

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    sae = make_sae("topk", 768, expansion=16, k=64)
    sae.set_normalization(torch.randn(768), 2.0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        save_sae(sae, root / "ours")
        t_export = best(lambda: export_saes(root / "ours", root / "lens", fmt="saelens", force=True), 1)
        export_saes(root / "ours", root / "saev", fmt="saev")
        t_ours = best(lambda: load_sae(root / "lens"), args.repeats)
        t_lens = best(lambda: sae_lens.SAE.load_from_disk(str(root / "lens")), args.repeats)
        t_saev = best(lambda: load_sae(root / "saev"), args.repeats)
        ours, lens = load_sae(root / "lens"), sae_lens.SAE.load_from_disk(str(root / "lens")).eval()
        a = torch.randn(args.tokens, 768) * 2.0
        with torch.no_grad():
            e_ours = best(lambda: ours.encode(a), args.repeats)
            e_lens = best(lambda: lens.encode(a), args.repeats)
            diff = float((ours.encode(a) - lens.encode(a)).abs().max())
    print(f"export to saelens (incl. load-back check): {t_export:.3f} s")
    print(f"load SAELens files: visae {t_ours:.3f} s, sae-lens {t_lens:.3f} s; "
          f"visae from saev: {t_saev:.3f} s")
    print(f"encode {args.tokens} tokens: visae {e_ours * 1e3:.1f} ms, sae-lens {e_lens * 1e3:.1f} ms; "
          f"max |code difference| {diff:.2e}")


if __name__ == "__main__":
    main()
