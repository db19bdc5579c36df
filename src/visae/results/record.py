"""The one writer of result records: ``<metric>.json`` of metrics, ``task_<task>.json`` of tasks and the raw
diagnostic's ``raw.json`` share one shape, read back by :mod:`visae.results.table`::

    {"metric", "value", "result": {... every summary number ...}, "config", "inputs",
     "seconds": {...}, "visae_version"}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from visae.io import atomic_write_json


def result_record(metric: str, value: float | None, result: dict[str, Any], config: dict[str, Any],
                  inputs: dict[str, Any], seconds: dict[str, float]) -> dict[str, Any]:
    """The record of one computed number (``seconds`` rounded to ms; the visae version added)."""
    from visae import __version__

    return {"metric": metric, "value": value, "result": result, "config": config, "inputs": inputs,
            "seconds": {k: round(float(v), 3) for k, v in seconds.items()}, "visae_version": __version__}


def write_result_record(path: Path | str, metric: str, value: float | None, result: dict[str, Any],
                        config: dict[str, Any], inputs: dict[str, Any], seconds: dict[str, float]) -> Path:
    """Write one result record atomically; returns its path."""
    path = Path(path)
    atomic_write_json(path, result_record(metric, value, result, config, inputs, seconds))
    return path
