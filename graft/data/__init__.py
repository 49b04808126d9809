"""Where photos come from: reading one image file robustly, and scanning a folder of classes or a
label file (source.py says which a PHOTOS argument is)."""

from graft.data.folder import VAL_SPLIT, Dataset, Sample, scan_class_folders
from graft.data.images import SUPPORTED_EXTENSIONS, probe_image, read_image
from graft.data.source import is_label_file, photo_layout, scan_photos

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
    "VAL_SPLIT",
    "BATCH_SIZE",
]

# photos (or their feature rows) per batch unless asked otherwise: feature extraction, prediction,
# and each step of the head's and fine-tuning's training
BATCH_SIZE = 32
