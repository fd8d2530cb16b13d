# Remote-code file written by ultrasound-diffusers 0.1.0.
#
# `SemanticUNet2DModel` is defined in the ultrasound-diffusers package, not in this repository. This file only imports
# it, so that plain diffusers can load the pipeline:
#
#     import diffusers
#     pipe = diffusers.DiffusionPipeline.from_pretrained("<this folder or repo id>", trust_remote_code=True)
#
# The package's own loader never runs this file: `ultrasound_diffusers.DiffusionPipeline.from_pretrained(...)`
# needs no trust_remote_code. ultrasound-diffusers is not on PyPI: install it from its source folder (a clone
# of the ultrasound-diffusers repository or its unpacked source archive: the folder holding setup.cfg), or from
# the wheel built inside that folder with pip alone:
#
#     pip install ./ultrasound-diffusers    # from the folder that contains the source folder
#     pip wheel --no-deps -w dist .    # or, inside the source folder, build the wheel
#     pip install dist/ultrasound_diffusers-0.1.0-py3-none-any.whl
#
# If the import below fails: ultrasound-diffusers is not on PyPI: install it from its source folder (`pip install ./ultrasound-diffusers`, or `pip install -e .` inside it) or from a wheel built there (`pip wheel --no-deps -w dist .`, then `pip install dist/ultrasound_diffusers-0.1.0-py3-none-any.whl`).
try:
    from ultrasound_diffusers.models.unet_semantic_2d import SemanticUNet2DModel
except ImportError as error:  # the package is missing (or too old to have this class)
    raise ImportError(f"This pipeline needs the `ultrasound-diffusers` package, which defines `SemanticUNet2DModel` (module `ultrasound_diffusers.models.unet_semantic_2d`). ultrasound-diffusers is not on PyPI: install it from its source folder (`pip install ./ultrasound-diffusers`, or `pip install -e .` inside it) or from a wheel built there (`pip wheel --no-deps -w dist .`, then `pip install dist/ultrasound_diffusers-0.1.0-py3-none-any.whl`); then load again. Import error: {error}") from error
