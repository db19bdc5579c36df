"""``visae study run|status STUDY.yaml`` and ``visae demo``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from visae.cli_common import SetOpt, run_guarded

if TYPE_CHECKING:
    from visae.study.config import StudyConfig
    from visae.study.executors import RunSummary

DEMO_STUDY = "demo"
"""The template ``visae demo`` runs (``visae/studies/demo.yaml``)."""


def _study_and_overrides(study: Path, overrides: list[str] | None) -> tuple[Path, list[str]]:
    """A study argument (a YAML path or a template name) and the overrides to run it with."""
    from visae.study.templates import resolve_study

    path, implied = resolve_study(study)
    return path, [*implied, *(overrides or [])]


def _run(study: Path, overrides: list[str] | None, executor: str, address: str | None, dry_run: bool,
         max_retries: int | None) -> None:
    from visae.study.config import load_study_config
    from visae.study.run import describe_plan, run_study

    cfg = load_study_config(study, overrides, validate=False)
    check_study(study, cfg)  # every run, not only --dry-run: before any job runs
    plan, summary = run_study(cfg, executor=executor, address=address, dry_run=dry_run,
                              max_retries=max_retries, validate=False,
                              on_event=lambda s: typer.echo(s, err=True))
    if summary is None:
        typer.echo(describe_plan(plan, Path(cfg.out_dir)))
        return
    typer.echo(summary.describe(plan))
    typer.echo(report_line(Path(cfg.out_dir) / "report" / "index.html", summary))
    if not summary.ok:
        raise typer.Exit(code=1)


def report_line(report: Path, summary: RunSummary) -> str:
    """Where the report is, and whether it is complete: after failures it is partial or stale, never fresh."""
    if summary.ok:
        return f"report: {report}" if report.exists() else "report: none written (the plan has no report job)"
    what = f"{len(summary.failed)} job(s) failed, {len(summary.blocked)} blocked (listed above)"
    if report.exists():
        return (f"report: {report} is partial or stale: {what}, so it lacks their results; fix them and "
                "rerun the same command to complete it")
    return f"report: not written: {what}; fix them and rerun the same command"


def check_study(study: Path, cfg: StudyConfig) -> None:
    """Every problem the dry run can find without computing, one line each under one ``error:`` line."""
    from visae.study.validate import validate_study

    problems = validate_study(cfg)
    if problems:
        typer.secho(f"error: {study}: {len(problems)} problem(s) found without computing; fix them in the "
                    "YAML or with --set KEY=VALUE:", fg=typer.colors.RED, err=True)
        for p in problems:
            typer.echo(f"  {p}", err=True)
        raise typer.Exit(code=2)


def register(app: typer.Typer) -> None:
    """Add ``study run``, ``study status`` and ``demo``."""
    study_app = typer.Typer(help="Run a whole study (cache → train → evaluate → analyse → report), "
                                 "resumable.",
                            no_args_is_help=True)

    @study_app.command("run")
    def run_cmd(
        study: Annotated[Path, typer.Argument(help="study YAML, or the name of a shipped template: demo, "
                                                   "paper, release (see 'visae study templates')")],
        overrides: SetOpt = None,
        executor: Annotated[str, typer.Option(help="'local' (in process) or 'ray'")] = "local",
        address: Annotated[str | None,
                           typer.Option(help="Ray address; 'local' starts a local instance")] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run",
                                              help="print the plan and what exists; run nothing")] = False,
        max_retries: Annotated[int | None,
                               typer.Option(min=0, help="retries of a failing job (local 0, ray 2)")] = None,
    ) -> None:
        """Plan the study and run every job that is not done yet."""
        path, sets = run_guarded(_study_and_overrides, study, overrides)
        run_guarded(_run, path, sets, executor, address, dry_run, max_retries)

    @study_app.command("status")
    def status_cmd(study: Annotated[Path, typer.Argument(help="study YAML or template name")],
                   overrides: SetOpt = None) -> None:
        """Show which jobs are done and which remain."""
        from visae.study.config import load_study_config
        from visae.study.run import study_status

        path, sets = run_guarded(_study_and_overrides, study, overrides)
        typer.echo(run_guarded(lambda: study_status(load_study_config(path, sets))))

    @study_app.command("templates")
    def templates_cmd() -> None:
        """List the study templates shipped with visae (run one with 'visae study run NAME')."""
        from visae.study.templates import TEMPLATES_DIR, template_names

        for name in template_names():
            typer.echo(f"{name}\t{TEMPLATES_DIR / (name + '.yaml')}")

    app.add_typer(study_app, name="study")

    @app.command("demo")
    def demo_cmd(
        out: Annotated[Path, typer.Option(help="study folder")] = Path(".visae-demo"),
        overrides: SetOpt = None,
    ) -> None:
        """Run the offline demo study (the 'demo' template) end to end and print where the report is."""
        from visae.study.templates import template_path

        yaml_path: Path = run_guarded(template_path, DEMO_STUDY)
        typer.echo(f"demo study: {yaml_path} → {out.resolve()}", err=True)
        sets = [f"out_dir={out.resolve()}", *(overrides or [])]
        os.environ.setdefault("VISAE_DEMO", "1")
        run_guarded(_run, yaml_path, sets, "local", None, False, None)
