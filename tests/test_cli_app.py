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
    lines = dict(line.split(": ", 1) for line in result.output.splitlines() if ": " in line)
    assert lines["SAE families"] == "batchtopk, topk, jumprelu, relu, matryoshka, gated, archetypal"
    assert lines["metrics"] == "m1, raw, m2, m3, m4, m5, m6, m7, m5d, recovery"
    assert lines["checkpoint formats"] == ("visae, saelens, saev, dictionary_learning, sparsify, vit_prisma, "
                                           "authors, reference")
    assert "shuffled:<name>" in lines["backbones"] and "offline:digits" in lines["image sources"]


def test_help_lists_commands() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "info" in result.output
