"""The CLI shows the library's ``logging`` messages as plain stderr lines; library modules never write to
stderr themselves."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

from visae.cli_common import show_library_messages

SRC = Path(__file__).resolve().parents[1] / "src" / "visae"


@pytest.fixture
def clean_visae_logger():
    logger = logging.getLogger("visae")
    handlers, level = list(logger.handlers), logger.level
    logger.handlers[:] = []  # as in a fresh process (an earlier CLI test may have added the CLI's handler)
    logger.setLevel(logging.NOTSET)
    yield logger
    logger.handlers[:] = handlers
    logger.setLevel(level)


def test_library_messages_show_on_stderr_once_as_plain_lines(clean_visae_logger, capsys) -> None:
    logging.getLogger("visae.cache.writer").info("cache exists: /x")
    assert capsys.readouterr().err == ""  # a library on its own shows no INFO line
    show_library_messages()
    show_library_messages()  # idempotent: still one handler
    logging.getLogger("visae.cache.writer").info("cache exists: /x")
    logging.getLogger("visae.sae.train").warning("train: capped at 5 steps")
    logging.getLogger("visae.deep.module").debug("not shown")
    assert capsys.readouterr().err == "cache exists: /x\ntrain: capped at 5 steps\n"


def _writes_to_stderr(node: ast.AST) -> bool:
    """``sys.stderr`` anywhere, or ``typer.echo/secho(..., err=True)``."""
    if isinstance(node, ast.Attribute) and node.attr == "stderr" and isinstance(node.value, ast.Name) \
            and node.value.id == "sys":
        return True
    return isinstance(node, ast.Call) and any(k.arg == "err" for k in node.keywords) and \
        isinstance(node.func, ast.Attribute) and node.func.attr in ("echo", "secho")


def test_library_modules_log_rather_than_print_to_stderr() -> None:
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if path.stem in ("cli", "cli_common", "__main__") or path.stem.endswith("_cli"):
            continue  # the CLI owns stderr
        tree = ast.parse(path.read_text(encoding="utf-8"))
        offenders += [f"{rel}:{n.lineno}" for n in ast.walk(tree) if _writes_to_stderr(n)]
    assert offenders == [], "use logging.getLogger(__name__) instead: " + ", ".join(offenders)
