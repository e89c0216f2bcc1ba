"""Reading images and writing results: every write is atomic and never silently overwrites."""

from ._atomic import ExportExistsError, atomic_path, write_text_atomic
from .images import IMAGE_SUFFIXES, ImageData, ImageReadError, read_image, write_tiff
from .labels import export_labels, import_labels, list_label_images
from .tables import provenance_path, read_csv, write_csv

__all__ = [
    "IMAGE_SUFFIXES",
    "ExportExistsError",
    "ImageData",
    "ImageReadError",
    "atomic_path",
    "export_labels",
    "import_labels",
    "list_label_images",
    "provenance_path",
    "read_csv",
    "read_image",
    "write_csv",
    "write_text_atomic",
    "write_tiff",
]
