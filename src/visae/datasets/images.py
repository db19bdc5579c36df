"""Decoding image files and converting any PIL mode to 8-bit RGB, with errors that name the file."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from visae.errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                              ".pgm", ".pbm", ".jfif"})


def _scale_to_uint8(arr: np.ndarray, full_scale: float) -> np.ndarray:
    """Linearly map ``0 … full_scale`` to ``0 … 255`` (rounded), not clipping the top bits away."""
    out = np.rint(arr.astype(np.float64) * (255.0 / full_scale))
    return np.clip(out, 0, 255).astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert an image of any mode to 8-bit RGB.

    16-bit and 32-bit integer grayscale is scaled (65535 → 255), not clipped; float images in 0…1 are
    scaled to 0…255; palette, alpha (alpha is dropped, as in torchvision/timm pipelines), CMYK, YCbCr,
    bilevel and grayscale go through Pillow's own conversions.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16"):
        arr = np.asarray(img).astype(np.uint16)
        return Image.fromarray(_scale_to_uint8(arr, 65535.0), mode="L").convert("RGB")
    if mode == "I":
        arr = np.asarray(img)
        full = 65535.0 if arr.size and arr.max() > 255 else 255.0
        return Image.fromarray(_scale_to_uint8(np.clip(arr, 0, None), full), mode="L").convert("RGB")
    if mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        full = 1.0 if arr.size and arr.max() <= 1.0 else 255.0
        return Image.fromarray(_scale_to_uint8(np.clip(arr, 0, None), full), mode="L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        return img.convert("RGBA").convert("RGB")
    if mode == "1":
        return img.convert("L").convert("RGB")
    return img.convert("RGB")


def array_to_rgb(arr: np.ndarray, full_scale: float | None = None) -> Image.Image:
    """An in-memory grayscale ``[H, W]`` or colour ``[H, W, 3]`` array as an RGB PIL image.

    ``full_scale`` is the value that maps to 255 (e.g. 16 for scikit-learn digits, 1.0 for floats);
    None keeps uint8 data as is.
    """
    a = np.asarray(arr)
    if full_scale is not None:
        a = _scale_to_uint8(a, full_scale)
    elif a.dtype != np.uint8:
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        return Image.fromarray(a, mode="L").convert("RGB")
    if a.ndim == 3 and a.shape[2] == 3:
        return Image.fromarray(a, mode="RGB")
    raise DataError(f"expected an image array [H, W] or [H, W, 3], got shape {a.shape}")


def load_image_file(path: Path | str) -> Image.Image:
    """Open, fully decode and convert an image file to RGB; DataError names the file on any failure.

    Empty, corrupt or truncated files and images beyond Pillow's decompression-bomb limit
    (``PIL.Image.MAX_IMAGE_PIXELS``) are errors, not crashes or warnings.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DataError(f"{path}: cannot read image file ({e.strerror or e})") from None
    if size == 0:
        raise DataError(f"{path}: empty image file (0 bytes); delete or replace it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                return to_rgb(img).copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{path}: image too large ({e}); resize it or raise "
                        "PIL.Image.MAX_IMAGE_PIXELS") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise DataError(f"{path}: corrupt or truncated image ({e})") from None
