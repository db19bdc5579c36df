"""A temporary, offline Hugging Face cache (``HF_HOME``) for every test in this folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from visae.hub_testing import use_offline_hub

torch.set_num_threads(1)


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``HF_HUB_CACHE`` of an empty offline hub cache under ``tmp_path/hf``; the hub client reads it."""
    return use_offline_hub(tmp_path / "hf", monkeypatch)
