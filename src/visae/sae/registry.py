"""The SAE families by name: ``make_sae("batchtopk", d_in=768, expansion=16, k=128)``."""

from __future__ import annotations

from typing import Any

from visae.errors import ConfigError
from visae.sae.batchtopk import BatchTopKSAE
from visae.sae.family import TrainableSAE
from visae.sae.jumprelu import JumpReLUSAE
from visae.sae.relu import ReLUSAE
from visae.sae.topk import TopKSAE

SAE_FAMILIES: dict[str, type[TrainableSAE]] = {
    "batchtopk": BatchTopKSAE,
    "topk": TopKSAE,
    "jumprelu": JumpReLUSAE,
    "relu": ReLUSAE,
}
_ALIASES = {"batch_topk": "batchtopk", "batch-topk": "batchtopk", "top_k": "topk", "top-k": "topk",
            "jump_relu": "jumprelu", "jump-relu": "jumprelu", "standard": "relu", "l1": "relu",
            "relu_l1": "relu"}
_NEEDS_K = {"batchtopk", "topk"}


def canonical_family(family: str) -> str:
    """Resolve aliases (``batch-topk`` → ``batchtopk``); ConfigError for an unknown family."""
    name = _ALIASES.get(family.lower(), family.lower())
    if name not in SAE_FAMILIES:
        raise ConfigError(f"unknown SAE family {family!r}; choose one of {', '.join(SAE_FAMILIES)}")
    return name


def make_sae(family: str, d_in: int, expansion: float | None = None, d_sae: int | None = None,
             k: int | None = None, **hparams: Any) -> TrainableSAE:
    """Build a fresh SAE; ``d_sae`` is given directly or as ``expansion × d_in``.

    ``k`` is the per-token sparsity for TopK/BatchTopK (required) and the target L0 of JumpReLU's
    controller (optional).
    """
    name = canonical_family(family)
    if d_sae is None:
        if expansion is None:
            raise ConfigError(f"{name}: give d_sae or expansion")
        d_sae = round(expansion * d_in)
    elif expansion is not None and round(expansion * d_in) != d_sae:
        raise ConfigError(f"{name}: d_sae={d_sae} disagrees with expansion={expansion} × d_in={d_in}")
    if d_in < 1 or d_sae < 1:
        raise ConfigError(f"{name}: d_in and d_sae must be ≥ 1 (got {d_in}, {d_sae})")
    if name in _NEEDS_K and (k is None or k < 1):
        raise ConfigError(f"{name}: k (active features per token) must be a positive integer, got {k!r}")
    if k is not None and k > d_sae:
        raise ConfigError(f"{name}: k={k} exceeds d_sae={d_sae}")
    return SAE_FAMILIES[name](d_in, d_sae, k, **hparams)
