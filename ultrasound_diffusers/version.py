# Copyright 2026 The ultrasound-diffusers authors. Apache-2.0.
"""The package version, in a module that imports nothing (so that any floor of the package may read it)."""

__version__ = "0.1.0"
