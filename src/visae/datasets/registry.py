"""Open an image source from a spec string.

- ``folder:/path/to/dir``: ImageFolder / ImageNet layout (:mod:`visae.datasets.folder`)
- ``hf:name_or_path[:split]``: Hugging Face ``datasets`` (:mod:`visae.datasets.hf`, extra ``hf``)
- ``fashion-mnist``: Fashion-MNIST IDX files: installed Debian package, else fetched (apt mirror, torchvision)
- ``offline:digits`` / ``offline:faces`` / ``offline:textures`` / ``offline:mnist``: sets inside Python
  packages (:mod:`visae.datasets.offline.packaged`)
- ``texture-mosaic``: offline segmentation set: texture-photo mosaics with exact masks
  (:mod:`visae.datasets.offline.mosaic`)
- ``inat:/root`` / ``cub:/root`` / ``dtd:/root[?fold=N]``: out-of-domain sets for M6, official splits
  (:mod:`visae.datasets.ood`)
- ``ade20k:/root``: ADE20K (ADEChallengeData2016) images with segmentation masks
  (:mod:`visae.datasets.ade20k`)

A bare existing folder path is read as ``folder:PATH``. A plugin adds a kind with :func:`register_source`:
``register_source("mydata", open_mydata)`` makes ``mydata:ARG`` call ``open_mydata(ARG, split)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import overload

from visae.datasets.base import ImageSource
from visae.datasets.subset import take_subset
from visae.errors import DataError
from visae.registry import Registry

SPLITS = ("train", "val", "test", "all")

SourceOpener = Callable[[str, str], ImageSource]
"""``opener(argument, split)``: ``argument`` is what follows ``name:`` in the spec ("" for a bare name)."""

SOURCES: Registry[SourceOpener] = Registry("image source", error=DataError)
"""Spec kind → opener; the summary of each entry is its comma-separated usage patterns."""


@overload
def register_source(name: str, opener: None = None, *, usage: str | Sequence[str] | None = None,
                    aliases: Sequence[str] = (),
                    overwrite: bool = False) -> Callable[[SourceOpener], SourceOpener]: ...


@overload
def register_source(name: str, opener: SourceOpener | str, *, usage: str | Sequence[str] | None = None,
                    aliases: Sequence[str] = (), overwrite: bool = False) -> None: ...


def register_source(name: str, opener: SourceOpener | str | None = None, *,
                    usage: str | Sequence[str] | None = None,
                    aliases: Sequence[str] = (),
                    overwrite: bool = False) -> Callable[[SourceOpener], SourceOpener] | None:
    """Make specs ``name:ARG`` open with ``opener(ARG, split)`` (a callable, or ``"module:attr"`` imported
    on first use); without ``opener``, a decorator. ``usage`` lists the spec patterns shown to users
    (default ``name:PATH``); a pattern without ``:`` (``fashion-mnist``) means the source takes no
    argument."""
    patterns = [usage] if isinstance(usage, str) else list(usage or [f"{name}:PATH"])
    summary = ", ".join(patterns)
    if opener is None:
        return SOURCES.register(name, aliases=aliases, summary=summary, overwrite=overwrite)
    if isinstance(opener, str):
        SOURCES.register_lazy(name, opener, aliases=aliases, summary=summary, overwrite=overwrite)
    else:
        SOURCES.register(name, opener, aliases=aliases, summary=summary, overwrite=overwrite)
    return None


def known_sources() -> list[str]:
    """Spec patterns ``open_source`` accepts."""
    return [pattern for name in SOURCES for pattern in SOURCES.summary(name).split(", ")]


def _takes_argument(name: str) -> bool:
    return all(":" in pattern for pattern in SOURCES.summary(name).split(", "))


def _open_full(spec: str, split: str) -> ImageSource:
    kind, sep, argument = spec.partition(":")
    if sep and argument and kind in SOURCES and _takes_argument(kind):
        return SOURCES[kind](argument, split)
    if not sep and spec in SOURCES and not _takes_argument(spec):
        return SOURCES[spec]("", split)
    if Path(spec).expanduser().is_dir():
        return SOURCES["folder"](spec, split)
    raise DataError(f"image source {spec!r}: unknown spec; use one of {', '.join(known_sources())}")


def _open_fashion_mnist(argument: str, split: str) -> ImageSource:
    from visae.datasets.offline.fashion_mnist import open_fashion_mnist

    return open_fashion_mnist(split)


def _register_defaults() -> None:
    from visae.datasets.offline import OFFLINE_SETS

    register_source("folder", "visae.datasets.folder:open_folder", usage="folder:PATH")
    register_source("hf", "visae.datasets.hf:HFSource", usage="hf:NAME_OR_PATH[:SPLIT]")
    register_source("fashion-mnist", _open_fashion_mnist, usage="fashion-mnist",
                    aliases=("fashion_mnist", "fmnist"))
    register_source("offline", "visae.datasets.offline:open_offline",
                    usage=[f"offline:{n}" for n in OFFLINE_SETS])
    register_source("inat", "visae.datasets.ood:open_inat")
    register_source("cub", "visae.datasets.ood:open_cub")
    register_source("dtd", "visae.datasets.ood:open_dtd_spec", usage="dtd:PATH[?fold=N]")
    register_source("ade20k", "visae.datasets.ade20k:open_ade20k")
    register_source("texture-mosaic", "visae.datasets.offline.mosaic:open_texture_mosaic",
                    usage="texture-mosaic")
    register_source("synth", "visae.synth.study:open_synth_source", usage="synth")  # a synth: backbone's own


_register_defaults()


def open_source(spec: str, split: str = "train", max_images: int | None = None, seed: int = 42,
                stratified: bool = True) -> ImageSource:
    """Open ``spec`` at ``split``; ``max_images`` keeps a seeded (by default class-stratified) subset.

    The subset keeps source order; its spec records the subset so cache hashes tell subsets apart.
    """
    if split not in SPLITS:
        raise DataError(f"split {split!r}: use one of {', '.join(SPLITS)}")
    if max_images is not None and max_images < 1:
        raise DataError(f"max_images must be ≥ 1, got {max_images}")
    return take_subset(_open_full(spec, split), max_images, seed=seed, stratified=stratified)
