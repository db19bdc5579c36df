"""``visae analyze RESULTS``: the paper's cross-backbone analyses of a study's results table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from visae.cli_common import ConfigOpt, SetOpt, resolve_config, run_guarded


def register(app: typer.Typer) -> None:
    """Add the ``analyze`` command to the ``visae`` app."""

    @app.command()
    def analyze(
        results: Annotated[Path, typer.Argument(help="results.parquet, or the study folder holding one.")],
        out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default: analysis/ "
                                                                     "beside the results).")] = None,
        family: Annotated[str | None,
                          typer.Option(help="Main SAE family (default: batchtopk if present).")] = None,
        layer: Annotated[int | None, typer.Option(help="Main layer (default: the most common).")] = None,
        config: ConfigOpt = None,
        set_: SetOpt = None,
    ) -> None:
        """Variance decomposition, hypotheses H1–H4, metric × task correlations, codes lift, cross-family
        rank consistency, M7 sensitivity and layer ablation, as CSV and Markdown tables."""
        from visae.analysis.run import AnalysisConfig, analyze_path

        cfg = run_guarded(resolve_config, AnalysisConfig, config, set_, {"family": family, "layer": layer})
        res, written = run_guarded(analyze_path, results, out, cfg)
        for note in res["notes"]:
            typer.echo(note)
        hyp = res["hypotheses"]
        for row in hyp.itertuples(index=False):
            rho = "—" if row.rho is None or row.rho != row.rho else f"{row.rho:.3f}"
            p = "—" if row.p is None or row.p != row.p else f"{row.p:.3f}"
            typer.echo(f"{row.id}: {row.metric} → {row.task}: ρ = {rho}, p = {p}, n = {row.n}: {row.verdict}")
        typer.echo(f"wrote {len(written)} file(s) to {written[-1].parent}")
