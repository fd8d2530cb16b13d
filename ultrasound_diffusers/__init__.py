"""ultrasound-diffusers: physics-inspired diffusion models for ultrasound imaging, for Hugging Face Diffusers."""

__version__ = "0.1.0"

__all__ = ["__version__"]
