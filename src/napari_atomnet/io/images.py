"""Reading images from files, with their pixel size where the file records one."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

#: File endings read by :func:`read_image`.
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".npy")


class ImageReadError(ValueError):
    """A file could not be read as an image; the message says why."""


@dataclass
class ImageData:
    """An image read from a file.

    Attributes
    ----------
    data : ndarray
        The pixel data as stored (2D image or T×Y×X stack).
    pixel_size_nm : float or None
        Pixel size in nanometres when the file records it.
    name : str
        A layer name (the file stem).
    metadata : dict
        Whatever else the file records.
    """

    data: NDArray
    pixel_size_nm: float | None = None
    name: str = "image"
    metadata: dict[str, Any] = field(default_factory=dict)


def read_image(path: str | os.PathLike) -> ImageData:
    """Read a tif, png or npy image.

    Parameters
    ----------
    path : path-like
        File to read.

    Returns
    -------
    ImageData

    Raises
    ------
    ImageReadError
        If the file is missing, of an unsupported type or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"no such file: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            data, pixel_size, meta = _read_tiff(path)
        elif suffix == ".png":
            import imageio.v3 as iio

            data, pixel_size, meta = np.asarray(iio.imread(path)), None, {}
        elif suffix == ".npy":
            data, pixel_size, meta = np.load(path, allow_pickle=False), None, {}
        else:
            raise ImageReadError(
                f"{path.name}: unsupported file type {suffix!r} "
                f"(supported: {', '.join(IMAGE_SUFFIXES)})"
            )
    except ImageReadError:
        raise
    except Exception as err:  # corrupt files raise many kinds of errors
        raise ImageReadError(f"{path.name}: cannot read ({type(err).__name__}: {err})") from err
    return ImageData(data=data, pixel_size_nm=pixel_size, name=path.stem, metadata=meta)


def _read_tiff(path: Path) -> tuple[NDArray, float | None, dict[str, Any]]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        data = tif.asarray()
        meta: dict[str, Any] = {}
        pixel_size = None
        if tif.imagej_metadata:
            meta["imagej"] = {k: v for k, v in tif.imagej_metadata.items() if _jsonable(v)}
        page = tif.pages[0]
        desc = page.description if hasattr(page, "description") else ""
        if desc:
            meta["description"] = desc
        shaped = tif.shaped_metadata[0] if tif.shaped_metadata else {}
        if shaped.get("pixel_size_nm"):
            return data, float(shaped["pixel_size_nm"]), meta
        res = page.tags.get("XResolution")
        unit = (tif.imagej_metadata or {}).get("unit", "")
        if res is not None:
            num, den = res.value
            if num > 0 and den > 0:
                px_per_unit = num / den
                scale = {"nm": 1.0, "µm": 1e3, "um": 1e3, "micron": 1e3, "Å": 0.1, "A": 0.1}
                unit_key = unit.replace("\\u00B5", "µ")
                if unit_key in scale and px_per_unit != 1.0:
                    pixel_size = scale[unit_key] / px_per_unit
    return data, pixel_size, meta


def write_tiff(
    path: str | os.PathLike,
    data: NDArray,
    *,
    pixel_size_nm: float | None = None,
    overwrite: bool = False,
    compress: bool = False,
) -> Path:
    """Write an image as ImageJ-compatible TIFF (atomically), recording the pixel size in nm.

    Parameters
    ----------
    path : path-like
        Destination.
    data : ndarray
        Image or stack.
    pixel_size_nm : float, optional
        Pixel size; stored as resolution with unit "nm" so ImageJ and :func:`read_image` see it.
    overwrite : bool
        Replace an existing file.
    compress : bool
        Deflate (zlib) compression: lossless, much smaller for label images.

    Returns
    -------
    pathlib.Path
    """
    import tifffile

    from ._atomic import atomic_path

    data = np.asarray(data)
    imagej_ok = data.dtype in (np.uint8, np.uint16, np.float32)
    kwargs: dict[str, Any] = {"imagej": imagej_ok}
    if compress:
        kwargs["compression"] = "zlib"
    if pixel_size_nm:
        kwargs["resolution"] = (1.0 / pixel_size_nm, 1.0 / pixel_size_nm)
        # ImageJ reads the unit from its own metadata; other dtypes get it in the JSON description
        kwargs["metadata"] = {"unit": "nm"} if imagej_ok else {"pixel_size_nm": pixel_size_nm}
    with atomic_path(path, overwrite=overwrite) as tmp:
        # tifffile picks the format from the name, so write through an open handle
        with open(tmp, "wb") as fh:
            tifffile.imwrite(fh, data, **kwargs)
    return Path(path)


def _jsonable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)
