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

from . import images, resolve, spelling
from .images import *  # noqa: F401,F403  (the names of each module's __all__)
from .resolve import *  # noqa: F401,F403
from .spelling import *  # noqa: F401,F403

__all__ = [*images.__all__, *resolve.__all__, *spelling.__all__]
