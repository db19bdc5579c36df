"""Study plugins: modules a study names under ``plugins`` (they register backbones, image sources, metrics),
imported in whatever process plans or runs a job."""

from __future__ import annotations

import importlib

from visae.errors import StudyError


def import_plugins(plugins: list[str] | tuple[str, ...] = ()) -> None:
    """Import each plugin module; StudyError naming the module when one cannot be imported."""
    for name in plugins:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise StudyError(f"plugins: cannot import {name!r} ({e}); install it or fix the study's "
                             "'plugins'") from e
