# Copyright 2026 The ultrasound-diffusers authors. Apache-2.0.
"""The single door for inputs: every entry point (training, ``generate``, ``evaluate``, ``reconstruct``, the
nnU-Net test cases) opens its images, label maps and pairs through :func:`open_source`, so one text names the same
thing, reads the same split and fails with the same message everywhere.

* :mod:`.spelling`: the spellings a text can have (``phantoms:ANATOMY[:N[:SEED]]``, a ``save_to_disk`` folder, a
  Hub id) and the Hub loader with its offline message.
* :mod:`.resolve`: :func:`open_source` (the kind of a source and its split, :func:`pick_split`: the one rule).
* :mod:`.images`: the image-set view (:func:`load_image_set`, :class:`ImageSet`).

The label-map view is :func:`ultrasound_diffusers.data.label_sources.load_label_source`, the (image, label) pairs
of training :func:`ultrasound_diffusers.data.paired.load_paired_splits`; both open their source here.
"""

from .images import (
    DEFAULT_PHANTOM_SIZE,
    IMAGE_EXTENSIONS,
    ImageSet,
    folder_metadata,
    folder_pairs,
    image_to_array,
    label_to_array,
    load_image_set,
)
from .resolve import NO_SPLITS, SOURCE_KINDS, Source, open_source, pick_split, source_kind
from .spelling import (
    PHANTOMS_PREFIX,
    PHANTOMS_USAGE,
    SAVED_DATASET_FILES,
    PhantomsSpec,
    is_phantoms_spec,
    is_saved_dataset,
    load_hub_dataset,
    looks_like_hub_id,
    parse_phantoms_spec,
)

__all__ = [
    "DEFAULT_PHANTOM_SIZE",
    "IMAGE_EXTENSIONS",
    "ImageSet",
    "folder_metadata",
    "folder_pairs",
    "NO_SPLITS",
    "PHANTOMS_PREFIX",
    "PHANTOMS_USAGE",
    "PhantomsSpec",
    "SAVED_DATASET_FILES",
    "SOURCE_KINDS",
    "Source",
    "image_to_array",
    "is_phantoms_spec",
    "is_saved_dataset",
    "label_to_array",
    "load_hub_dataset",
    "load_image_set",
    "looks_like_hub_id",
    "open_source",
    "parse_phantoms_spec",
    "pick_split",
    "source_kind",
]
