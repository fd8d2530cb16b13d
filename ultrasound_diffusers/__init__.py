"""ultrasound-diffusers: physics-inspired diffusion models for ultrasound imaging, for Hugging Face Diffusers.

Components (imported eagerly, so that diffusers finds them when it loads a saved pipeline):

* :class:`BMapAttenuationScheduler` - the per-pixel B-map (depth attenuation) noise schedule.
* :class:`BMapDPMSolverMultistepScheduler` - DPM-Solver++ (ODE / SDE, orders 1-3) for that schedule.
* :class:`BMapConsistencyScheduler` - few-step (consistency) sampling of models distilled for that schedule.
* :class:`SemanticUNet2DModel` - the Semantic Diffusion Model network (SPADE group norms on label maps).
* :class:`SemanticUltrasoundPipeline`, :class:`UltrasoundPipeline`, :class:`UltrasoundReconstructionPipeline`
  and the auto-loading :class:`DiffusionPipeline`.

Data, evaluation and generation helpers are imported on first use (``ultrasound_diffusers.generate_phantoms``,
``ultrasound_diffusers.evaluate``, ``ultrasound_diffusers.generate_dataset``, ...).
"""

from .version import __version__  # noqa: E402  (one home, readable from every floor)
from .utils.garbage_collection import collector_paused  # noqa: E402

# The components pull in torch, diffusers and (through diffusers) transformers: thousands of modules whose
# objects the cyclic collector would otherwise walk again and again while they load (0.7 s of a 4 s import on
# the reference 2-core machine). It runs again, as before, once they are in.
with collector_paused():
    from .models import SemanticUNet2DModel, SemanticUNet2DOutput, convert_original_checkpoint  # noqa: E402
    from .pipelines import (  # noqa: E402
        DiffusionPipeline,
        SemanticUltrasoundPipeline,
        SemanticUltrasoundPipelineOutput,
        UltrasoundPipeline,
    )
    from .schedulers import (  # noqa: E402
        BMapAttenuationScheduler,
        BMapConsistencyScheduler,
        BMapDPMSolverMultistepScheduler,
        BMapSchedulerOutput,
    )

from .utils.lazy import lazy_module_getattr  # noqa: E402

#: module (relative to this package) -> the names it provides, imported on first use
_LAZY = {
    ".data": (
        "generate_phantoms", "phantom_label_maps", "make_phantom", "colorize_labels", "augment_label_map",
        "NUM_ECHO_CLASSES", "convert_camus", "convert_thyroid", "convert_lung", "convert_dicom",
    ),
    ".evaluation": (
        "evaluate", "load_image_set", "ImageSet", "load_inception", "frechet_distance", "kernel_inception_distance",
    ),
    ".generation": ("generate_dataset",),  # generation at scale
    ".data.label_sources": ("load_label_source",),  # label maps a run reads (files, datasets, phantoms)
    ".pipelines": ("UltrasoundReconstructionPipeline",),
    ".operator_registry": ("make_operator",),  # forward models from their CLI text
    ".operators": (  # forward models of the reconstruction
        "MissingScanLines", "AreaDownsample", "DepthAttenuation", "Mask", "FunctionOperator",
    ),
    ".losses": ("hybrid_loss", "variational_bound_terms"),  # training losses
    ".visualization": ("plot_bmaps",),
}

__getattr__ = lazy_module_getattr(__name__, _LAZY)


__all__ = [
    "__version__",
    "BMapAttenuationScheduler",
    "BMapConsistencyScheduler",
    "BMapDPMSolverMultistepScheduler",
    "BMapSchedulerOutput",
    "DiffusionPipeline",
    "SemanticUNet2DModel",
    "SemanticUNet2DOutput",
    "SemanticUltrasoundPipeline",
    "SemanticUltrasoundPipelineOutput",
    "UltrasoundPipeline",
    "convert_original_checkpoint",
    *(name for names in _LAZY.values() for name in names),
]
