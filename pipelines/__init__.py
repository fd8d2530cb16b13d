"""Diffusion pipelines of ultrasound-diffusers (installed as ``ultrasound_diffusers.pipelines``)."""
