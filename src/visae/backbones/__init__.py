"""visae.backbones: frozen ViTs with residual-stream taps (the paper's five, any timm ViT, the offline pair).

``load_backbone``, ``known_backbones``, ``register_backbone``, ``evaluator_for``, ``family_of``,
``control_of``, ``register_backbone_wrapper`` and ``paired_evaluator`` are
re-exported lazily from :mod:`visae.backbones.registry`.
"""

from __future__ import annotations

from typing import Any

_REGISTRY_EXPORTS = ("load_backbone", "known_backbones", "register_backbone", "evaluator_for", "family_of",
                     "control_of", "register_backbone_wrapper", "paired_evaluator")
__all__ = list(_REGISTRY_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _REGISTRY_EXPORTS:
        from visae.backbones import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'visae.backbones' has no attribute {name!r}")
