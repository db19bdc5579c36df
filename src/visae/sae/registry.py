"""The SAE families by name: ``make_sae("batchtopk", d_in=768, expansion=16, k=128)``.

A plugin adds a family with ``SAE_FAMILIES.register("mine", MySAE)`` (a :class:`TrainableSAE` subclass).
"""

from __future__ import annotations

from typing import Any

from visae.errors import ConfigError
from visae.registry import Registry
from visae.sae.family import TrainableSAE

SAE_FAMILIES: Registry[type[TrainableSAE]] = Registry("SAE family", normalize=str.lower)
SAE_FAMILIES.register_lazy("batchtopk", "visae.sae.batchtopk:BatchTopKSAE",
                           aliases=("batch_topk", "batch-topk"),
                           summary="BatchTopK (Bussmann et al. 2024), inference at a calibrated threshold")
SAE_FAMILIES.register_lazy("topk", "visae.sae.topk:TopKSAE", aliases=("top_k", "top-k"),
                           summary="TopK (Gao et al. 2024): K largest per token")
SAE_FAMILIES.register_lazy("jumprelu", "visae.sae.jumprelu:JumpReLUSAE", aliases=("jump_relu", "jump-relu"),
                           summary="JumpReLU (Rajamanoharan et al. 2024), L0 penalty or target L0")
SAE_FAMILIES.register_lazy("relu", "visae.sae.relu:ReLUSAE", aliases=("standard", "l1", "relu_l1"),
                           summary="ReLU with an L1 penalty (standard SAE)")
SAE_FAMILIES.register_lazy("matryoshka", "visae.sae.matryoshka:MatryoshkaSAE",
                           aliases=("matryoshka_batchtopk", "matryoshka-batchtopk"),
                           summary="Matryoshka BatchTopK (Bussmann et al. 2025): loss summed over nested "
                                   "prefixes, BatchTopK's calibrated threshold")
SAE_FAMILIES.register_lazy("gated", "visae.sae.gated:GatedSAE",
                           summary="Gated (Rajamanoharan et al. 2024): gate and magnitude paths, as SAELens")
SAE_FAMILIES.register_lazy("archetypal", "visae.sae.archetypal:ArchetypalSAE",
                           aliases=("ra-sae", "rasae", "ra_sae", "relaxed_archetypal"),
                           summary="Relaxed archetypal TopK (Fel et al. 2025, overcomplete RA-SAE): atoms in "
                                   "the hull of data centroids")


def canonical_family(family: str) -> str:
    """Resolve aliases (``batch-topk`` → ``batchtopk``); ConfigError for an unknown family."""
    return SAE_FAMILIES.canonical(family)


def make_sae(family: str, d_in: int, expansion: float | None = None, d_sae: int | None = None,
             k: int | None = None, **hparams: Any) -> TrainableSAE:
    """Build a fresh SAE; ``d_sae`` is given directly or as ``expansion × d_in``.

    ``k`` is the per-token sparsity for TopK/BatchTopK/Matryoshka/Archetypal (required) and the target L0
    of JumpReLU's and Gated's controllers (optional).
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
    if k is not None and k > d_sae:
        raise ConfigError(f"{name}: k={k} exceeds d_sae={d_sae}")
    return SAE_FAMILIES[name](d_in, d_sae, k, **hparams)


def family_hparams(family: str) -> dict[str, Any]:
    """The hyper-parameters family ``family`` takes, with their defaults: the named keyword parameters of its
    constructors (``bandwidth``, ``l1_coeff`` …)."""
    import inspect

    out: dict[str, Any] = {}
    for cls in reversed(SAE_FAMILIES[canonical_family(family)].__mro__):
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        for p in list(inspect.signature(init).parameters.values())[1:]:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in ("d_in", "d_sae", "k"):
                out[p.name] = p.default
    return out


def check_hparams(family: str, hparams: dict[str, Any]) -> None:
    """ConfigError naming every key of ``hparams`` that family ``family`` does not take (it would be stored
    and silently ignored). visae's own families only: a plugin family reading ``**hparams`` checks its own."""
    if not SAE_FAMILIES[canonical_family(family)].__module__.startswith("visae."):
        return
    known = family_hparams(family)
    unknown = sorted(set(hparams) - set(known))
    if unknown:
        raise ConfigError(f"hparams: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not a "
                          f"setting of the {canonical_family(family)} family (it takes: "
                          f"{', '.join(sorted(known)) or 'none'})")
