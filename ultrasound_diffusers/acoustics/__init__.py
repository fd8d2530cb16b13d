# Copyright 2026 The ultrasound-diffusers authors. Apache-2.0.
"""Acoustics: array probes, a channel-data (I/Q) measurement operator with delay-and-sum as its adjoint, and a
physical simulation path (label map -> scatterers -> channel data -> DAS -> B-mode) with the optional simulator
pymust (``pip install './ultrasound-diffusers[simulation]'``).

Importing this package never needs pymust; only :func:`~ultrasound_diffusers.acoustics.simulation.simulate_rf`
with ``simulator="pymust"`` (and the ``phantoms --simulator pymust`` command) does.
"""

from .beamforming import (
    ChannelDataOperator,
    ChannelOperator,
    complex_to_real,
    envelope_to_image,
    gaussian_pulse,
    image_to_envelope,
    real_to_complex,
    transmit_distances,
    travel_times,
)
from .probes import PROBES, ArrayProbe, diverging_wave_delays, get_probe, plane_wave_delays, to_pymust_param

__all__ = [
    "PROBES",
    "ArrayProbe",
    "ChannelDataOperator",
    "ChannelOperator",
    "complex_to_real",
    "diverging_wave_delays",
    "envelope_to_image",
    "gaussian_pulse",
    "get_probe",
    "image_to_envelope",
    "plane_wave_delays",
    "real_to_complex",
    "to_pymust_param",
    "transmit_distances",
    "travel_times",
]
