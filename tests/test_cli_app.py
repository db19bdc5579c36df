"""The top-level command group."""

from __future__ import annotations

from typer.testing import CliRunner

from visae import __version__
from visae.cli import app


def test_info_reports_version_and_device() -> None:
    result = CliRunner().invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    assert f"visae {__version__}" in result.output
    assert "device:" in result.output


def test_help_lists_commands() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "info" in result.output
