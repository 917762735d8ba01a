"""Product images: safe decoding, CNN backbones that need no download, batched embedding."""

from recsvc.vision.decode import ImageError, decode_image

# The backbone whose ImageNet weights ship in a package (no download).
DEFAULT_BACKBONE = "efficientnet_lite0"

__all__ = ["DEFAULT_BACKBONE", "ImageError", "decode_image"]
