"""The one image reader: any file PIL can open -> an upright 8-bit RGB image, or an error naming the file.

Training, TAD pairs, evaluation, the low-quality evaluation, the ranking strips and the
start-up image check (`rlq.data.unreadable_images`) all read through `load_image`, so a
file that passes the check is read the same way when it trains. It lives here, with
PIL and numpy only, so that `rlq.data` can use it without importing torch.

What each mode reads as (`to_rgb`):

- ``RGB``, ``L``, ``1`` (0 -> 0, 1 -> 255), ``CMYK`` (R = (255 - C)(255 - K) / 255,
  Pillow's formula; embedded ICC profiles are not applied; Adobe-inverted CMYK JPEGs
  are un-inverted by Pillow's decoder), ``YCbCr`` (JPEG's full-range BT.601), ``HSV``:
  Pillow's own conversion to RGB.
- ``LAB``: through littleCMS (Pillow's ``ImageCms``), CIE L*a*b* (D50) to sRGB; Pillow's
  plain ``convert`` copies the channels instead.
- 16-bit grayscale (``I;16``, ``I;16B``, ``I;16L``, and ``I`` from a 16-bit PNG or a
  16-bit TIFF): the high byte, v >> 8 (32768 -> 128, 65535 -> 255). Pillow decodes
  16-bit colour PNGs to 8 bits the same way, so a 16-bit picture reads the same whether
  it is stored as gray or as colour; Pillow's ``convert`` would clip at 255 instead.
- Other ``I`` (32-bit integers, e.g. from TIFF): the high byte of the depth the file
  stores (TIFF's BitsPerSample), or, when it does not say, of the smallest of 8, 16 or
  32 bits that holds the image's largest value; negatives read 0.
- ``F`` (float): values in 0..1 when the largest finite value is at most 1, else in
  0..255; scaled to 0..255, rounded and clipped; NaN reads 0.
- Transparency (``RGBA``, ``LA``, ``PA``, ``La``, ``RGBa``, and ``P``/``L``/``RGB`` with
  a ``transparency`` entry): composited over mid-grey (128, 128, 128). A transparent
  pixel's stored colour is arbitrary; mid-grey is the same for every mode with alpha and
  sits near the ImageNet mean, so after normalisation it is close to zero, the
  network's "nothing here", rather than a dark shape as black would be. (A transparency
  key on a 16-bit grayscale PNG is not applied: no dataset we know stores one.)

EXIF orientation is applied first (`PIL.ImageOps.exif_transpose`), so photographs
from phones and cameras come out upright. Multi-frame files give their first frame.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageCms, ImageOps

BACKGROUND = (128, 128, 128)  # what transparent pixels are composited over (see the module docstring)

_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
_HIGH_DEPTH_MODES = ("I", "F")  # plus every "I;16*" mode


class ImageReadError(RuntimeError):
    """A file cannot be read as an image; the message names the file, `reason` says why."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(
            f"cannot load image {os.fspath(path)!r}: expected a readable image file convertible to RGB ({reason})"
        )
        self.reason = reason


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open an image file as upright 8-bit RGB (see the module docstring for each mode), or raise `ImageReadError`."""
    try:
        with Image.open(path) as img:
            return upright_rgb(img)  # the transpose and conversion force the decode
    except (OSError, ValueError, SyntaxError, TypeError, Image.DecompressionBombError) as err:
        # OSError includes FileNotFoundError, PIL's UnidentifiedImageError and truncated files;
        # ValueError / SyntaxError / TypeError come from broken headers and unsupported conversions.
        raise ImageReadError(path, f"{type(err).__name__}: {err}") from err


def upright_rgb(img: Image.Image) -> Image.Image:
    """An opened image (from a file or made in memory) as `load_image` reads it: EXIF orientation applied, then `to_rgb`."""
    bits = stored_bit_depth(img)  # read before the transpose, whose copy loses the file's format and tags
    return to_rgb(ImageOps.exif_transpose(img), bits)


def to_rgb(img: Image.Image, bits: int | None = None) -> Image.Image:
    """An 8-bit RGB copy of a PIL image of any mode (values as the module docstring lists).

    `bits` is the integer bit depth the file stores (`stored_bit_depth`), if it says.
    """
    if img.mode == "LAB":
        return _lab_to_rgb(img)
    if img.mode.startswith("I;16") or img.mode in _HIGH_DEPTH_MODES:
        return Image.fromarray(high_depth_to_8bit(img, bits)).convert("RGB")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        return over_background(img.convert("RGBA"))
    return img.convert("RGB")


def over_background(rgba: Image.Image) -> Image.Image:
    """RGBA -> RGB composited over `BACKGROUND`, rounded to the nearest level."""
    pixels = np.asarray(rgba, dtype=np.float64)
    alpha = pixels[..., 3:] / 255
    rgb = pixels[..., :3] * alpha + np.asarray(BACKGROUND, dtype=np.float64) * (1 - alpha)
    return Image.fromarray(np.rint(rgb).astype(np.uint8), "RGB")


def high_depth_to_8bit(img: Image.Image, bits: int | None = None) -> np.ndarray:
    """[H, W] uint8 of a 16-bit, 32-bit integer or float single-channel image (rules in the module docstring)."""
    values = np.asarray(img)
    if img.mode == "F":
        return _float_to_8bit(values.astype(np.float64))
    values = values.astype(np.int64).clip(0, None)
    if img.mode.startswith("I;16"):
        bits = 16
    elif bits is None:  # nothing in the file: the smallest depth that holds the largest value
        largest = int(values.max()) if values.size else 0
        bits = next(depth for depth in (8, 16, 32) if largest < 2**depth)
    return (values >> (bits - 8)).clip(0, 255).astype(np.uint8)


def stored_bit_depth(img: Image.Image) -> int | None:
    """Bits per sample an opened file says it stores, for integer images: 16 for a PNG's "I" (PNG has no
    32-bit samples), TIFF's BitsPerSample; None when the file does not say."""
    if img.mode != "I":
        return None
    if img.format == "PNG":
        return 16
    stored = getattr(img, "tag_v2", {}).get(258)  # TIFF BitsPerSample
    bits = stored[0] if isinstance(stored, tuple) and stored else stored
    return int(bits) if bits in (8, 16, 32) else None


def _float_to_8bit(values: np.ndarray) -> np.ndarray:
    finite = values[np.isfinite(values)]
    scale = 255.0 if finite.size == 0 or finite.max() <= 1 else 1.0
    return np.rint(np.nan_to_num(values * scale, nan=0.0, posinf=255.0, neginf=0.0)).clip(0, 255).astype(np.uint8)


_LAB_TO_SRGB: ImageCms.ImageCmsTransform | None = None


def _lab_to_rgb(img: Image.Image) -> Image.Image:
    global _LAB_TO_SRGB
    if _LAB_TO_SRGB is None:  # built once per process: building a transform costs more than applying it
        _LAB_TO_SRGB = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
    return ImageCms.applyTransform(img, _LAB_TO_SRGB)
