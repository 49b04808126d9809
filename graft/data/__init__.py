"""Where photos come from: reading one image file robustly, and scanning a folder of classes or a
label file (source.py says which a PHOTOS argument is)."""

from .folder import Dataset, Sample, scan_class_folders
from .images import SUPPORTED_EXTENSIONS, probe_image, read_image
from .source import is_label_file, photo_layout, scan_photos

__all__ = [
    "Dataset",
    "Sample",
    "scan_photos",
    "photo_layout",
    "is_label_file",
    "scan_class_folders",
    "read_image",
    "probe_image",
    "SUPPORTED_EXTENSIONS",
]
