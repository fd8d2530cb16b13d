"""Noise schedulers (one file per scheduler) and the pure B-map math they use."""

from .scheduling_bmap_attenuation import BMapAttenuationScheduler, BMapSchedulerOutput
from .scheduling_bmap_consistency import BMapConsistencyScheduler, BMapConsistencySchedulerOutput
from .scheduling_bmap_dpmsolver_multistep import BMapDPMSolverMultistepScheduler

__all__ = [
    "BMapAttenuationScheduler",
    "BMapConsistencyScheduler",
    "BMapConsistencySchedulerOutput",
    "BMapDPMSolverMultistepScheduler",
    "BMapSchedulerOutput",
]
