"""``visae report STUDY_DIR``: the self-contained HTML report and feature browser of a study."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from visae.cli_common import run_guarded


def register(app: typer.Typer) -> None:
    """Add ``report``."""

    @app.command("report")
    def report_cmd(
        study_dir: Annotated[Path, typer.Argument(help="study folder (holds results/results.parquet)")],
        out: Annotated[Path | None, typer.Option(help="output folder (default: STUDY_DIR/report)")] = None,
    ) -> None:
        """Write index.html (figures, tables, hypotheses, guide) and features.html (feature browser) from the
        study folder's results, analysis tables and feature views."""
        from visae.report.write import write_report

        paths = run_guarded(write_report, study_dir, out_dir=out)
        for name, path in paths.items():
            typer.echo(f"{name}: {path}")
