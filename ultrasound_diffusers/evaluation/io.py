# Copyright 2026 The ultrasound-diffusers authors. Apache-2.0.
"""Image sets for evaluation: the image-set view of the one input door,
:mod:`ultrasound_diffusers.data.sources.images` (this module names it where the metrics live)."""

from ..data.sources.images import (  # noqa: F401
    DEFAULT_PHANTOM_SIZE,
    IMAGE_EXTENSIONS,
    ImageSet,
    image_to_array,
    label_to_array,
    load_image_set,
    resize_image,
    resize_label,
)

__all__ = ["DEFAULT_PHANTOM_SIZE", "IMAGE_EXTENSIONS", "ImageSet", "image_to_array", "label_to_array",
           "load_image_set", "resize_image", "resize_label"]
