"""Networks (one file per model) and the conversion of original checkpoints."""

from .conversion import (
    CHECKPOINT_SOURCES,
    consistent_head_layouts,
    convert_original_checkpoint,
    convert_original_state_dict,
    infer_config_from_original_state_dict,
    load_original_state_dict,
    original_key_mapping,
    to_original_state_dict,
)
from .unet_semantic_2d import (
    SEMANTIC_UNET_PRESETS,
    SemanticUNet2DModel,
    SemanticUNet2DOutput,
    prepare_segmap,
    timestep_embedding,
)

__all__ = [
    "CHECKPOINT_SOURCES",
    "SEMANTIC_UNET_PRESETS",
    "SemanticUNet2DModel",
    "SemanticUNet2DOutput",
    "consistent_head_layouts",
    "convert_original_checkpoint",
    "convert_original_state_dict",
    "infer_config_from_original_state_dict",
    "load_original_state_dict",
    "original_key_mapping",
    "prepare_segmap",
    "timestep_embedding",
    "to_original_state_dict",
]
