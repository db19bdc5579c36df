"""``shuffled:<backbone>``: a spatial-null control, the permutation null of Moran's I by construction.

The wrapper runs ``<backbone>`` unchanged, then permutes the patch tokens of every block output within
each image (prefix tokens stay in place). One image gets one permutation, the same at every layer, so
a cache of any layer holds the backbone's own token vectors at randomly reassigned grid positions.

Why it is a null: a per-token SAE encodes the multiset of an image's tokens into the same multiset of
codes whatever their order, so every map (an SAE feature's code, or a raw channel) is a uniformly random
arrangement of its own values. Moran's I of a uniformly permuted map has expectation exactly −1/(P − 1)
(Cliff & Ord 1981), and which maps are evaluable (active patches, variance) does not depend on the order.
M1 and the raw diagnostic on such a cache therefore estimate −1/(P − 1), up to the permutation
standard error; anything above it on the unshuffled backbone is spatial structure, not a by-product of
the token vectors' distribution. (The random-weights control is *not* a spatial null: neighbouring
patches of an image stay similar whatever the weights.)

The permutation of an image is drawn from a generator seeded by ``seed`` and a hash of the image's
preprocessed pixels, so it does not depend on the batch size or on the order images arrive in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image

from visae.backbones.base import Backbone

PREFIX = "shuffled:"
DEFAULT_SEED = 0
CONTROL = ("spatial null: patch positions permuted at random within each image (the permutation null of "
           "Moran's I, expected M1 = −1/(P − 1))")


def patch_permutation(pixels_chw: torch.Tensor, n_patches: int, seed: int = DEFAULT_SEED) -> torch.Tensor:
    """The permutation ``[P]`` (int64, CPU) applied to one image: a function of ``seed`` and its pixels
    only."""
    data = pixels_chw.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    digest = hashlib.blake2b(data, digest_size=8, key=int(seed).to_bytes(8, "little", signed=True)).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
    return torch.randperm(n_patches, generator=generator)


def permute_patches(tokens_btd: torch.Tensor, perms_bp: torch.Tensor, n_prefix: int) -> torch.Tensor:
    """``tokens_btd`` with the patch tokens of image ``b`` reordered as ``patches[perms_bp[b]]``."""
    prefix, patches = tokens_btd[:, :n_prefix], tokens_btd[:, n_prefix:]
    index = perms_bp.to(patches.device)[:, :, None].expand(-1, -1, patches.shape[-1])
    return torch.cat([prefix, patches.gather(1, index)], dim=1)


class ShuffledBackbone(Backbone):
    """``inner`` with its patch tokens permuted within each image (a spatial-null control)."""

    def __init__(self, inner: Backbone, seed: int = DEFAULT_SEED) -> None:
        self.inner = inner
        self.seed = int(seed)
        self.name = f"{PREFIX}{inner.name}"
        self.weights_id = f"{inner.weights_id}+shuffle-seed{self.seed}"
        self.layout = inner.layout
        self.d_model = inner.d_model
        self.n_blocks = inner.n_blocks
        self.embedding_kind = f"{inner.embedding_kind} of {inner.name} (the image embedding is not shuffled)"
        self.device = inner.device
        self.control = CONTROL
        self.description = f"{getattr(inner, 'description', inner.name)}; {CONTROL}"

    @property
    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """The inner backbone's preprocessing."""
        return self.inner.transform

    def preprocessing_spec(self) -> dict[str, Any]:
        """The inner backbone's settings plus the shuffle (part of the cache hash)."""
        return {**self.inner.preprocessing_spec(),
                "shuffle_patches": {"seed": self.seed,
                                    "rule": "per image, blake2b(pixels) seeds randperm(P)"}}

    def permutations(self, pixels_bchw: torch.Tensor) -> torch.Tensor:
        """The permutation of each image of the batch, ``[B, P]``."""
        n_patches = self.layout.n_patches
        return torch.stack([patch_permutation(px, n_patches, self.seed) for px in pixels_bchw])

    def block_outputs(self, pixels_bchw: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """The inner block outputs with each image's patch tokens permuted (one permutation per image)."""
        out = self.inner.block_outputs(pixels_bchw, layers)
        if not out:
            return out
        perms_bp = self.permutations(pixels_bchw)
        return {layer: permute_patches(t, perms_bp, self.layout.n_prefix) for layer, t in out.items()}

    def embed(self, pixels_bchw: torch.Tensor) -> torch.Tensor:
        """The inner backbone's image embedding (pooled, so the shuffle does not apply)."""
        return self.inner.embed(pixels_bchw)

    def patch_mean_embed(self, pixels_bchw: torch.Tensor, layer: int) -> torch.Tensor:
        """The inner backbone's patch mean (a mean over patches is unchanged by their order)."""
        return self.inner.patch_mean_embed(pixels_bchw, layer)

    def patch_mean_kind(self, layer: int) -> str:
        """The inner backbone's patch-mean kind."""
        return f"{self.inner.patch_mean_kind(layer)} of {self.inner.name}"
