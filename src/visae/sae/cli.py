"""``visae train``: a grid of SAEs on one pass over an activation cache."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from visae.cli_common import ConfigOpt, SetOpt, resolve_config, run_guarded
from visae.errors import ConfigError


def _numbers(text: str | None, cast: Any, what: str) -> list[Any] | None:
    if text is None:
        return None
    try:
        return [cast(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--{what} {text!r}: expected comma-separated numbers, e.g. 8,16,32") from None


def register(app: typer.Typer) -> None:
    """Add ``visae train`` to the CLI."""

    @app.command()
    def train(
        cache: Annotated[list[Path],
                         typer.Option("--cache", help="Activation cache folder (from 'visae cache'); "
                                                  "repeat it to train on several caches as one stream.")],
        out: Annotated[Path,
                       typer.Option("--out", help="Output folder: one sub-folder per SAE, log, state.")],
        family: Annotated[str,
                          typer.Option(help="SAE family: batchtopk, topk, jumprelu, relu, matryoshka, gated, "
                                               "archetypal ('visae info' lists them).")] = "batchtopk",
        expansion: Annotated[str, typer.Option(help="Expansion factors, comma-separated.")] = "8,16,32",
        k: Annotated[str | None, typer.Option("--k", help="K values, comma-separated (default: the paper's "
                                                          "64,128,192,256).")] = None,
        steps: Annotated[int | None, typer.Option(help="Stop after this many steps.")] = None,
        batch_size: Annotated[int | None, typer.Option(help="Tokens per step (paper: 8192).")] = None,
        dtype: Annotated[str | None, typer.Option(help="fp32 or bf16.")] = None,
        device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1 …")] = None,
        force: Annotated[bool, typer.Option("--force", help="Replace SAEs in OUT trained on another cache or "
                                                            "with other settings (default: "
                                                            "refuse).")] = False,
        config: ConfigOpt = None,
        set_: SetOpt = None,
    ) -> None:
        """Train SAEs (every expansion × every K) on one pass over CACHE (one or several); resumable."""

        def go() -> None:
            from visae.sae.train import SAESpec, TrainConfig, train_saes

            cfg = resolve_config(TrainConfig, config, set_, base={"steps": steps, "batch_size": batch_size,
                                                                 "dtype": dtype, "device": device})
            exps = _numbers(expansion, float, "expansion") or [8.0]
            from visae.sae.registry import SAE_FAMILIES, canonical_family

            # keep-K families and JumpReLU (the paper's target L0s) sweep the paper's Ks by default
            needs_k = SAE_FAMILIES[family].needs_k or canonical_family(family) == "jumprelu"
            ks = _numbers(k, int, "k") or ([64, 128, 192, 256] if needs_k else [None])
            specs = [SAESpec(family=family, expansion=e, k=kk) for e in exps for kk in ks]
            paths = train_saes(list(cache), specs, out, cfg, force=force)
            for p in paths:
                typer.echo(str(p))

        run_guarded(go)
