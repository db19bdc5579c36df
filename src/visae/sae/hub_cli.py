"""``visae ls`` (a hub repo's configurations, or the caches and SAEs under a folder) and ``visae export``;
the ``--subfolder``/``--revision`` options every command that takes an SAE shares."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from visae.cli_common import run_guarded

SubfolderOpt = Annotated[str | None, typer.Option(
    "--subfolder", help="Configuration inside the SAE repo or folder (same as REPO:SUBFOLDER).")]
RevisionOpt = Annotated[str | None, typer.Option(
    "--revision", help="Hub branch, tag or commit of the SAE repo (same as REPO@REVISION; default: main).")]


def sae_reference(sae: str, subfolder: str | None = None, revision: str | None = None) -> str:
    """``--sae`` with ``--subfolder``/``--revision`` folded in, as one reference string that
    :func:`visae.load_sae` reads (``REPO:SUBFOLDER@REVISION``, or a local path)."""
    from visae.sae.hub import SAERef, parse_sae_ref

    ref = parse_sae_ref(sae, subfolder, revision)
    if not ref.hub and ref.subfolder:
        inside = Path(ref.target) / ref.subfolder
        if not inside.exists():  # a local grid: never fall through to the hub
            from visae.errors import CheckpointError
            from visae.sae.hub import describe_grid

            grid = describe_grid(Path(ref.target))
            raise CheckpointError(f"{inside}: no such configuration in the local folder {ref.target}"
                                  + (f"; it is {grid}" if grid else "; it holds no SAE checkpoints"))
        return str(inside)
    return str(SAERef(ref.target, ref.subfolder, ref.revision, hub=ref.hub)) if ref.hub else ref.target


def _ls_hub(repo: str, revision: str | None) -> None:
    from visae.sae.hub import list_configurations, parse_sae_ref, release_backbone

    ref = parse_sae_ref(repo, revision=revision)
    if not ref.hub:
        from visae.errors import ConfigError

        raise ConfigError(f"{repo}: not a folder and not a hub repo id (ORG/NAME)")
    configs = list_configurations(ref.target, ref.revision)
    backbone = release_backbone(ref.target)
    head = f"{ref.target}" + (f"@{ref.revision}" if ref.revision else "") + (
        f" (the authors' release for {backbone})" if backbone else "")
    typer.echo(f"{head}: {len(configs)} configuration(s)")
    for c in configs:
        typer.echo(f"  {c}")


def register(app: typer.Typer) -> None:
    """Add ``ls``, ``export`` and ``saebench`` to the CLI."""
    _register_saebench(app)
    _register_ls(app)
    _register_export(app)


def _register_saebench(app: typer.Typer) -> None:
    @app.command("saebench")
    def saebench_command(
        results: Annotated[Path, typer.Argument(help="A 'visae eval' output folder or a study folder.")],
        out: Annotated[Path, typer.Argument(help="Folder to write the SAEBench-shaped JSON files into "
                                                 "(same relative paths as the records).")],
    ) -> None:
        """Write every visae result record under RESULTS as a SAEBench-shaped JSON file (metrics grouped by
        the four dimensions, per-feature details, SAE config and provenance, visae version and commit)."""

        def go() -> None:
            from visae.results.saebench import export_results

            written = export_results(results, out)
            typer.echo(f"{len(written)} SAEBench result file(s) under {out}")

        run_guarded(go)


def _register_ls(app: typer.Typer) -> None:
    @app.command("ls")
    def ls_command(
        target: Annotated[str,
                          typer.Argument(help="A folder (lists its caches and SAEs) or a hub repo ORG/NAME "
                                                   "(lists its SAE configurations; offline: from the local "
                                                   "cache).")],
        revision: RevisionOpt = None,
    ) -> None:
        """List activation caches and SAEs under a folder, or the SAE configurations of a hub repo."""

        def go() -> None:
            from visae.cli_common import refuse_inapplicable

            path = Path(target)
            if path.exists():
                refuse_inapplicable(f"to a local folder ({target}; it is for hub repos)",
                                    {"--revision": revision is not None})
            if path.is_dir():
                from visae.inventory import format_entries, scan

                entries = scan(path)
                if not entries:
                    typer.echo(f"{path}: no activation cache or SAE checkpoint in it (searched "
                               f"subfolders to depth 8)")
                    return
                typer.echo(format_entries(path, entries))
                return
            if path.exists():
                from visae.errors import ConfigError

                raise ConfigError(f"{path}: is a file; give a folder or a hub repo id")
            _ls_hub(target, revision)

        run_guarded(go)


def _register_export(app: typer.Typer) -> None:
    @app.command("export")
    def export_command(
        sae_dir: Annotated[str,
                           typer.Argument(help="One SAE folder, a 'visae train' output folder (a grid), or a "
                                                    "hub repo REPO[:SUBFOLDER][@REVISION] (converted to "
                                                    "visae's format).")],
        out: Annotated[Path, typer.Argument(help="New folder to write the hub repo's files into.")],
        results: Annotated[list[Path] | None, typer.Option(
            "--results", help="Folder of 'visae eval' results for the model card's metrics (repeatable; "
                              "SAE_DIR is always searched).")] = None,
        repo_id: Annotated[str | None,
                           typer.Option("--repo-id", help="Repo name used in the card's examples.")] = None,
        force: Annotated[bool, typer.Option("--force", help="Write into a non-empty OUT, replacing the "
                                                            "exported files.")] = False,
        fmt: Annotated[str, typer.Option("--format", help="Checkpoint layout: visae, saelens "
                                                          "(sae_weights.safetensors + cfg.json) or saev "
                                                          "(sae.pt); normalization is folded into the "
                                                          "weights for saelens and saev.")] = "visae",
    ) -> None:
        """Write the folder a hub repo would hold: checkpoint(s), one subfolder per configuration for a grid,
        and a model card (README.md) with the config, metrics and provenance."""

        def go() -> None:
            from visae.errors import ConfigError
            from visae.sae.export import export_saes
            from visae.sae.hub import _HUB_ID

            for folder in results or []:
                if not folder.is_dir():
                    what = "is a file" if folder.exists() else "no such folder"
                    raise ConfigError(f"--results {folder}: {what}; give the --out folder of a 'visae eval' "
                                      "run")
            if repo_id is not None and _HUB_ID.fullmatch(repo_id) is None:
                raise ConfigError(f"--repo-id {repo_id!r}: not a hub repo id; write ORG/NAME with letters, "
                                  "digits, '-', '_' or '.', e.g. my-lab/dinov2-saes")

            items = export_saes(sae_dir, out, results or [], repo_id=repo_id, force=force, fmt=fmt)
            for it in items:
                typer.echo(f"{it.dest}  ({it.name}: {len(it.metrics)} metric(s))")
            typer.echo(f"model card: {out / 'README.md'}; upload with 'hf upload <org>/<repo> {out}'")

        run_guarded(go)
