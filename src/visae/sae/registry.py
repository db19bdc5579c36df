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


def family_options(family: str) -> list[str]:
    """The hyper-parameters a family's constructor takes (``hparams`` keys), from its and its bases'
    ``__init__`` signatures."""
    import inspect

    names: set[str] = set()
    for cls in SAE_FAMILIES[canonical_family(family)].__mro__:
        init = vars(cls).get("__init__")
        if init is None or cls is object:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind is p.KEYWORD_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD
                                             and p.name not in ("self", "d_in", "d_sae", "k")):
                names.add(p.name)
    return sorted(names)


def check_hparams(family: str, hparams: dict[str, Any]) -> None:
    """ConfigError naming any ``hparams`` key the family's constructor does not take (visae's own families;
    a plugin family reading ``**hparams`` checks its own)."""
    if not SAE_FAMILIES[canonical_family(family)].__module__.startswith("visae."):
        return
    known = family_options(family)
    unknown = sorted(set(hparams) - set(known))
    if unknown:
        raise ConfigError(f"hparams: {', '.join(map(repr, unknown))} is not an option of the "
                          f"{canonical_family(family)} family (options: {', '.join(known) or 'none'})")


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
