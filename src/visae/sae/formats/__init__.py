"""Readers for other libraries' SAE checkpoints, one module each, behind one registry.

Every reader produces one of our families, numerically identical at inference, and never unpickles
arbitrary objects (safetensors, or ``torch.load(weights_only=True)``). :func:`detect_format` asks every
format's detector; more than one taker is an error naming them. Our own format (:mod:`visae.sae.checkpoint`)
is tried first.

- ``saelens``: :mod:`visae.sae.formats.saelens`; files: ``sae_weights.safetensors`` + ``cfg.json``
- ``saev``: :mod:`visae.sae.formats.saev`; files: ``sae.pt`` with a JSON header line
- ``dictionary_learning``: :mod:`visae.sae.formats.dictionary_learning`; files: ``ae.pt`` + ``config.json``
- ``sparsify``: :mod:`visae.sae.formats.sparsify`; files: ``sae.safetensors`` + ``cfg.json``
- ``vit_prisma``: :mod:`visae.sae.formats.vit_prisma`; files: ``config.json`` + ``n_images_<N>.pt`` /
  ``weights.pt``
- ``authors``: :mod:`visae.sae.formats.authors`; files: the paper's release: overcomplete ``sae.pt`` +
  ``config.yaml``
- ``reference``: :mod:`visae.sae.formats.reference`; files: ``reference.json``: a checkpoint elsewhere,
  pinned, with file hashes

A plugin adds one with ``CHECKPOINT_FORMATS.register("mine", CheckpointFormat(...))``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from visae.errors import CheckpointError
from visae.registry import Registry

if TYPE_CHECKING:
    from visae.sae.base import SAE


@dataclass(frozen=True)
class CheckpointFormat:
    """One checkpoint layout: the files that mark a folder, a detector and a loader."""

    name: str
    files: tuple[str, ...]
    """Files whose presence makes a folder a checkpoint of this format (hub listings use them)."""
    detect: Callable[[Path], Path | None]
    """``detect(path)``: the file or folder to load when ``path`` holds this format, else None."""
    load: Callable[[Path], SAE]
    """``load(detected)``: the SAE, or CheckpointError naming the file at fault."""
    description: str = ""


CHECKPOINT_FORMATS: Registry[CheckpointFormat] = Registry("checkpoint format", error=CheckpointError)
CHECKPOINT_FORMATS.register_package("visae.sae.formats", [
    ("saelens", "saelens:FORMAT", "sae_weights.safetensors + cfg.json"),
    ("saev", "saev:FORMAT", "sae.pt with a JSON header"),
    ("dictionary_learning", "dictionary_learning:FORMAT", "ae.pt + config.json (dictionary_learning)"),
    ("sparsify", "sparsify:FORMAT", "sae.safetensors + cfg.json (EleutherAI sparsify)"),
    ("vit_prisma", "vit_prisma:FORMAT", "config.json + n_images_<N>.pt or weights.pt (ViT-Prisma)"),
    ("authors", "authors:FORMAT", "the paper's release: overcomplete sae.pt + config.yaml"),
    ("reference", "reference:FORMAT", "reference.json: a checkpoint elsewhere (hub commit or path) + sha256"),
])


def pt_file(path: Path) -> Path | None:
    """``path`` itself when it is a ``.pt`` file, ``path/sae.pt`` for a folder holding one, else None."""
    if path.is_file():
        return path if path.suffix == ".pt" else None
    return path / "sae.pt" if (path / "sae.pt").is_file() else None


def first_byte(path: Path) -> bytes:
    """The first byte of a file (b"" when empty)."""
    with open(path, "rb") as f:
        return f.read(1)


def detect_format(path: Path) -> tuple[CheckpointFormat, Path] | None:
    """The registered format whose detector accepts ``path``, and what it detected; CheckpointError naming
    the candidates when several do."""
    found = [(fmt, hit) for fmt in CHECKPOINT_FORMATS.values() if (hit := fmt.detect(path)) is not None]
    if len(found) > 1:
        raise CheckpointError(f"{path}: ambiguous checkpoint: it matches the formats "
                              f"{', '.join(f'{fmt.name} ({hit.name})' for fmt, hit in found)}; point at one "
                              "checkpoint file, or move the other format's files out of the folder")
    return found[0] if found else None
