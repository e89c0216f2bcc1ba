"""Microscope file formats through rosettasciio: dm3/dm4, emd, ser/emi, mrc, hspy/hdf5.

Every format is read by rosettasciio's own ``file_reader`` (``rsciio.<format>``); nothing here
parses a file format.  This module turns rosettasciio's signal dictionaries into
:class:`~napari_atomnet.io.images.ImageData`: it keeps the 2D images and T×Y×X image stacks of a
file (spectra, spectrum images and 4D data sets are skipped and listed), converts the calibration
of the last two axes to a pixel size in nm, and keeps a JSON-serialisable copy of the original
metadata.

Calibration
-----------
The pixel size comes from the ``scale`` and ``units`` of the last two (y, x) axes.  Length units
are converted to nm (``nm``, ``Å``/``A``/``angstrom``, ``pm``, ``µm``/``um``, ``mm``, ``m``/
``meters``, and anything else pint reads as a length).  The pixel size is left unknown (None) when

- the units are reciprocal lengths (``1/nm``, ``nm^-1``...: a diffraction pattern or an FFT),
  status ``"reciprocal"``;
- the units are not lengths or are missing (a scale of 1 without units is an uncalibrated image),
  status ``"unknown"`` / ``"uncalibrated"``;
- the pixels are not square (y and x scales differ by more than 1e-4 relative), status
  ``"non-square"``; both sizes are still given in ``metadata["calibration"]["pixel_size_yx_nm"]``.

Everything is recorded in ``metadata["calibration"]``, so analyses report lengths in px then.

Laziness
--------
Files are opened with ``lazy=True``.  2D images are read into memory; stacks stay dask arrays, so
a frame is read when it is used.  DM and MRC stacks are chunked one frame per chunk; EMD and HSPY
stacks keep the file's own HDF5 chunking (one frame per chunk for Velox).  A stack that comes as
a single chunk (TIA ``.ser`` series, whose lazy mode reads the whole file; HDF5 files written
without frame chunks) is read into memory once rather than re-read for every frame.
"""

from __future__ import annotations

import importlib
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .formats import MICROSCOPY_FORMATS, MICROSCOPY_SUFFIXES
from .images import ImageData, ImageReadError

__all__ = ["MICROSCOPY_FORMATS", "MICROSCOPY_SUFFIXES", "read_microscopy"]

_NM_PER_UNIT = {
    "nm": 1.0,
    "nanometer": 1.0,
    "nanometers": 1.0,
    "å": 0.1,
    "a": 0.1,
    "angstrom": 0.1,
    "angstroms": 0.1,
    "ang": 0.1,
    "pm": 1e-3,
    "µm": 1e3,
    "μm": 1e3,
    "um": 1e3,
    "micron": 1e3,
    "microns": 1e3,
    "micrometer": 1e3,
    "mm": 1e6,
    "cm": 1e7,
    "m": 1e9,
    "meter": 1e9,
    "meters": 1e9,
    "metre": 1e9,
    "metres": 1e9,
}
_UNDEFINED = ("", "<undefined>", "undefined", "none", "px", "pixel", "pixels")


def unit_to_nm(units: str | None) -> tuple[str, float | None]:
    """Classify a length unit and give its size in nm.

    Parameters
    ----------
    units : str or None
        Units of an axis as the file records them.

    Returns
    -------
    kind : {"length", "reciprocal", "undefined", "unknown"}
        What the units measure.
    nm : float or None
        For ``"length"``, nm per unit; for ``"reciprocal"``, nm⁻¹ per unit; else None.

    Examples
    --------
    >>> unit_to_nm("Å")
    ('length', 0.1)
    >>> unit_to_nm("1 / nm")
    ('reciprocal', 1.0)
    >>> unit_to_nm("eV")[0]
    'unknown'
    """
    text = "" if units is None else str(units).strip()
    key = text.lower().replace("\u00c5", "å")  # Å (U+00C5) and the Angstrom sign (U+212B)
    key = key.replace("\u212b", "å")
    if key in _UNDEFINED:
        return "undefined", None
    if key in _NM_PER_UNIT:
        return "length", _NM_PER_UNIT[key]
    compact = key.replace(" ", "")
    for prefix in ("1/",):
        if compact.startswith(prefix) and compact[len(prefix) :] in _NM_PER_UNIT:
            return "reciprocal", 1.0 / _NM_PER_UNIT[compact[len(prefix) :]]
    for suffix in ("^-1", "-1", "⁻¹", "**-1"):
        if compact.endswith(suffix) and compact[: -len(suffix)] in _NM_PER_UNIT:
            return "reciprocal", 1.0 / _NM_PER_UNIT[compact[: -len(suffix)]]
    return _pint_length(text)


def _pint_length(text: str) -> tuple[str, float | None]:
    try:
        import pint

        quantity = _ureg(pint).Quantity(1.0, text)
        if quantity.check("[length]"):
            return "length", float(quantity.to("nm").magnitude)
        if quantity.check("1 / [length]"):
            return "reciprocal", float(quantity.to("1 / nm").magnitude)
    except Exception:  # unknown unit strings raise many kinds of errors
        pass
    return "unknown", None


def _ureg(pint: Any) -> Any:
    global _UREG
    if _UREG is None:
        _UREG = pint.UnitRegistry()
    return _UREG


_UREG: Any = None


def calibration_from_axes(axes: list[dict[str, Any]]) -> dict[str, Any]:
    """Pixel size in nm from the last two axes (y, x) of a signal.

    Parameters
    ----------
    axes : list of dict
        rosettasciio axis dictionaries (``scale``, ``units``), in array order.

    Returns
    -------
    dict
        ``pixel_size_nm`` (float or None), ``pixel_size_yx_nm`` ([y, x] or None), ``units`` (as
        in the file), ``status`` (``"ok"``, ``"reciprocal"``, ``"uncalibrated"``, ``"unknown"``,
        ``"non-square"``) and, for reciprocal units, ``reciprocal_pixel_size_per_nm``.

    Examples
    --------
    >>> axes = [{"scale": 0.5, "units": "Å"}, {"scale": 0.5, "units": "Å"}]
    >>> calibration_from_axes(axes)["pixel_size_nm"]
    0.05
    """
    yx = list(axes[-2:])
    units = [a.get("units") for a in yx]
    scales = [float(a.get("scale", 1.0) or 1.0) for a in yx]
    kinds = [unit_to_nm(u) for u in units]
    out: dict[str, Any] = {
        "pixel_size_nm": None,
        "pixel_size_yx_nm": None,
        "units": [None if u is None else str(u) for u in units],
        "scale": scales,
    }
    if all(k == "length" for k, _ in kinds):
        # 12 significant digits: 40 pm is 0.04 nm, not 0.039999999999999994
        sizes = [float(f"{s * f:.12g}") for s, (_, f) in zip(scales, kinds, strict=True)]
        out["pixel_size_yx_nm"] = sizes
        if all(s > 0 and math.isfinite(s) for s in sizes) and math.isclose(
            sizes[0], sizes[1], rel_tol=1e-4
        ):
            out["pixel_size_nm"] = float(sizes[1])
            out["status"] = "ok"
        else:
            out["status"] = "non-square"
    elif all(k == "reciprocal" for k, _ in kinds):
        out["status"] = "reciprocal"
        out["reciprocal_pixel_size_per_nm"] = [
            s * f for s, (_, f) in zip(scales, kinds, strict=True)
        ]
    elif all(k == "undefined" for k, _ in kinds):
        out["status"] = "uncalibrated"
    else:
        out["status"] = "unknown"
    return out


def jsonable(value: Any, *, max_items: int = 2000, depth: int = 0) -> Any:
    """Return a JSON-serialisable copy of ``value`` (nested dicts, lists, numbers, strings).

    numpy scalars become Python numbers, small arrays lists (arrays of more than 64 elements a
    short description), bytes UTF-8 text, other objects their ``str``.  Containers are cut at
    ``max_items`` entries and 32 levels.

    Parameters
    ----------
    value : object
        Metadata tree.
    max_items : int
        Most entries kept per dict or list.
    depth : int
        Current nesting level (internal).

    Returns
    -------
    object

    Examples
    --------
    >>> jsonable({"a": np.float32(0.5), "b": np.arange(3), "c": b"HAADF"})
    {'a': 0.5, 'b': [0, 1, 2], 'c': 'HAADF'}
    """
    if depth > 32:
        return "<nested too deep>"
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, np.generic):
        return jsonable(value.item(), depth=depth + 1)
    if isinstance(value, bytes | bytearray | np.void):
        return bytes(value).decode("utf-8", errors="replace").rstrip("\x00")[:10000]
    if isinstance(value, dict) or (hasattr(value, "items") and callable(value.items)):
        items = list(value.items())[:max_items]
        return {str(k): jsonable(v, max_items=max_items, depth=depth + 1) for k, v in items}
    if isinstance(value, np.ndarray):
        if value.size <= 64 and value.dtype.kind in "biufcSUb":
            return jsonable(value.tolist(), depth=depth + 1)
        return f"<array shape={value.shape} dtype={value.dtype}>"
    if isinstance(value, list | tuple):
        return [jsonable(v, max_items=max_items, depth=depth + 1) for v in value[:max_items]]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if type(value).__module__.startswith("dask"):
        return f"<lazy array shape={getattr(value, 'shape', '?')}>"
    return str(value)


def _axes_info(axes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = ("name", "size", "scale", "offset", "units", "navigate")
    return [{k: jsonable(a.get(k)) for k in keys if k in a} for a in axes]


def _signal_kind(signal: dict[str, Any]) -> tuple[bool, str]:
    """Whether a signal is a 2D image or a T×Y×X stack, and a description either way."""
    data = signal["data"]
    axes = signal.get("axes", [])
    shape = tuple(int(n) for n in data.shape)
    dims = "×".join(str(n) for n in shape)
    if data.dtype.names is not None:
        return False, f"{dims} RGB(A) image"
    if data.ndim not in (2, 3):
        return False, f"{data.ndim}D data set {dims}"
    if len(axes) == data.ndim:
        kinds = [unit_to_nm(a.get("units"))[0] for a in axes[-2:]]
        names = " ".join(str(a.get("name", "")).lower() for a in axes[-2:])
        if "unknown" in kinds and ("energy" in names or data.ndim == 3):
            return False, f"spectrum image {dims} ({axes[-1].get('units')})"
        if data.ndim == 3 and axes[-1].get("navigate") is True:
            return False, f"{dims} data set with navigation axes last"
    return True, ("image stack " if data.ndim == 3 else "image ") + dims


def read_microscopy(
    path: str | os.PathLike, *, lazy: bool = True, materialize: bool = True
) -> list[ImageData]:
    """Read every 2D image and T×Y×X image stack of a microscope file.

    Parameters
    ----------
    path : path-like
        A ``.dm3``, ``.dm4``, ``.emd`` (Velox or Berkeley/NCEM), ``.ser``/``.emi``, ``.mrc``,
        ``.hspy`` or ``.hdf5`` file.
    lazy : bool
        Keep stacks as dask arrays (read frame by frame when used); 2D images are always read.
    materialize : bool
        Read stacks that come as a single chunk into memory (see the module docstring); False
        keeps them lazy too, for a quick look at shapes and calibration.

    Returns
    -------
    list of ImageData
        One per image signal, in file order.  ``name`` is the file stem, followed by the
        signal's title when the file holds several images.  ``metadata`` has ``source`` (file,
        format, signal index and title, the other signals skipped), ``axes``, ``calibration``
        (see the module docstring), ``metadata`` (rosettasciio's) and ``original_metadata``.

    Raises
    ------
    ImageReadError
        If the file is missing, unsupported, corrupt or holds no 2D image.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix not in MICROSCOPY_FORMATS:
        raise ImageReadError(f"{path.name}: not a microscope file type ({suffix!r})")
    module, format_name = MICROSCOPY_FORMATS[suffix]
    signals = _read_signals(path, module, format_name)

    kept: list[tuple[int, dict[str, Any], str]] = []
    skipped: list[str] = []
    for index, signal in enumerate(signals):
        ok, what = _signal_kind(signal)
        title = _title(signal)
        if ok:
            kept.append((index, signal, what))
        else:
            skipped.append(f"{title or f'signal {index}'}: {what}")
    if not kept:
        found = "; ".join(skipped) or "nothing"
        raise ImageReadError(
            f"{path.name}: no 2D image or image stack in the file (found: {found})"
        )

    images = []
    titles = _unique_titles([_title(s) or f"signal {i}" for i, s, _ in kept])
    for (index, signal, what), title in zip(kept, titles, strict=True):
        data = signal["data"]
        one_chunk = len(getattr(data, "chunks", ((0,),))[0]) == 1
        if data.ndim == 2 or not lazy or (one_chunk and materialize):
            # a stack stored as one chunk would be read whole for every frame: read it once
            data = np.asarray(data)
        axes = signal.get("axes", [])
        calibration = calibration_from_axes(axes) if len(axes) >= 2 else {"status": "uncalibrated"}
        metadata = {
            "source": {
                "file": str(path),
                "format": format_name,
                "reader": f"rsciio.{module}",
                "signal_index": index,
                "n_signals": len(signals),
                "n_images": len(kept),
                "title": title,
                "kind": what,
                "skipped_signals": skipped,
            },
            "axes": _axes_info(axes),
            "calibration": calibration,
            "metadata": jsonable(signal.get("metadata", {})),
            "original_metadata": jsonable(signal.get("original_metadata", {})),
        }
        name = path.stem if len(kept) == 1 else f"{path.stem} {title}"
        images.append(
            ImageData(
                data=data,
                pixel_size_nm=calibration.get("pixel_size_nm"),
                name=name,
                metadata=metadata,
            )
        )
    return images


def _read_signals(path: Path, module: str, format_name: str) -> list[dict[str, Any]]:
    try:
        reader = importlib.import_module(f"rsciio.{module}").file_reader
    except ImportError as err:  # pragma: no cover - rosettasciio is a dependency
        raise ImageReadError(
            f"{path.name}: rosettasciio cannot read {format_name} ({err})"
        ) from err
    try:
        signals = reader(str(path), lazy=True)
        if module in ("digitalmicrograph", "mrc") and any(
            s["data"].ndim == 3 and s["data"].chunks[0][0] > 1 for s in signals
        ):
            # one frame per chunk, so that reading a frame reads only that frame; a file with
            # 2D images beside the stack needs the per-axis form (its 2D images come in rows)
            for chunks in ((1, -1, -1), {0: 1}):
                try:
                    signals = reader(str(path), lazy=True, chunks=chunks)
                    break
                except Exception:  # keep the default chunks
                    continue
    except Exception as err:  # corrupt files raise many kinds of errors
        raise ImageReadError(
            f"{path.name}: cannot read as {format_name} ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(signals, list) or not signals:
        raise ImageReadError(f"{path.name}: no data in the file")
    return signals


def _title(signal: dict[str, Any]) -> str:
    general = (signal.get("metadata") or {}).get("General") or {}
    return str(general.get("title") or "").strip()


def _unique_titles(titles: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for t in titles:
        if t in seen:
            seen[t] += 1
            out.append(f"{t} ({seen[t]})")
        else:
            seen[t] = 1
            out.append(t)
    return out
