# Remote-code file written by ultrasound-diffusers 0.1.0.
#
# `SemanticUNet2DModel` is defined in the ultrasound-diffusers package, not in this repository. This file only imports
# it, so that plain diffusers can load the pipeline:
#
#     import diffusers
#     pipe = diffusers.DiffusionPipeline.from_pretrained("<this folder or repo id>", trust_remote_code=True)
#
# The package's own loader never runs this file: `ultrasound_diffusers.DiffusionPipeline.from_pretrained(...)`
# needs no trust_remote_code. Install the package with:
#
#     pip install ultrasound-diffusers
try:
    from ultrasound_diffusers.models.unet_semantic_2d import SemanticUNet2DModel
except ImportError as error:  # the package is missing (or too old to have this class)
    raise ImportError(
        "This pipeline needs the `ultrasound-diffusers` package, which defines `SemanticUNet2DModel` "
        "(module `ultrasound_diffusers.models.unet_semantic_2d`): install it with `pip install ultrasound-diffusers` "
        "(or `pip install -e <path to a checkout of ultrasound-diffusers>`), then load again. "
        f"Import error: {error}"
    ) from error

__all__ = ["SemanticUNet2DModel"]
