"""Noise schedulers (one file per scheduler) and the pure B-map math they use."""

from .scheduling_bmap_attenuation import BMapAttenuationScheduler, BMapSchedulerOutput

__all__ = ["BMapAttenuationScheduler", "BMapSchedulerOutput"]
