"""``texture-mosaic``: an offline segmentation set with exact masks, built from scikit-image's texture photos.

Each image is a 112 × 112 grayscale mosaic of 2–4 Voronoi regions; every region shows one of the three
texture photos (``brick``, ``grass``, ``gravel``, 512 × 512) at a random offset. The mask gives each
pixel its texture (1 brick, 2 grass, 3 gravel; 0 is never used), so segmentation mIoU on the patch grid has
a known ground truth — the offline stand-in for ADE20K in H1. The image label (for stratified subsets and
class-level metrics) is the texture covering most pixels.

200 mosaics from a fixed seed; ``train`` is the first 160, ``test`` and ``val`` the last 40, ``all`` every
one.
Image ids are ``mosaic/<index>``; masks are served for any id, whatever the split
(:meth:`TextureMosaicSource.load_mask_by_id`, the segmentation task's mask interface).
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from visae.datasets.base import ImageSource
from visae.datasets.images import array_to_rgb
from visae.errors import DataError

TEXTURES = ("brick", "grass", "gravel")
SIZE = 112
N_MOSAICS = 200
N_TRAIN = 160
SEED = 0


@functools.lru_cache(maxsize=1)
def make_mosaics(n: int = N_MOSAICS, size: int = SIZE,
                 seed: int = SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(images [n, size, size] uint8, masks [n, size, size] uint8 in 1…3, offsets [n, 3, 2])``,
    deterministic
    in ``seed``; ``offsets[i, t]`` is the top-left corner of the crop of photo ``t`` that mosaic ``i``
    shows."""
    try:
        from skimage import data
    except ImportError:
        raise DataError("texture-mosaic needs scikit-image; install it with: pip install "
                        "'visae[offline]'") from None
    photos = [np.asarray(getattr(data, name)(), dtype=np.uint8) for name in TEXTURES]
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images = np.zeros((n, size, size), np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    offsets = np.zeros((n, len(TEXTURES), 2), np.int64)
    for i in range(n):
        k = int(rng.integers(2, 5))
        centres = rng.uniform(0, size, (k, 2))
        kinds = rng.permutation(len(TEXTURES))[: min(k, len(TEXTURES))]
        region_texture = np.r_[kinds, rng.integers(0, len(TEXTURES), k - len(kinds))]
        nearest = np.argmin((yy[..., None] - centres[:, 0]) ** 2
                            + (xx[..., None] - centres[:, 1]) ** 2, axis=-1)
        mask = region_texture[nearest]
        for t, photo in enumerate(photos):
            r, c = (int(v) for v in rng.integers(0, photo.shape[0] - size, 2))
            offsets[i, t] = r, c
            images[i][mask == t] = photo[r:r + size, c:c + size][mask == t]
        masks[i] = mask + 1
    return images, masks, offsets


class TextureMosaicSource(ImageSource):
    """One split of the texture mosaics, with per-pixel masks for every mosaic."""

    def __init__(self, split: str = "train") -> None:
        images, masks, _ = make_mosaics()
        ranges = {"train": range(N_TRAIN), "test": range(N_TRAIN, N_MOSAICS),
                  "val": range(N_TRAIN, N_MOSAICS),
                  "all": range(N_MOSAICS)}
        if split not in ranges:
            raise DataError(f"texture-mosaic: unknown split {split!r}; use train, val, test or all")
        self.spec = "texture-mosaic"
        self.split = split
        self.index = np.asarray(ranges[split], dtype=np.int64)
        self._images, self._masks = images, masks
        self.class_names = list(TEXTURES)
        counts = np.stack([(masks[self.index] == t + 1).sum(axis=(1, 2))
                           for t in range(len(TEXTURES))], axis=1)
        self._labels = counts.argmax(axis=1).astype(np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def load(self, index: int) -> Image.Image:
        return array_to_rgb(self._images[self.index[index]], None)

    def label(self, index: int) -> int:
        return int(self._labels[index])

    def image_id(self, index: int) -> str:
        return f"mosaic/{int(self.index[index]):03d}"

    @property
    def labels(self) -> np.ndarray:
        return self._labels.copy()

    def load_mask_by_id(self, image_id: str) -> np.ndarray:
        """The ``[112, 112]`` mask (1 brick, 2 grass, 3 gravel) of any mosaic id."""
        try:
            i = int(image_id.rsplit("/", 1)[1])
            return self._masks[i].copy()
        except (IndexError, ValueError):
            raise DataError(f"texture-mosaic: no mosaic with id {image_id!r} (ids are mosaic/000 … "
                            f"mosaic/{N_MOSAICS - 1:03d})") from None


def open_texture_mosaic(argument: str, split: str) -> ImageSource:
    """The registry opener of ``texture-mosaic``."""
    return TextureMosaicSource(split)
