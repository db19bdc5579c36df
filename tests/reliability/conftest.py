"""Fixtures of the reliability suite: one fork server per session (imports torch and visae once)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import ForkServer


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkServer]:
    """A ``driver.py serve`` process shared by every kill/resume test."""
    fs = ForkServer(tmp_path_factory.mktemp("logs"))
    yield fs
    fs.close()
