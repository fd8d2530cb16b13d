"""ultrasound-diffusers: physics-inspired diffusion models for ultrasound imaging, for Hugging Face Diffusers.

Components (imported eagerly, so that diffusers finds them when it loads a saved pipeline):

* :class:`BMapAttenuationScheduler` - the per-pixel B-map (depth attenuation) noise schedule.
* :class:`BMapDPMSolverMultistepScheduler` - DPM-Solver++ (ODE / SDE, orders 1-3) for that schedule.
* :class:`SemanticUNet2DModel` - the Semantic Diffusion Model network (SPADE group norms on label maps).
* :class:`SemanticUltrasoundPipeline`, :class:`UltrasoundPipeline`, :class:`UltrasoundReconstructionPipeline`
  and the auto-loading :class:`DiffusionPipeline`.

Data, evaluation and generation helpers are imported on first use (``ultrasound_diffusers.generate_phantoms``,
``ultrasound_diffusers.evaluate``, ``ultrasound_diffusers.generate_dataset``, ...).
"""

__version__ = "0.1.0"

import importlib as _importlib

from .models import SemanticUNet2DModel, SemanticUNet2DOutput, convert_original_checkpoint  # noqa: E402
from .pipelines import (  # noqa: E402
    DiffusionPipeline,
    SemanticUltrasoundPipeline,
    SemanticUltrasoundPipelineOutput,
    UltrasoundPipeline,
)
from .schedulers import BMapAttenuationScheduler, BMapDPMSolverMultistepScheduler, BMapSchedulerOutput  # noqa: E402

_LAZY = {
    # data
    "generate_phantoms": ".data",
    "phantom_label_maps": ".data",
    "make_phantom": ".data",
    "colorize_labels": ".data",
    "augment_label_map": ".data",
    "NUM_ECHO_CLASSES": ".data",
    "convert_camus": ".data",
    "convert_thyroid": ".data",
    "convert_lung": ".data",
    "convert_dicom": ".data",
    # evaluation
    "evaluate": ".evaluation",
    "load_image_set": ".evaluation",
    "ImageSet": ".evaluation",
    "load_inception": ".evaluation",
    "frechet_distance": ".evaluation",
    "kernel_inception_distance": ".evaluation",
    # generation at scale
    "generate_dataset": ".generation",
    "load_label_source": ".generation",
    # reconstruction
    "UltrasoundReconstructionPipeline": ".pipelines",
    "make_operator": ".operators",
    "MissingScanLines": ".operators",
    "AreaDownsample": ".operators",
    "DepthAttenuation": ".operators",
    "Mask": ".operators",
    "FunctionOperator": ".operators",
    # training losses
    "hybrid_loss": ".losses",
    "variational_bound_terms": ".losses",
    # plots
    "plot_bmaps": ".visualization",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(_importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "__version__",
    "BMapAttenuationScheduler",
    "BMapDPMSolverMultistepScheduler",
    "BMapSchedulerOutput",
    "DiffusionPipeline",
    "SemanticUNet2DModel",
    "SemanticUNet2DOutput",
    "SemanticUltrasoundPipeline",
    "SemanticUltrasoundPipelineOutput",
    "UltrasoundPipeline",
    "convert_original_checkpoint",
    *_LAZY,
]
