"""ultrasound-diffusers: physics-inspired diffusion models for ultrasound imaging, for Hugging Face Diffusers."""

__version__ = "0.1.0"

from .schedulers import BMapAttenuationScheduler, BMapSchedulerOutput  # noqa: E402

__all__ = ["__version__", "BMapAttenuationScheduler", "BMapSchedulerOutput"]
