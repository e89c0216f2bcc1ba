"""Reading images from files, with their pixel size where the file records one."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

# the file types (one table, :mod:`napari_atomnet.io.formats`): plain ones read here with
# tifffile / imageio / numpy, microscope ones through rosettasciio (:mod:`.microscopy`)
from .formats import IMAGE_SUFFIXES, MICROSCOPY_SUFFIXES, PLAIN_SUFFIXES, describe_formats

__all__ = [
    "IMAGE_SUFFIXES",
    "MICROSCOPY_SUFFIXES",
    "PLAIN_SUFFIXES",
    "ImageData",
    "ImageReadError",
    "describe_formats",
    "read_image",
    "read_images",
    "write_tiff",
]

#: TIFF stacks at least this large (bytes) are read lazily, frame by frame.
LAZY_TIFF_BYTES = 64 * 2**20


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


def read_images(
    path: str | os.PathLike, *, lazy: bool = True, materialize: bool = True
) -> list[ImageData]:
    """Read every 2D image and image stack in a file.

    Plain files (tif, png, npy) hold one image; microscope files (dm3, dm4, emd, ser/emi, mrc,
    hspy/hdf5; read through rosettasciio by :func:`napari_atomnet.io.microscopy.read_microscopy`)
    may hold several, e.g. HAADF and other detectors in one EMD.  This is the one loader behind
    the CLI, the batch tools and the napari reader.

    Parameters
    ----------
    path : path-like
        File to read.
    lazy : bool
        Keep stacks (T×Y×X) as dask arrays, read a frame at a time when used (microscope files,
        and TIFF stacks of at least :data:`LAZY_TIFF_BYTES`); 2D images are always in memory.
    materialize : bool
        Microscope files: read stacks stored as a single chunk into memory (see
        :func:`~napari_atomnet.io.microscopy.read_microscopy`); False keeps every stack lazy,
        for a quick look at shapes and calibration.

    Returns
    -------
    list of ImageData
        At least one.  The pixel size is in nm, or None when the file has no real-space
        calibration (``metadata["calibration"]["status"]`` says why for microscope files).

    Raises
    ------
    ImageReadError
        If the file is missing, of an unsupported type, corrupt, or holds no image.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix in MICROSCOPY_SUFFIXES:
        from .microscopy import read_microscopy

        return read_microscopy(path, lazy=lazy, materialize=materialize)
    try:
        if suffix in (".tif", ".tiff"):
            data, pixel_size, meta = _read_tiff(path, lazy=lazy)
        elif suffix == ".png":
            import imageio.v3 as iio

            data, pixel_size, meta = np.asarray(iio.imread(path)), None, {}
        elif suffix == ".npy":
            data, pixel_size, meta = np.load(path, allow_pickle=False), None, {}
        else:
            raise ImageReadError(
                f"{path.name}: unsupported file type {suffix!r} (supported: {describe_formats()})"
            )
    except ImageReadError:
        raise
    except Exception as err:  # corrupt files raise many kinds of errors
        raise ImageReadError(f"{path.name}: cannot read ({type(err).__name__}: {err})") from err
    return [ImageData(data=data, pixel_size_nm=pixel_size, name=path.stem, metadata=meta)]


def read_image(
    path: str | os.PathLike, *, lazy: bool = True, materialize: bool = True
) -> ImageData:
    """Read the image of a file (the first image signal of a multi-signal microscope file).

    Parameters
    ----------
    path : path-like
        A tif, png, npy, dm3, dm4, emd, ser/emi, mrc, hspy or hdf5 file.
    lazy, materialize : bool
        See :func:`read_images`.

    Returns
    -------
    ImageData
        When the file holds several images, the first; ``metadata["source"]["n_images"]`` says
        how many there are and ``metadata["note"]`` says which was taken (use
        :func:`read_images` for all of them).

    Raises
    ------
    ImageReadError
        If the file is missing, of an unsupported type, corrupt, or holds no image.
    """
    images = read_images(path, lazy=lazy, materialize=materialize)
    first = images[0]
    if len(images) > 1:
        titles = ", ".join(
            repr(im.metadata.get("source", {}).get("title", im.name)) for im in images
        )
        first.metadata["note"] = (
            f"the file holds {len(images)} images ({titles}); this is the first "
            "(read them all with napari_atomnet.io.read_images)"
        )
    return first


def _read_tiff(path: Path, *, lazy: bool = False) -> tuple[Any, float | None, dict[str, Any]]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        stack = len(series.shape) == 3 and series.shape[-1] not in (3, 4)
        nbytes = int(np.prod(series.shape)) * np.dtype(series.dtype).itemsize
        if lazy and stack and nbytes >= LAZY_TIFF_BYTES:
            data = _TiffFrames(path, tuple(series.shape), np.dtype(series.dtype)).as_dask()
        else:
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


class _TiffFrames:
    """Array-like view of a TIFF stack that reads only the frames asked for (for dask)."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path = str(path)
        self.shape = shape
        self.dtype = dtype
        self.ndim = len(shape)

    def __getitem__(self, key: Any) -> NDArray:
        import tifffile

        if not isinstance(key, tuple):
            key = (key,)
        first, rest = key[0], key[1:]
        frames = range(self.shape[0])[first] if isinstance(first, slice) else [int(first)]
        with tifffile.TiffFile(self.path) as tif:
            data = np.stack([tif.asarray(key=int(i), series=0) for i in frames])
        out = data[(slice(None), *rest)]
        return out if isinstance(first, slice) else out[0]

    def as_dask(self) -> Any:
        import dask.array as da

        return da.from_array(
            self, chunks=(1, *self.shape[1:]), meta=np.empty((0,) * self.ndim, self.dtype)
        )


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
