"""Open an image source from a spec string.

| spec | source |
|---|---|
| ``folder:/path/to/dir`` | ImageFolder / ImageNet layout (:mod:`visae.datasets.folder`) |
| ``hf:name_or_path[:split]`` | Hugging Face ``datasets`` (:mod:`visae.datasets.hf`, extra ``hf``) |
| ``fashion-mnist`` | Fashion-MNIST IDX files: installed Debian package, else fetched (apt mirror, torchvision) |
| ``offline:digits`` / ``offline:faces`` / ``offline:textures`` / ``offline:mnist`` | sets inside Python packages (:mod:`visae.datasets.offline`) |
| ``inat:/root`` / ``cub:/root`` / ``dtd:/root[?fold=N]`` | out-of-domain sets for M6, official splits (:mod:`visae.datasets.ood`) |
| ``ade20k:/root`` | ADE20K (ADEChallengeData2016) images with segmentation masks (:mod:`visae.datasets.ade20k`) |

A bare existing folder path is read as ``folder:PATH``.
"""

from __future__ import annotations

from pathlib import Path

from visae.datasets.base import ImageSource
from visae.datasets.subset import take_subset
from visae.errors import DataError

SPLITS = ("train", "val", "test", "all")


def known_sources() -> list[str]:
    """Spec patterns ``open_source`` accepts."""
    from visae.datasets.offline import OFFLINE_SETS

    return ["folder:PATH", "hf:NAME_OR_PATH[:SPLIT]", "fashion-mnist", *(f"offline:{n}" for n in OFFLINE_SETS),
            "inat:PATH", "cub:PATH", "dtd:PATH[?fold=N]", "ade20k:PATH"]


def _open_full(spec: str, split: str) -> ImageSource:
    kind, _, body = spec.partition(":")
    if kind == "folder" and body:
        from visae.datasets.folder import FolderSource

        return FolderSource(body, split, spec=spec)
    if kind == "hf" and body:
        from visae.datasets.hf import HFSource

        return HFSource(body, split)
    if spec in ("fashion-mnist", "fashion_mnist", "fmnist"):
        from visae.datasets.fashion_mnist import open_fashion_mnist

        return open_fashion_mnist(split)
    if kind == "offline" and body:
        from visae.datasets.offline import open_offline

        return open_offline(body, split)
    if kind in ("inat", "cub", "dtd") and body:
        from visae.datasets.ood import open_ood

        return open_ood(kind, body, split)
    if kind == "ade20k" and body:
        from visae.datasets.ade20k import open_ade20k

        return open_ade20k(body, split)
    if Path(spec).expanduser().is_dir():
        from visae.datasets.folder import FolderSource

        return FolderSource(spec, split, spec=f"folder:{spec}")
    raise DataError(f"image source {spec!r}: unknown spec; use one of {', '.join(known_sources())}")


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
