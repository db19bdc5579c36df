"""Tiny synthetic caches shared by the synth tests (written once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from visae.synth import generate

TINY = {"n_images": 240, "progress": False}


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synth")


@pytest.fixture(scope="session")
def spatial_cache(synth_root: Path) -> Path:
    return generate("spatial", synth_root, **TINY)


@pytest.fixture(scope="session")
def null_cache(synth_root: Path) -> Path:
    return generate("null", synth_root, **TINY)


@pytest.fixture(scope="session")
def hierarchical_cache(synth_root: Path) -> Path:
    return generate("hierarchical", synth_root, **TINY)
