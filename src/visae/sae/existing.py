"""Existing SAE checkpoints that a study evaluates instead of training: hub repos with their subfolders,
local folders, other libraries' formats; which backbone each belongs to, and a check that it matches.

A study SAE block names them as a list of :class:`CheckpointSpec`, or ``release`` for the authors' 60::

    checkpoints:
      - {backbone: clip-b16, repo: visaebench/clip-vitb16-saes, subfolders: [batchtopk_16x_k128]}
      - {backbone: dinov2-b14, path: runs/dinov2-grid}            # every SAE folder inside
      - {backbone: clip-b16, ref: "me/saes:topk_8x_k64@v1"}        # one reference, as on the CLI
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import Field, model_validator

from visae.config import FrozenConfig
from visae.errors import CheckpointError, ConfigError
from visae.sae.hub import (
    RELEASE_CONFIGS,
    RELEASE_REPOS,
    SAERef,
    configurations,
    list_configurations,
    parse_sae_ref,
    release_backbone,
)


class CheckpointSpec(FrozenConfig):
    """Existing checkpoints for one backbone: a hub ``repo``, a local ``path`` or one ``ref``."""

    backbone: str = Field(description="backbone the SAEs were trained on (a study backbone name)")
    repo: str | None = Field(None, description="Hugging Face repo id, e.g. visaebench/clip-vitb16-saes")
    path: str | None = Field(None,
                             description="local folder holding one SAE, or one SAE folder per configuration")
    ref: str | None = Field(None,
                            description="one reference as on the CLI: REPO[:SUBFOLDER][@REVISION] or a path")
    revision: str | None = Field(None, description="hub branch, tag or commit (default: main)")
    subfolders: list[str] | None = Field(
        None, description="configurations to use (None: all; the authors' repos: their 12 configurations)")
    layer: int | None = Field(None, ge=0, description="layer the SAEs read (None: the study's main layer)")
    family: str | None = Field(None,
                               description="SAE family, when neither the folder name nor its config says")
    expansion: int | None = Field(None, ge=1, description="d_sae / d_model, when the name does not say")
    k: int | None = Field(None, ge=1, description="K (target L0), when the name does not say")

    @model_validator(mode="after")
    def _one_location(self) -> CheckpointSpec:
        given = [k for k in ("repo", "path", "ref") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of repo, path, ref (got {', '.join(given) or 'none'})")
        if self.ref and self.subfolders is not None:
            raise ValueError("'ref' names one checkpoint; use 'repo' or 'path' with 'subfolders' for several")
        return self


def release_specs(backbones: list[str] | None = None, revision: str | None = None) -> list[CheckpointSpec]:
    """The authors' release: every configuration of each backbone's repo (:data:`RELEASE_REPOS`)."""
    names = backbones if backbones is not None else list(RELEASE_REPOS)
    unknown = [b for b in names if b not in RELEASE_REPOS]
    if unknown:
        raise ConfigError(f"the authors' release has no SAEs for {', '.join(unknown)}; it covers "
                          f"{', '.join(RELEASE_REPOS)}")
    return [CheckpointSpec(backbone=b, repo=RELEASE_REPOS[b], revision=revision) for b in names]


@dataclass(frozen=True)
class ExistingSAE:
    """One checkpoint to evaluate: a name for results, the backbone and layer, and its reference."""

    name: str
    backbone: str
    layer: int | None
    ref: str
    family: str | None = None
    expansion: int | None = None
    k: int | None = None

    @property
    def parsed(self) -> SAERef:
        """The reference, parsed."""
        return parse_sae_ref(self.ref)


def _subfolders(spec: CheckpointSpec) -> list[str]:
    if spec.subfolders is not None:
        return list(spec.subfolders)
    if spec.repo:
        if spec.repo in RELEASE_REPOS.values():
            return list(RELEASE_CONFIGS)  # known without asking the hub: dry runs stay offline
        return list_configurations(spec.repo, spec.revision)
    root = Path(str(spec.path))
    if root.is_file():
        return ["."]
    if not root.is_dir():
        raise CheckpointError(f"{root}: no such file or folder (checkpoints.path)")
    files = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]
    found = configurations(files)
    if not found:
        raise CheckpointError(f"{root}: no SAE checkpoint in it or its subfolders")
    return found


def expand(spec: CheckpointSpec) -> list[ExistingSAE]:
    """The checkpoints one spec names, in order; names are the configurations (the folder's name for '.')."""
    if spec.ref:
        r = parse_sae_ref(spec.ref, revision=spec.revision)
        name = r.subfolder or Path(r.target).name
        return [ExistingSAE(name, spec.backbone, spec.layer, str(r) if r.hub else spec.ref, spec.family,
                            spec.expansion, spec.k)]
    out = []
    for sub in _subfolders(spec):
        if spec.repo:
            ref = str(SAERef(spec.repo, None if sub == "." else sub, spec.revision, hub=True))
            name = sub if sub != "." else spec.repo.rsplit("/", 1)[-1]
        else:
            root = Path(str(spec.path))
            ref, name = str(root if sub == "." else root / sub), (root.name if sub == "." else sub)
        out.append(ExistingSAE(name, spec.backbone, spec.layer, ref, spec.family, spec.expansion, spec.k))
    return out


_CONFIG_NAME = re.compile(r"(?P<family>[a-z]+)_(?P<expansion>\d+)x_k(?P<k>\d+)")


def describe(sae: ExistingSAE) -> tuple[str, int, int]:
    """``(family, expansion, k)`` of an existing checkpoint for the results table: the spec's settings, the
    configuration name (``batchtopk_16x_k128``), or a local visae config; ConfigError when none says."""
    m = _CONFIG_NAME.fullmatch(sae.name)
    family = sae.family or (m["family"] if m else None)
    expansion = sae.expansion or (int(m["expansion"]) if m else None)
    k = sae.k or (int(m["k"]) if m else None)
    ref = sae.parsed
    cfg_path = Path(ref.target) / (ref.subfolder or "") / "config.yaml"
    if None in (family, expansion, k) and not ref.hub and cfg_path.is_file():
        try:
            cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            cfg = {}
        if isinstance(cfg, dict):
            family = family or cfg.get("family")
            expansion = expansion or (round(float(cfg["expansion"])) if cfg.get("expansion") else None)
            k = k or cfg.get("k")
    if family is None or expansion is None or k is None:
        raise ConfigError(f"checkpoint {sae.ref}: cannot tell its family, expansion and K (its name is not "
                          "like batchtopk_16x_k128); set family, expansion and k in its checkpoints entry")
    return str(family), int(expansion), int(k)


def _canonical(name: str) -> str:
    from visae.backbones.registry import backbone_entry

    entry = backbone_entry(name)
    return entry.name if entry is not None else name


def checkpoint_backbone(path: Path, ref: SAERef | None = None) -> str | None:
    """The backbone a checkpoint says it was trained on: our config's provenance (or its training cache's
    manifest), the authors' repo it came from; None when the files do not tell."""
    if ref is not None and ref.hub and release_backbone(ref.target):
        return release_backbone(ref.target)
    cfg_path = path / "config.yaml" if path.is_dir() else path.with_name("config.yaml")
    try:
        cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else None
    except (OSError, yaml.YAMLError):
        cfg = None
    prov = cfg.get("provenance") if isinstance(cfg, dict) else None
    if not isinstance(prov, dict):
        return None
    if prov.get("backbone"):
        return str(prov["backbone"])
    conv = prov.get("converted_from")
    if isinstance(conv, dict) and conv.get("repo") and release_backbone(str(conv["repo"])):
        return release_backbone(str(conv["repo"]))
    cache = prov.get("cache")
    manifest = Path(str(cache)) / "manifest.json" if isinstance(cache, str) else None
    if manifest is not None and manifest.is_file():
        try:
            return str(json.loads(manifest.read_text(encoding="utf-8")).get("backbone")) or None
        except (OSError, ValueError):
            return None
    return None


def check_backbone(sae: ExistingSAE, path: Path, where: str = "") -> str | None:
    """Refuse a checkpoint whose recorded backbone differs from the block's; return the recorded one."""
    found = checkpoint_backbone(path, sae.parsed)
    if found is not None and _canonical(found) != _canonical(sae.backbone):
        at = f"{where}: " if where else ""
        raise ConfigError(f"{at}checkpoint {sae.ref} was trained on backbone {found!r}, but the block gives "
                          f"it backbone {sae.backbone!r}; list it under backbone {found!r} or pick another "
                          "checkpoint")
    return found


def precheck_backbone(sae: ExistingSAE, where: str = "") -> str | None:
    """:func:`check_backbone` where it needs no download: local checkpoints and the authors' repos (their
    backbone is in the repo name). Other hub checkpoints are checked when their files are fetched."""
    ref = sae.parsed
    if ref.hub:
        return check_backbone(sae, Path(), where) if release_backbone(ref.target) else None
    return check_backbone(sae, Path(ref.target) / (ref.subfolder or ""), where)


__all__ = ["CheckpointSpec", "ExistingSAE", "check_backbone", "checkpoint_backbone", "describe", "expand",
           "precheck_backbone", "release_specs"]
