"""TokenLayout: where the patch tokens sit in a ViT's token sequence, and the patch grid they form."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class TokenLayout:
    """Prefix tokens, patch grid and patch size of one backbone at one input resolution.

    The token sequence of a block output is ``prefix_names`` tokens followed by ``grid_h * grid_w``
    patch tokens in row-major order over the grid.
    """

    prefix_names: tuple[str, ...]
    """Names of the tokens before the patches, in order: e.g. ("cls",), ("cls", "dist"), ("cls", "reg0", …),
    ()."""
    grid_h: int
    """Patch rows (16 for a patch-14 model at 224 px, 14 for patch 16)."""
    grid_w: int
    """Patch columns."""
    patch_size: int
    """Side of one square patch in pixels."""

    @property
    def n_prefix(self) -> int:
        """Number of tokens before the patch tokens."""
        return len(self.prefix_names)

    @property
    def n_patches(self) -> int:
        """P = grid_h × grid_w."""
        return self.grid_h * self.grid_w

    @property
    def n_tokens(self) -> int:
        """Sequence length of a block output."""
        return self.n_prefix + self.n_patches

    @property
    def image_size(self) -> tuple[int, int]:
        """Input height and width in pixels."""
        return self.grid_h * self.patch_size, self.grid_w * self.patch_size

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form, as stored in a cache manifest."""
        d = asdict(self)
        d["prefix_names"] = list(self.prefix_names)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenLayout:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(d["prefix_names"]), int(d["grid_h"]), int(d["grid_w"]), int(d["patch_size"]))
