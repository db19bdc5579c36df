"""Options and helpers shared by every ``visae`` sub-command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from visae.config import FrozenConfig, load_config
from visae.errors import VisaeError

C = TypeVar("C", bound=FrozenConfig)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML file with the stage's settings.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override one setting: key=value (repeatable; dotted keys for nested)."),
]


def resolve_config(cls: type[C], config: Path | None, overrides: list[str] | None,
                   base: dict[str, Any] | None = None) -> C:
    """YAML file, then explicit CLI options (``base``, None values dropped), then ``--set`` overrides."""
    data = {k: v for k, v in (base or {}).items() if v is not None}
    return load_config(cls, config, overrides, base=None) if not data else _merge(cls, config, data, overrides)


def _merge(cls: type[C], config: Path | None, data: dict[str, Any], overrides: list[str] | None) -> C:
    from visae.config import build_config, read_yaml

    merged: dict[str, Any] = read_yaml(config) if config is not None else {}
    merged.update(data)
    return build_config(cls, merged, overrides, source=str(config) if config else "options")


def fail(err: Exception) -> None:
    """Print a visae error without a traceback and exit with status 2."""
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def run_guarded(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; turn VisaeError into a clean message and exit code 2."""
    try:
        return fn(*args, **kwargs)
    except VisaeError as e:
        fail(e)
