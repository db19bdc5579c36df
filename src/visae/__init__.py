"""visae: sparse autoencoders on Vision Transformer patch activations, evaluated with ViSAEBench."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# Public API, imported lazily so that `import visae` stays fast and optional parts fail only when used.
_EXPORTS = {
    "load_backbone": "visae.backbones.registry",
    "build_cache": "visae.cache.writer",
    "open_cache": "visae.cache.reader",
    "train_saes": "visae.sae.train",
    "load_sae": "visae.sae.checkpoint",
    "save_sae": "visae.sae.checkpoint",
    "evaluate": "visae.metrics.evaluate",
    "open_source": "visae.datasets.registry",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'visae' has no attribute {name!r}")
