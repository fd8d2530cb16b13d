"""Diffusion pipelines of ultrasound-diffusers (installed as ``ultrasound_diffusers.pipelines``).

* :class:`SemanticUltrasoundPipeline`: label map in, ultrasound image out (SDM with classifier-free guidance).
* :class:`UltrasoundPipeline`: unconditional generation, any (rectangular) image size.
* :class:`UltrasoundReconstructionPipeline`: measurement-guided reconstruction (DPS, data-consistency projection).
* :class:`DiffusionPipeline`: their base class, and an auto class whose ``from_pretrained`` returns the
  pipeline that a folder's or repository's model_index.json names (ours or diffusers').
* :mod:`.loading`: the loader behind ``from_pretrained`` (model_index.json, class resolution, strict component
  loading) and the remote-code files written for ``trust_remote_code=True`` users of plain diffusers.

Model cards, dataset cards and uploads are not pipelines: they live one floor down, in
:mod:`ultrasound_diffusers.hub_utils` (``DiffusionPipeline.push_to_hub`` uses it).
"""

from .pipeline_semantic_ultrasound import SemanticUltrasoundPipeline, SemanticUltrasoundPipelineOutput
from .pipeline_ultrasound import UltrasoundPipeline
from .pipeline_ultrasound_reconstruction import UltrasoundReconstructionPipeline, UltrasoundReconstructionPipelineOutput
from .pipeline_utils import DiffusionPipeline

__all__ = [
    "DiffusionPipeline",
    "SemanticUltrasoundPipeline",
    "SemanticUltrasoundPipelineOutput",
    "UltrasoundPipeline",
    "UltrasoundReconstructionPipeline",
    "UltrasoundReconstructionPipelineOutput",
]
