"""File names of a saved pipeline folder and of a Hub repository, in one place (as ``diffusers.utils.constants``
holds ``CONFIG_NAME`` and the weight file names): the loader (``ultrasound_diffusers.pipelines.loading``), the
cards (:mod:`ultrasound_diffusers.hub_utils`) and the Space export (:mod:`ultrasound_diffusers.app`) read them
from here."""

#: The file that names a saved pipeline's class and components.
MODEL_INDEX_NAME = "model_index.json"
#: The card of a Hub repository (model, dataset or Space): its ``README.md``.
CARD_NAME = "README.md"

__all__ = ["CARD_NAME", "MODEL_INDEX_NAME"]
