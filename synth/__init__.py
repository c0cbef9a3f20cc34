"""Thick-to-thin CT synthesis: float32 HU arrays in, float32 HU arrays out.

This package never imports a DICOM library; `dicom_node` depends on it, never the reverse.
"""

__version__ = "0.1.0"
