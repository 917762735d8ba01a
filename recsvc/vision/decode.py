"""Decode untrusted image bytes into RGB pictures, or say precisely why not.

Catalogues and uploads hold every kind of bad input: corrupt or truncated files, CMYK and
greyscale JPEGs, PNGs with alpha or palettes, 16-bit images, and decompression bombs (a few KB
that expand to gigapixels). Every one of them either becomes an RGB picture or raises
:class:`ImageError`; nothing else escapes, so one bad image never fails a batch.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow's own bomb guard is a process-wide setting that only warns below twice its value;
# the limit is checked here, per call, from the header, before any pixel is decoded.
Image.MAX_IMAGE_PIXELS = None

DEFAULT_MAX_PIXELS = 40_000_000
_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


class ImageError(ValueError):
    """An image that cannot be used, with the reason (e.g. "truncated or corrupt: ...")."""


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft: int = 0) -> Image.Image:
    """Decode ``data`` into an RGB image.

    Parameters
    ----------
    data : the encoded file (JPEG, PNG, WebP, GIF, BMP or TIFF)
    max_pixels : larger images (width x height, read from the header) are refused unread
    draft : when > 0, let the JPEG decoder scale down by a power of two while keeping both sides
        >= ``draft`` (several times faster for large photos that are resized anyway)

    Transparent images are composited on white (product shots are shown on white pages).
    """
    if not data:
        raise ImageError("empty image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data), formats=_FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    f"{width}x{height} pixels is more than the limit of {max_pixels} "
                    "(decompression bomb guard)"
                )
            if draft and image.format == "JPEG":
                image.draft("RGB", (draft, draft))
            image.load()
            image = ImageOps.exif_transpose(image) or image
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageError("not a JPEG, PNG, WebP, GIF, BMP or TIFF image") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"truncated or corrupt: {exc}") from exc
    if min(image.size) < 1:
        raise ImageError(f"image has no pixels ({image.size[0]}x{image.size[1]})")
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB version of any mode: alpha composited on white; CMYK, greyscale, palette, 16-bit
    converted."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of clipping at 255.
        image = image.point(lambda value: value / 256).convert("L")
    return image.convert("RGB")
