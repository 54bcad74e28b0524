"""PACS-connected DICOM node that segments subdural and epidural hematomas on head CT."""
import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
