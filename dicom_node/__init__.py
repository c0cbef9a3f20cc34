"""A DICOM node that turns thick-slice chest CT into thin-slice CT."""

__version__ = "0.1.0"
