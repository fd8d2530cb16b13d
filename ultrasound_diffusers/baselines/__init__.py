# Copyright 2026 The ultrasound-diffusers authors. Apache-2.0.
"""Baselines that the diffusion reconstruction is measured against (issue 29): a supervised Fourier neural operator
from lung RF data to the lung map, in the manner of LUNA (Wang, Pinton, Anandkumar et al., arXiv 2501.01157)."""

from .supervised import LungFNO, backprojection_inputs, train_lung_fno

__all__ = ["LungFNO", "backprojection_inputs", "train_lung_fno"]
