"""Networks (one file per model) and the conversion of original checkpoints."""

from . import conversion
from .conversion import *  # noqa: F401,F403  (the names of conversion.__all__)
from .unet_semantic_2d import (
    SEMANTIC_UNET_PRESETS,
    SemanticUNet2DModel,
    SemanticUNet2DOutput,
    prepare_segmap,
    timestep_embedding,
)

__all__ = sorted(
    [*conversion.__all__, "SEMANTIC_UNET_PRESETS", "SemanticUNet2DModel", "SemanticUNet2DOutput", "prepare_segmap",
     "timestep_embedding"]
)
