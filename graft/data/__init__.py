"""Where photos come from: reading one image file robustly, and scanning a folder of classes."""

from .folder import Dataset, Sample, scan_class_folders, scan_photos
from .images import SUPPORTED_EXTENSIONS, probe_image, read_image

__all__ = [
    "Dataset",
    "Sample",
    "scan_photos",
    "scan_class_folders",
    "read_image",
    "probe_image",
    "SUPPORTED_EXTENSIONS",
]
