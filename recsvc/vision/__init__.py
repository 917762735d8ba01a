"""Product images: safe decoding, CNN backbones that need no download, batched embedding."""

from recsvc.vision.decode import ImageError, decode_image

__all__ = ["ImageError", "decode_image"]
