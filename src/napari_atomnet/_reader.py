"""napari reader: microscope files (dm3, dm4, emd, ser/emi, mrc, hspy/hdf5) and tif/png/npy.

The same loader as the CLI and the batch tools (:func:`napari_atomnet.io.images.read_images`):
one image layer per image signal (e.g. HAADF and DF4 of one Velox EMD file), ``scale`` = the
pixel size in nm on the last two axes (1 on a leading frame axis), units ``nm`` when calibrated,
axis labels ``t, y, x`` / ``y, x``, and the file's metadata in ``layer.metadata``.  Stacks stay
lazy (dask): napari reads the frame it shows.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .io.images import IMAGE_SUFFIXES, ImageData, read_images

LayerData = tuple[Any, dict[str, Any], str]

#: Filename patterns for the manifest's reader contribution.
FILENAME_PATTERNS = [f"*{s}" for s in IMAGE_SUFFIXES]


def get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """Return a reader for ``path`` if it is a file type napari-atomnet reads, else None.

    Parameters
    ----------
    path : str or list of str
        A file, or several (each is read; all must be of a supported type).

    Returns
    -------
    callable or None
        ``reader(path) -> list of (data, kwargs, "image")``.
    """
    paths = [path] if isinstance(path, str | Path) else list(path)
    if not paths or any(Path(p).suffix.lower() not in IMAGE_SUFFIXES for p in paths):
        return None
    return read_layers


def read_layers(path: str | list[str]) -> list[LayerData]:
    """Read a file (or files) into napari layer data tuples, one image layer per image.

    Parameters
    ----------
    path : str or list of str
        File(s) to read.

    Returns
    -------
    list of tuple
        ``(data, {"name", "scale", "units", "axis_labels", "metadata"}, "image")``.

    Raises
    ------
    napari_atomnet.io.ImageReadError
        With a one-line reason when a file is corrupt or holds no image.
    """
    paths = [path] if isinstance(path, str | Path) else list(path)
    layers = []
    for p in paths:
        layers.extend(image_layer_data(image) for image in read_images(p, lazy=True))
    return layers


def image_layer_data(image: ImageData) -> LayerData:
    """Turn one :class:`~napari_atomnet.io.images.ImageData` into an image layer data tuple."""
    data = image.data
    ndim = data.ndim
    rgb = ndim == 3 and data.shape[-1] in (3, 4) and image.metadata.get("source") is None
    spatial = 2
    leading = ndim - spatial - (1 if rgb else 0)
    px = image.pixel_size_nm
    kwargs: dict[str, Any] = {
        "name": image.name,
        "metadata": {**image.metadata, "pixel_size_nm": px},
    }
    if rgb:
        kwargs["rgb"] = True
    if px:
        kwargs["scale"] = (1.0,) * leading + (px, px)
        kwargs["units"] = ("pixel",) * leading + ("nm", "nm")
    labels = ("t", "y", "x") if leading == 1 else ("y", "x") if leading == 0 else None
    if labels is not None:
        kwargs["axis_labels"] = labels
    return data, kwargs, "image"
