"""Shared test settings: keep torch to the machine's cores and make runs deterministic."""

from __future__ import annotations

import os

os.environ.setdefault("VISAE_TEST", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
