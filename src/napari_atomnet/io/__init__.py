"""Reading images and writing results: every write is atomic and never silently overwrites."""

from ._atomic import ExportExistsError, atomic_path, write_text_atomic
from .formats import IMAGE_SUFFIXES, describe_formats
from .images import ImageData, ImageReadError, read_image, read_images, write_tiff
from .labels import export_labels, import_labels, list_label_images
from .tables import provenance_path, read_csv, write_csv

__all__ = [
    "IMAGE_SUFFIXES",
    "ExportExistsError",
    "ImageData",
    "ImageReadError",
    "atomic_path",
    "describe_formats",
    "export_labels",
    "import_labels",
    "list_label_images",
    "provenance_path",
    "read_csv",
    "read_image",
    "read_images",
    "write_csv",
    "write_text_atomic",
    "write_tiff",
]
