"""Options and helpers shared by every ``visae`` sub-command."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from visae.config import FrozenConfig, load_config
from visae.errors import ConfigError, VisaeError, VisaeWarning

C = TypeVar("C", bound=FrozenConfig)

ConfigOpt = Annotated[Path | None,
                      typer.Option("--config", "-c", help="YAML file with the stage's settings.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override one setting: key=value (repeatable; dotted keys for nested)."),
]


def resolve_config(cls: type[C], config: Path | None, overrides: list[str] | None,
                   base: dict[str, Any] | None = None) -> C:
    """YAML file, then explicit CLI options (``base``, None values dropped), then ``--set`` overrides."""
    data = {k: v for k, v in (base or {}).items() if v is not None}
    check_option_overrides(data, overrides)
    return load_config(cls, config, overrides,
                       base=None) if not data else _merge(cls, config, data, overrides)


def check_option_overrides(options: dict[str, Any], overrides: list[str] | None) -> None:
    """ConfigError when ``--set KEY=V`` sets a field that an explicit option also sets to another value (one
    of the two would be silently ignored)."""
    from visae.config import parse_override

    for text in overrides or []:
        keys, value = parse_override(text)
        if len(keys) == 1 and keys[0] in options and options[keys[0]] != value:
            flag = "--" + keys[0].replace("_", "-")
            raise ConfigError(f"{flag} {options[keys[0]]} and --set {text} set {keys[0]} to two different "
                              f"values; give it once")


def refuse_inapplicable(mode: str, given: dict[str, bool]) -> None:
    """ConfigError naming the options of ``given`` (flag → was it given) that do not apply in ``mode``: an
    option that takes no effect is refused rather than silently ignored."""
    extra = [flag for flag, was_given in given.items() if was_given]
    if extra:
        raise ConfigError(f"{', '.join(extra)}: {'does' if len(extra) == 1 else 'do'} not apply {mode} and "
                          f"would be ignored; drop {'it' if len(extra) == 1 else 'them'}")


def _merge(cls: type[C], config: Path | None, data: dict[str, Any], overrides: list[str] | None) -> C:
    from visae.config import build_config, read_yaml

    merged: dict[str, Any] = read_yaml(config) if config is not None else {}
    merged.update(data)
    return build_config(cls, merged, overrides, source=str(config) if config else "options")


def fail(err: Exception | str) -> None:
    """Print a visae error as one ``error: …`` line (no traceback) and exit with status 2."""
    text = " ".join(str(err).split()) if "\n" in str(err) else str(err)
    typer.secho(f"error: {text}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


_OS_HINTS = {
    FileNotFoundError: "check the path",
    NotADirectoryError: "a file is in the way of a folder; give a folder path or move the file away",
    IsADirectoryError: "a folder is in the way of a file; give a file path or move the folder away",
    FileExistsError: "a file is in the way of a folder; give a folder path or move the file away",
    PermissionError: "no permission; pick a path you can write or fix its permissions",
}


def error_message(exc: BaseException) -> str | None:
    """The one-line message of an exception caused by bad input; None for anything else (a bug)."""
    from pydantic import ValidationError

    if isinstance(exc, VisaeError):
        return str(exc)
    if isinstance(exc, ValidationError):
        from visae.config import _format_validation_error

        return _format_validation_error(exc, exc.title)
    for cls, hint in _OS_HINTS.items():
        if isinstance(exc, cls) and exc.filename is not None:
            return f"{exc.filename}: {exc.strerror or cls.__name__}; {hint}"
    if isinstance(exc, OSError) and exc.filename is not None:  # any other OS error on a named path
        name = str(exc.filename)
        shown = name if len(name) <= 120 else f"{name[:60]}…{name[-40:]} ({len(name)} characters)"
        hint = ("use a shorter name" if exc.errno == errno.ENAMETOOLONG else
                "free some space or pick another disk" if exc.errno == errno.ENOSPC else
                "check the path and the disk")
        return f"{shown}: {exc.strerror or type(exc).__name__}; {hint}"
    if isinstance(exc, EOFError):
        return (f"a file ended early ({exc}): it is empty or truncated; rebuild it with the command that "
                "wrote it (VISAE_DEBUG=1 shows where)")
    return None


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    if issubclass(category, VisaeWarning):
        typer.secho(f"warning: {message}", fg=typer.colors.YELLOW, err=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each record's bare message to the ``sys.stderr`` of the moment (a test runner may swap it)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:  # StreamHandler.__init__ assigns it; the property wins
        pass


def show_library_messages(level: int = logging.INFO) -> None:
    """Show the library's ``logging`` messages (the ``visae`` logger and below) on stderr as plain lines,
    as the CLI does; idempotent."""
    logger = logging.getLogger("visae")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    if logger.level == logging.NOTSET or logger.level > level:
        logger.setLevel(level)


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """Bad input anywhere below becomes one ``error: …`` line and exit code 2; visae warnings print as
    ``warning: …``, the library's log messages as plain stderr lines. ``VISAE_DEBUG=1`` shows the traceback
    instead."""
    show_library_messages()
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            yield
        except Exception as e:  # translated below, or re-raised
            message = error_message(e)
            if message is None or os.environ.get("VISAE_DEBUG"):
                raise
            fail(message)


def run_guarded(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; turn VisaeError into a clean message and exit code 2."""
    try:
        return fn(*args, **kwargs)
    except VisaeError as e:
        fail(e)
