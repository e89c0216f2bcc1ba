"""Corrected atom labels for retraining: export as YOLO, Pascal VOC (labelImg) and CSV, and back.

One export folder per image (``<out_dir>/<name>/``)::

    <name>.png            8-bit grey, contrast stretched (0.5–99.5 %), what labelImg / YOLO view
    <name>.tif            the original pixel data (full dynamic range, for retraining)
    <name>.txt            YOLO: one line per box, ``class cx cy w h`` normalised to [0, 1]
    classes.txt           YOLO class names, one per line, in class-id order
    <name>.xml            Pascal VOC, in the exact layout labelImg writes
    <name>_atoms.csv      every column of the atoms table, exact positions
    tiles/                optional: <name>_r{row}_c{col}.png/.tif/.txt/.xml/_atoms.csv, classes.txt
    provenance.json       plugin version, model + sha256, parameters, hand edits, conventions

Coordinate conventions
----------------------
Inside the plugin, positions are napari's (row, col) = (y, x) in pixels, and a pixel's *centre* has
integer coordinates.  YOLO, Pascal VOC and labelImg all measure from the image's top-left *corner*
(labelImg's canvas is Qt's image space: pixel ``i`` covers ``[i, i + 1)``, points lie in
``[0, W] × [0, H]``).  So a corner ("edge") coordinate ``u`` and ours ``x`` are related by
``u = x + 0.5``; a box ``[x0, x1]`` of the atoms table (a continuous interval, centred on the atom)
spans ``[x0 + 0.5, x1 + 0.5]`` in corner coordinates.

- **YOLO** ``cx = (x + 0.5) / W``, ``cy = (y + 0.5) / H``, ``w = (x1 - x0) / W``,
  ``h = (y1 - y0) / H``, each written with 6 decimals (``"%d %.6f %.6f %.6f %.6f"``, as labelImg's
  ``YOLOWriter``), so positions survive to ``0.5e-6 · max(W, H)`` px.  Boxes are clipped to the
  image first (YOLO trainers reject values outside [0, 1]).
- **Pascal VOC** ``xmin, ymin, xmax, ymax`` are integers in labelImg's convention (checked in
  ``HumanSignal/labelImg``: ``libs/labelFile.py`` ``convert_points_to_bnd_box`` writes
  ``int()`` of the Qt corner coordinates and raises ``xmin``/``ymin`` below 1 to 1;
  ``libs/pascal_voc_io.py`` ``PascalVocReader`` reads them back as the same corner coordinates and
  ``libs/yolo_io.py`` converts them to YOLO as ``(xmin + xmax) / 2 / W``, i.e. as corner
  coordinates).  We round rather than truncate, choosing the integer width with the parity that
  keeps the centre ``(xmin + xmax) / 2`` within 0.25 px of the exact one (width within 1 px), then
  apply labelImg's ``>= 1`` rule.  Reading: ``x = (xmin + xmax) / 2 - 0.5``.  (Darknet's
  ``voc_label.py`` assumes the 1-based VOC devkit convention and subtracts one pixel more; labelImg
  does not.)
- **CSV** keeps the exact floats (written with Python's shortest round-trip repr and read back with
  ``float_precision="round_trip"`` where pandas < 3 needs it); :func:`import_labels` prefers it
  whenever it is present.

Boxes are written centred on the atom position with the table's box size: rows whose box is
missing (hand-added atoms) or not centred get a centred box (the median box size of the others, or
0.8 × the median nearest-neighbour distance).  The CSV holds the same boxes.  Columns cut by the
image border are kept, as seed 000 labelled half atoms at the border: their YOLO / VOC boxes are
clipped to the image (so from YOLO / VOC alone their position is the clipped box's centre; the CSV
keeps the exact one, which may lie just outside the image).  Only atoms whose box lies entirely
outside the image are dropped (counted in ``provenance.json``).

Tiles (optional) start at 0 with step ``tile - tile_overlap``; the last row / column of tiles is
*padded* to the full tile size with the image median (not shifted), so with ``tile_overlap=0`` the
tiles partition the image and every atom lies in exactly one tile.  An atom belongs to every tile
whose pixels contain its centre (``r0 - 0.5 <= y < r0 + h - 0.5``; a centre just beyond the image
border counts as on the border pixel); boxes whose centre is outside a tile are not in its labels,
and the others are clipped to the tile's image content for YOLO / VOC.  ``provenance.json`` lists
each tile's origin and content size.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from .._provenance import make_provenance
from ._atomic import ExportExistsError, atomic_path

__all__ = [
    "DEFAULT_TILE",
    "FORMATS",
    "LABELS_KIND",
    "boxes_to_voc",
    "boxes_to_yolo",
    "export_labels",
    "import_labels",
    "list_label_images",
    "read_atoms_csv",
    "voc_to_boxes",
    "write_atoms_csv",
    "yolo_to_boxes",
]

#: Label formats written by :func:`export_labels`.
FORMATS = ("yolo", "voc", "csv")
#: Tile size (px) when tiles are asked for without a size (seed 000 trained YOLOv3 on 416 × 416).
DEFAULT_TILE = 416
#: ``provenance.json["kind"]`` of an export folder.
LABELS_KIND = "napari-atomnet labels"
#: Layout version of the export folder.
FORMAT_VERSION = 1

PROVENANCE_FILE = "provenance.json"
CLASSES_FILE = "classes.txt"
CSV_SUFFIX = "_atoms.csv"
#: Image files looked for beside label files, in order of preference.
LABEL_IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".npy")
#: Format precedence when several label files describe one image.
_EXPORT_ORDER = ("csv", "yolo", "voc")  # our own exports: the most precise first
_FOLDER_ORDER = ("csv", "voc", "yolo")  # other folders: VOC carries its size and class names
BOX_COLUMNS = ("y0", "x0", "y1", "x1")
LABEL_COLUMNS = ("y", "x", "class", "class_name", "y0", "x0", "y1", "x1", "source")
DEFAULT_CLASS = "atom"
YOLO_DECIMALS = 6

CONVENTIONS = {
    "atoms_csv": "y = row, x = column in pixels; a pixel's centre has integer coordinates; the box "
    "y0, x0, y1, x1 is a continuous interval in the same coordinates, centred on (y, x)",
    "corner_coordinates": "YOLO and Pascal VOC measure from the image's top-left corner: "
    "u = x + 0.5, v = y + 0.5",
    "yolo": "class cx cy w h with cx = (x + 0.5) / W, cy = (y + 0.5) / H, w = (x1 - x0) / W, "
    "h = (y1 - y0) / H; boxes clipped to the image; 6 decimals",
    "voc": "integer corner coordinates as labelImg writes them (xmin, ymin raised to at least 1); "
    "x = (xmin + xmax) / 2 - 0.5; centre within 0.25 px, size within 1 px",
    "precedence": "the CSV is exact; import_labels prefers it, then YOLO, then VOC",
}


# --------------------------------------------------------------------------------------------
# box conversions


def boxes_to_yolo(boxes: ArrayLike, shape: tuple[int, int]) -> NDArray[np.float64]:
    """Convert boxes ``(y0, x0, y1, x1)`` (pixel-centre convention) to normalised YOLO boxes.

    Boxes are clipped to the image (corner coordinates ``[0, W] × [0, H]``) first.

    Parameters
    ----------
    boxes : array_like, shape (N, 4)
        ``y0, x0, y1, x1`` in pixels, a pixel's centre at integer coordinates.
    shape : tuple of int
        Image ``(H, W)``.

    Returns
    -------
    ndarray, shape (N, 4)
        ``cx, cy, w, h`` in [0, 1] (x across, y down, normalised by W and H).

    Examples
    --------
    >>> boxes_to_yolo([[1.5, 3.5, 5.5, 7.5]], (10, 20)).round(6).tolist()
    [[0.3, 0.4, 0.2, 0.4]]
    """
    b = np.asarray(boxes, dtype=float).reshape(-1, 4)
    h, w = shape
    v0 = np.clip(b[:, 0] + 0.5, 0, h)
    u0 = np.clip(b[:, 1] + 0.5, 0, w)
    v1 = np.clip(b[:, 2] + 0.5, 0, h)
    u1 = np.clip(b[:, 3] + 0.5, 0, w)
    return np.column_stack([(u0 + u1) / 2 / w, (v0 + v1) / 2 / h, (u1 - u0) / w, (v1 - v0) / h])


def yolo_to_boxes(yolo: ArrayLike, shape: tuple[int, int]) -> NDArray[np.float64]:
    """Convert normalised YOLO boxes ``cx, cy, w, h`` to ``y0, x0, y1, x1`` (pixel centres).

    Parameters
    ----------
    yolo : array_like, shape (N, 4)
        ``cx, cy, w, h`` normalised by the image width and height.
    shape : tuple of int
        Image ``(H, W)``.

    Returns
    -------
    ndarray, shape (N, 4)

    Examples
    --------
    >>> yolo_to_boxes([[0.3, 0.4, 0.2, 0.4]], (10, 20)).round(6).tolist()
    [[1.5, 3.5, 5.5, 7.5]]
    """
    q = np.asarray(yolo, dtype=float).reshape(-1, 4)
    h, w = shape
    cx, cy, bw, bh = q[:, 0] * w, q[:, 1] * h, q[:, 2] * w, q[:, 3] * h
    return np.column_stack([cy - bh / 2, cx - bw / 2, cy + bh / 2, cx + bw / 2]) - 0.5


def boxes_to_voc(boxes: ArrayLike, shape: tuple[int, int]) -> NDArray[np.int64]:
    """Convert boxes ``(y0, x0, y1, x1)`` to integer Pascal VOC boxes as labelImg writes them.

    Corner coordinates, clipped to the image; the integer width is chosen with the parity that
    keeps the box centre within 0.25 px; ``xmin`` and ``ymin`` are at least 1 (labelImg's rule).

    Parameters
    ----------
    boxes : array_like, shape (N, 4)
        ``y0, x0, y1, x1`` in pixels (pixel-centre convention).
    shape : tuple of int
        Image ``(H, W)``.

    Returns
    -------
    ndarray of int, shape (N, 4)
        ``xmin, ymin, xmax, ymax``.

    Examples
    --------
    >>> boxes_to_voc([[10.0, 20.3, 16.0, 26.3]], (64, 64)).tolist()  # centre x 23.8 → 23.5
    [[21, 11, 27, 16]]
    """
    b = np.asarray(boxes, dtype=float).reshape(-1, 4)
    h, w = shape
    xmin, xmax = _voc_edges(b[:, 1] + 0.5, b[:, 3] + 0.5, w)
    ymin, ymax = _voc_edges(b[:, 0] + 0.5, b[:, 2] + 0.5, h)
    return np.column_stack([xmin, ymin, xmax, ymax]).astype(np.int64)


def voc_to_boxes(voc: ArrayLike) -> NDArray[np.float64]:
    """Convert Pascal VOC ``xmin, ymin, xmax, ymax`` (labelImg corner convention) to boxes.

    Parameters
    ----------
    voc : array_like, shape (N, 4)

    Returns
    -------
    ndarray, shape (N, 4)
        ``y0, x0, y1, x1`` in pixels (pixel-centre convention).

    Examples
    --------
    >>> voc_to_boxes([[18, 10, 24, 16]]).tolist()
    [[9.5, 17.5, 15.5, 23.5]]
    """
    q = np.asarray(voc, dtype=float).reshape(-1, 4)
    return np.column_stack([q[:, 1], q[:, 0], q[:, 3], q[:, 2]]) - 0.5


def _voc_edges(lo: NDArray, hi: NDArray, limit: int) -> tuple[NDArray, NDArray]:
    lo = np.clip(lo, 0, limit)
    hi = np.clip(hi, 0, limit)
    twice_centre = np.rint(lo + hi)
    parity = np.mod(twice_centre, 2)
    width = 2 * np.rint((hi - lo - parity) / 2) + parity
    width = np.maximum(width, np.where(parity == 1, 1, 2))
    mn = (twice_centre - width) / 2
    mx = (twice_centre + width) / 2
    mn, mx = np.clip(mn, 0, limit), np.clip(mx, 0, limit)
    mn = np.maximum(mn, 1)  # labelImg: "0-valued coordinates of BB caused an error" (Kersner)
    mx = np.where(mx <= mn, np.minimum(mn + 1, limit), mx)
    mn = np.where(mx <= mn, mx - 1, mn)
    return mn, mx


# --------------------------------------------------------------------------------------------
# export


def export_labels(
    image: ArrayLike,
    atoms: pd.DataFrame,
    out_dir: str | os.PathLike,
    *,
    name: str,
    classes: Sequence[str] | None = None,
    formats: Iterable[str] | str = FORMATS,
    tiles: int | None = None,
    tile_overlap: int = 0,
    provenance: Mapping[str, Any] | None = None,
    edits: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    pixel_size_nm: float | None = None,
    box_size: float | None = None,
    source: str | None = None,
) -> Path:
    """Write an image and its atom labels as a folder for retraining (YOLO, Pascal VOC, CSV).

    The folder ``out_dir / name`` is built in a temporary folder beside it and renamed into place
    when complete, so it is either complete or absent.  See the module docstring for the layout
    and the coordinate conventions.

    Parameters
    ----------
    image : array_like, shape (H, W)
        The grey image (any real dtype); written as ``<name>.tif`` unchanged and as an 8-bit
        ``<name>.png`` stretched between its 0.5 and 99.5 percentiles.
    atoms : pandas.DataFrame
        The atoms table: ``y, x`` (px, row/col, pixel-centre convention) and optionally ``class``,
        ``class_name``, the box ``y0, x0, y1, x1``, ``source`` and any other features (all go to
        the CSV).
    out_dir : path-like
        Folder in which the export folder ``name`` is created.
    name : str
        Name of the export folder and stem of its files.
    classes : sequence of str, optional
        Class names in class-id order.  When omitted they come from the table's ``class`` /
        ``class_name`` columns (``["atom"]`` if it has neither).
    formats : iterable of {"yolo", "voc", "csv"} or str
        Label formats to write (a comma-separated string is accepted).  The images and
        ``provenance.json`` are always written.
    tiles : int, optional
        Also cut the image into ``tiles × tiles`` tiles (416 is seed 000's size) with their own
        labels in ``tiles/``; edge tiles are padded with the image median.
    tile_overlap : int
        Overlap of neighbouring tiles in pixels.
    provenance : mapping, optional
        What made the atoms (``make_provenance`` record or ``layer.metadata["napari_atomnet"]``):
        its ``model``, ``params`` and ``source`` are copied to the top of ``provenance.json`` and
        the whole record is kept under ``"analysis"``.
    edits : mapping, optional
        Hand edits, e.g. ``{"added": 3, "deleted": 1, "moved": 2}`` (non-negative integers).
    overwrite : bool
        Replace an existing export folder of the same name (only one written by this function, or
        an empty folder).
    pixel_size_nm : float, optional
        Recorded in the TIFF and the provenance.
    box_size : float, optional
        Side (px) of the box given to atoms without one; default: the median box of the others,
        or 0.8 × the median nearest-neighbour distance.
    source : str, optional
        The source image (file path or layer name); default ``provenance["source"]``.

    Returns
    -------
    pathlib.Path
        The export folder.

    Raises
    ------
    ExportExistsError
        If the folder exists and ``overwrite`` is False, or it is not an export folder.
    ValueError
        For a bad image, table, name, class list, format or tile size.

    Examples
    --------
    >>> import tempfile
    >>> img = np.random.default_rng(0).poisson(50, (64, 64)).astype(np.uint16)
    >>> atoms = pd.DataFrame({"y": [10.0, 40.2], "x": [20.0, 33.7]})
    >>> folder = export_labels(img, atoms, tempfile.mkdtemp(), name="demo", box_size=6)
    >>> sorted(p.name for p in folder.iterdir())  # doctest: +NORMALIZE_WHITESPACE
    ['classes.txt', 'demo.png', 'demo.tif', 'demo.txt', 'demo.xml', 'demo_atoms.csv',
     'provenance.json']
    """
    from ..core.image import as_analysis_image

    _check_name(name)
    fmt = _check_formats(formats)
    data = np.asarray(image)
    analysis = as_analysis_image(data)  # validates: 2D grey, finite, not constant
    shape = (int(data.shape[0]), int(data.shape[1]))
    tile = _check_tiles(tiles, tile_overlap)
    edits_record = _check_edits(edits)
    table, class_names, fill = _label_table(atoms, shape, classes, box_size)
    n_outside = int(len(atoms) - len(table))

    out_dir = Path(out_dir)
    target = out_dir / name
    _check_target(target, overwrite=overwrite)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    final = target.resolve()

    lo, hi = (float(v) for v in np.percentile(analysis, [0.5, 99.5]))
    png = _stretch(analysis, lo, hi)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".part", dir=out_dir))
    try:
        files = _write_label_set(
            tmp, name, png, data, table, class_names, fmt, final, pixel_size_nm, shape
        )
        tile_records: list[dict[str, Any]] = []
        if tile:
            tile_records = _write_tiles(
                tmp, name, png, data, table, class_names, fmt, final, pixel_size_nm, *tile
            )
            files.append("tiles/")
        prov = provenance or {}
        record = make_provenance(
            "export_labels",
            {
                "formats": list(fmt),
                "tiles": tile[0] if tile else None,
                "tile_overlap": tile[1] if tile else 0,
                "classes": class_names,
                "box_size": box_size,
            },
            model=prov.get("model"),
            source=source if source is not None else prov.get("source"),
        )
        record.update(
            kind=LABELS_KIND,
            format_version=FORMAT_VERSION,
            name=name,
            parameters=prov.get("params"),
            image={
                "shape": list(shape),
                "dtype": str(data.dtype),
                "pixel_size_nm": pixel_size_nm,
                "png": f"{name}.png",
                "tif": f"{name}.tif",
                "png_stretch": {"percentiles": [0.5, 99.5], "low": lo, "high": hi},
            },
            edits=edits_record,
            counts={
                "atoms": len(table),
                "dropped_outside_image": n_outside,
                "centre_outside_image": fill["centre_outside"],
                "boxes_filled": fill["filled"],
                "boxes_recentred": fill["recentred"],
                "by_class": {str(k): int(v) for k, v in table["class_name"].value_counts().items()},
                "by_source": (
                    {str(k): int(v) for k, v in table["source"].value_counts(dropna=False).items()}
                    if "source" in table
                    else None
                ),
            },
            default_box_size=fill["box_size"],
            classes=class_names,
            coordinates=CONVENTIONS,
            formats=list(fmt),
            files=files,
            tiles=(
                {"size": tile[0], "overlap": tile[1], "edge": "padded", "tiles": tile_records}
                if tile
                else None
            ),
            analysis=dict(prov) if prov else None,
        )
        (tmp / PROVENANCE_FILE).write_text(
            json.dumps(record, indent=2, default=_json_default), encoding="utf-8"
        )
        _move_into_place(tmp, target, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # only if still empty
        raise
    return target


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ValueError("the export needs a name (the folder and file stem)")
    bad = {"/", "\\", "\0", ":"} | {os.sep}
    if name.startswith(".") or any(c in name for c in bad) or name != name.strip():
        raise ValueError(
            f"invalid export name {name!r}: no path separators, no leading dot or spaces"
        )


def _check_formats(formats: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = formats.split(",")
    fmt = tuple(dict.fromkeys(f.strip().lower() for f in formats if f.strip()))
    unknown = [f for f in fmt if f not in FORMATS]
    if unknown or not fmt:
        raise ValueError(
            f"unknown label format(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(FORMATS)}"
        )
    return fmt


def _check_tiles(tiles: int | None, overlap: int) -> tuple[int, int] | None:
    if tiles is None or tiles is False:
        if overlap:
            raise ValueError("tile_overlap needs tiles")
        return None
    if isinstance(tiles, bool) or not isinstance(tiles, int | np.integer):
        raise ValueError(f"tiles must be a tile size in pixels, got {tiles!r}")
    if tiles < 16:
        raise ValueError(f"tile size must be at least 16 px, got {tiles}")
    if not 0 <= int(overlap) <= tiles // 2:
        raise ValueError(f"tile_overlap must be between 0 and half the tile size, got {overlap}")
    return int(tiles), int(overlap)


def _check_edits(edits: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if edits is None:
        return None
    record: dict[str, Any] = {}
    for key, value in dict(edits).items():
        if key in ("added", "deleted", "moved"):
            if isinstance(value, bool) or not float(value).is_integer() or value < 0:
                raise ValueError(f"edits[{key!r}] must be a non-negative integer, got {value!r}")
            value = int(value)
        record[str(key)] = value
    return record


def _check_target(target: Path, *, overwrite: bool) -> None:
    if not (target.exists() or target.is_symlink()):
        return
    if not overwrite:
        raise ExportExistsError(target)
    if target.is_symlink() or not target.is_dir():
        raise ExportExistsError(target, "it is not an export folder, so it is not replaced")
    if any(target.iterdir()) and not _is_export(target):
        raise ExportExistsError(target, "it is not a napari-atomnet label export; not replaced")


def _move_into_place(tmp: Path, target: Path, *, overwrite: bool) -> None:
    if target.exists() or target.is_symlink():
        _check_target(target, overwrite=overwrite)
        old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
        os.rename(target, old)
        try:
            os.rename(tmp, target)
        except BaseException:
            os.rename(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.rename(tmp, target)  # fails if a non-empty folder appeared meanwhile
    except OSError as err:
        if target.exists():
            raise ExportExistsError(target) from err
        raise


def _label_table(
    atoms: pd.DataFrame,
    shape: tuple[int, int],
    classes: Sequence[str] | None,
    box_size: float | None,
) -> tuple[pd.DataFrame, list[str], dict[str, Any]]:
    """Validate the atoms table; resolve classes; give every atom a box centred on it."""
    if not isinstance(atoms, pd.DataFrame):
        raise ValueError(f"atoms must be a pandas DataFrame, got {type(atoms).__name__}")
    missing = [c for c in ("y", "x") if c not in atoms.columns]
    if missing:
        raise ValueError(f"the atoms table lacks column(s) {', '.join(missing)}")
    if "frame" in atoms and atoms["frame"].nunique(dropna=True) > 1:
        raise ValueError("the atoms table spans several frames; export one frame at a time")
    table = atoms.reset_index(drop=True).copy()
    pos = table[["y", "x"]].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    if not np.isfinite(pos).all():
        raise ValueError("y and x must be finite numbers in every row")

    class_names, ids = _resolve_classes(table, classes)
    table["class"] = ids
    table["class_name"] = [class_names[i] for i in ids]

    boxes = np.full((len(table), 4), np.nan)
    for j, col in enumerate(BOX_COLUMNS):
        if col in table:
            boxes[:, j] = pd.to_numeric(table[col], errors="coerce").to_numpy(float)
    bh, bw = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    has_box = np.isfinite(boxes).all(axis=1) & (bh > 0) & (bw > 0)
    if box_size is not None:
        if not (np.isfinite(box_size) and box_size > 0):
            raise ValueError(f"box_size must be a positive number of pixels, got {box_size!r}")
        default_h = default_w = float(box_size)
    elif has_box.any():
        default_h, default_w = float(np.median(bh[has_box])), float(np.median(bw[has_box]))
    else:
        spacing = _median_nn(pos)
        default_h = default_w = 0.8 * spacing if np.isfinite(spacing) else 8.0
    bh = np.where(has_box, bh, default_h)
    bw = np.where(has_box, bw, default_w)
    centre_y = (boxes[:, 0] + boxes[:, 2]) / 2
    centre_x = (boxes[:, 1] + boxes[:, 3]) / 2
    tol = 1e-6
    centred = (
        has_box & (np.abs(centre_y - pos[:, 0]) <= tol) & (np.abs(centre_x - pos[:, 1]) <= tol)
    )
    fix = ~centred
    boxes[fix] = np.column_stack(
        [pos[:, 0] - bh / 2, pos[:, 1] - bw / 2, pos[:, 0] + bh / 2, pos[:, 1] + bw / 2]
    )[fix]
    for j, col in enumerate(BOX_COLUMNS):
        table[col] = boxes[:, j]
    # keep atoms whose box shows in the image (half columns at the border, as seed 000 labelled)
    h, w = shape
    shows = (boxes[:, 2] > -0.5) & (boxes[:, 0] < h - 0.5) & (boxes[:, 3] > -0.5)
    shows &= boxes[:, 1] < w - 0.5
    table = table.loc[shows].reset_index(drop=True)
    front = [c for c in LABEL_COLUMNS if c in table]
    table = table[front + [c for c in table.columns if c not in front]]
    fill = {
        "filled": int((~has_box & shows).sum()),
        "recentred": int((has_box & fix & shows).sum()),
        "box_size": [default_h, default_w],
        "centre_outside": int((_outside(pos, shape) & shows).sum()),
    }
    return table, class_names, fill


def _resolve_classes(
    table: pd.DataFrame, classes: Sequence[str] | None
) -> tuple[list[str], list[int]]:
    n = len(table)
    ids_in = (
        pd.to_numeric(table["class"], errors="coerce").to_numpy(float)
        if "class" in table
        else np.full(n, np.nan)
    )
    names_in = (
        [None if pd.isna(v) else str(v) for v in table["class_name"]]
        if "class_name" in table
        else [None] * n
    )
    bad_ids = np.isfinite(ids_in) & ((ids_in < 0) | (ids_in != np.round(ids_in)))
    if bad_ids.any():
        raise ValueError("class must hold non-negative integers")
    if classes is not None:
        class_names = [str(c) for c in classes]
        if not class_names or len(set(class_names)) != len(class_names):
            raise ValueError("classes must be a non-empty list of distinct names")
        ids: list[int] = []
        for cid, cname in zip(ids_in, names_in, strict=True):
            if cname is not None:
                if cname not in class_names:
                    raise ValueError(f"class name {cname!r} is not in classes {class_names}")
                ids.append(class_names.index(cname))
            elif np.isfinite(cid):
                if cid >= len(class_names):
                    raise ValueError(f"class id {int(cid)} has no name in classes {class_names}")
                ids.append(int(cid))
            else:
                ids.append(0)
        return class_names, ids
    # from the table: ids with their names; names without ids get the next free ids
    mapping: dict[int, str] = {}
    for cid, cname in zip(ids_in, names_in, strict=True):
        if np.isfinite(cid) and cname is not None:
            known = mapping.setdefault(int(cid), cname)
            if known != cname:
                raise ValueError(f"class {int(cid)} is named both {known!r} and {cname!r}")
    free_names = sorted(
        {c for cid, c in zip(ids_in, names_in, strict=True) if c is not None}
        - set(mapping.values())
    )
    next_id = max(mapping, default=-1) + 1
    for cname in free_names:
        mapping[next_id] = cname
        next_id += 1
    has_unknown = any(
        not np.isfinite(cid) and cname is None for cid, cname in zip(ids_in, names_in, strict=True)
    )
    if has_unknown and 0 not in mapping:
        mapping[0] = DEFAULT_CLASS
    ids_seen = {int(c) for c in ids_in[np.isfinite(ids_in)]}
    n_classes = max([*mapping, *ids_seen], default=0) + 1
    class_names = [
        mapping.get(k, DEFAULT_CLASS if k == 0 else f"class{k}") for k in range(n_classes)
    ]
    by_name = {v: k for k, v in mapping.items()}
    ids = []
    for cid, cname in zip(ids_in, names_in, strict=True):
        if np.isfinite(cid):
            ids.append(int(cid))
        elif cname is not None:
            ids.append(by_name[cname])
        else:
            ids.append(0)
    return class_names, ids


def _outside(pos: NDArray, shape: tuple[int, int]) -> NDArray[np.bool_]:
    """Positions whose pixel is not in the image (centre outside [-0.5, H - 0.5) etc.)."""
    h, w = shape
    return (pos[:, 0] < -0.5) | (pos[:, 0] >= h - 0.5) | (pos[:, 1] < -0.5) | (pos[:, 1] >= w - 0.5)


def _in_image(values: NDArray, length: int) -> NDArray[np.float64]:
    """Clamp coordinates into the image's half-open range [-0.5, length - 0.5)."""
    return np.clip(values, -0.5, np.nextafter(length - 0.5, -np.inf))


def _median_nn(pos: NDArray) -> float:
    if len(pos) < 2:
        return float("nan")
    from scipy.spatial import cKDTree

    dist = cKDTree(pos).query(pos, k=2)[0][:, 1]
    dist = dist[dist > 0]
    return float(np.median(dist)) if len(dist) else float("nan")


def _stretch(image: NDArray, lo: float, hi: float) -> NDArray[np.uint8]:
    if hi <= lo:
        lo, hi = float(image.min()), float(image.max())
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return np.clip(np.rint((image - lo) * scale), 0, 255).astype(np.uint8)


def _write_label_set(
    folder: Path,
    stem: str,
    png: NDArray[np.uint8],
    data: NDArray,
    table: pd.DataFrame,
    class_names: list[str],
    formats: tuple[str, ...],
    final_folder: Path,
    pixel_size_nm: float | None,
    content: tuple[int, int],
) -> list[str]:
    """Write one image (png + tif) and its labels; ``content`` is the unpadded (H, W)."""
    import imageio.v3 as iio

    from .images import write_tiff

    shape = (int(png.shape[0]), int(png.shape[1]))
    files = [f"{stem}.png", f"{stem}.tif"]
    iio.imwrite(folder / f"{stem}.png", png, extension=".png")
    write_tiff(folder / f"{stem}.tif", data, pixel_size_nm=pixel_size_nm)
    clipped = _clip_boxes(table, content)
    if "yolo" in formats:
        yolo = boxes_to_yolo(clipped, shape)
        lines = [
            f"{int(c)} {q[0]:.{YOLO_DECIMALS}f} {q[1]:.{YOLO_DECIMALS}f} "
            f"{q[2]:.{YOLO_DECIMALS}f} {q[3]:.{YOLO_DECIMALS}f}\n"
            for c, q in zip(table["class"], yolo, strict=True)
        ]
        (folder / f"{stem}.txt").write_text("".join(lines), encoding="utf-8")
        (folder / CLASSES_FILE).write_text("".join(f"{c}\n" for c in class_names), "utf-8")
        files += [f"{stem}.txt", CLASSES_FILE]
    if "voc" in formats:
        xml = _voc_xml(
            boxes_to_voc(clipped, shape),
            list(table["class_name"]),
            shape,
            folder_name=final_folder.name,
            filename=f"{stem}.png",
            path=str(final_folder / f"{stem}.png"),
        )
        (folder / f"{stem}.xml").write_text(xml, encoding="utf-8")
        files.append(f"{stem}.xml")
    if "csv" in formats:
        table.to_csv(folder / f"{stem}{CSV_SUFFIX}", index=False)
        files.append(f"{stem}{CSV_SUFFIX}")
    return files


def _clip_boxes(table: pd.DataFrame, content: tuple[int, int]) -> NDArray[np.float64]:
    """Boxes clipped to the image content (corner coordinates [0, W] × [0, H])."""
    h, w = content
    b = table[list(BOX_COLUMNS)].to_numpy(float).reshape(-1, 4)
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], -0.5, h - 0.5)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], -0.5, w - 0.5)
    return b


def _voc_xml(
    voc: NDArray[np.int64],
    names: list[str],
    shape: tuple[int, int],
    *,
    folder_name: str,
    filename: str,
    path: str,
) -> str:
    """Pascal VOC XML laid out element by element as labelImg's ``PascalVocWriter`` writes it."""
    h, w = shape
    top = ET.Element("annotation")
    ET.SubElement(top, "folder").text = folder_name
    ET.SubElement(top, "filename").text = filename
    ET.SubElement(top, "path").text = path
    source = ET.SubElement(top, "source")
    ET.SubElement(source, "database").text = "Unknown"
    size = ET.SubElement(top, "size")
    ET.SubElement(size, "width").text = str(w)
    ET.SubElement(size, "height").text = str(h)
    ET.SubElement(size, "depth").text = "1"
    ET.SubElement(top, "segmented").text = "0"
    for (xmin, ymin, xmax, ymax), label in zip(voc.tolist(), names, strict=True):
        obj = ET.SubElement(top, "object")
        ET.SubElement(obj, "name").text = str(label)
        ET.SubElement(obj, "pose").text = "Unspecified"
        # labelImg's rule: a box touching the last row/column or the first (1) is truncated
        truncated = ymax == h or ymin == 1 or xmax == w or xmin == 1
        ET.SubElement(obj, "truncated").text = "1" if truncated else "0"
        ET.SubElement(obj, "difficult").text = "0"
        box = ET.SubElement(obj, "bndbox")
        for tag, value in (("xmin", xmin), ("ymin", ymin), ("xmax", xmax), ("ymax", ymax)):
            ET.SubElement(box, tag).text = str(int(value))
    ET.indent(top, space="\t")  # labelImg pretty-prints with tabs, without an XML declaration
    return ET.tostring(top, encoding="unicode") + "\n"


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    step = tile - overlap
    n = max(1, math.ceil((length - overlap) / step))
    return [i * step for i in range(n)]


def _write_tiles(
    folder: Path,
    name: str,
    png: NDArray[np.uint8],
    data: NDArray,
    table: pd.DataFrame,
    class_names: list[str],
    formats: tuple[str, ...],
    final_folder: Path,
    pixel_size_nm: float | None,
    tile: int,
    overlap: int,
) -> list[dict[str, Any]]:
    tiles_dir = folder / "tiles"
    tiles_dir.mkdir()
    final_tiles = final_folder / "tiles"
    h, w = data.shape
    png_pad = np.uint8(np.median(png))
    data_pad = np.median(data)
    if np.issubdtype(data.dtype, np.integer) or data.dtype == bool:
        data_pad = np.rint(data_pad)
    data_pad = np.asarray(data_pad).astype(data.dtype)
    # atoms just beyond the border (their box still shows) belong to the edge tile
    y = _in_image(table["y"].to_numpy(float), h)
    x = _in_image(table["x"].to_numpy(float), w)
    records = []
    for row, r0 in enumerate(_tile_starts(h, tile, overlap)):
        for col, c0 in enumerate(_tile_starts(w, tile, overlap)):
            th, tw = min(tile, h - r0), min(tile, w - c0)
            stem = f"{name}_r{row}_c{col}"
            tile_png = np.full((tile, tile), png_pad, np.uint8)
            tile_png[:th, :tw] = png[r0 : r0 + th, c0 : c0 + tw]
            tile_data = np.full((tile, tile), data_pad, data.dtype)
            tile_data[:th, :tw] = data[r0 : r0 + th, c0 : c0 + tw]
            keep = (y >= r0 - 0.5) & (y < r0 + th - 0.5) & (x >= c0 - 0.5) & (x < c0 + tw - 0.5)
            local = table.loc[keep].reset_index(drop=True)
            for col_name in ("y", "y0", "y1"):
                local[col_name] = local[col_name] - r0
            for col_name in ("x", "x0", "x1"):
                local[col_name] = local[col_name] - c0
            _write_label_set(
                tiles_dir,
                stem,
                tile_png,
                tile_data,
                local,
                class_names,
                formats,
                final_tiles,
                pixel_size_nm,
                (th, tw),
            )
            records.append(
                {
                    "name": stem,
                    "row": row,
                    "col": col,
                    "y0": r0,
                    "x0": c0,
                    "height": th,
                    "width": tw,
                    "n_atoms": len(local),
                }
            )
    return records


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def write_atoms_csv(
    table: pd.DataFrame,
    path: str | os.PathLike,
    *,
    provenance: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write an atoms table as CSV with exact floats (and a provenance JSON beside it), atomically.

    Unlike :func:`napari_atomnet.io.write_csv` (4 decimals), floats are written with Python's
    shortest round-trip representation, so :func:`read_atoms_csv` gives the same numbers back.

    Parameters
    ----------
    table : pandas.DataFrame
        The table; its index is not written.
    path : path-like
        CSV destination; the provenance goes to the same name with ``.json``.
    provenance : mapping, optional
        Written beside the CSV when given.
    overwrite : bool
        Replace existing files; without it nothing is written when either exists.

    Returns
    -------
    pathlib.Path
    """
    path = Path(path)
    json_path = path.with_suffix(".json")
    if not overwrite:
        for p in (path, json_path) if provenance is not None else (path,):
            if p.exists():
                raise ExportExistsError(p)
    with atomic_path(path, overwrite=overwrite) as tmp:
        table.to_csv(tmp, index=False)
    if provenance is not None:
        with atomic_path(json_path, overwrite=overwrite) as tmp:
            tmp.write_text(
                json.dumps(dict(provenance), indent=2, default=_json_default), encoding="utf-8"
            )
    return path


# --------------------------------------------------------------------------------------------
# import


def import_labels(
    path: str | os.PathLike, *, image_path: str | os.PathLike | None = None
) -> tuple[NDArray | None, pd.DataFrame, dict[str, Any]]:
    """Read atom labels for one image: an export folder, a labelImg (VOC) or a YOLO label set.

    Parameters
    ----------
    path : path-like
        One of: an export folder written by :func:`export_labels`; a folder holding labels for
        exactly one image (else see :func:`list_label_images`); a label file (``<stem>.xml``,
        ``<stem>.txt`` with ``classes.txt`` beside it or one folder up, ``<stem>_atoms.csv``); or
        an image file, whose labels are looked for beside it by stem.
    image_path : path-like, optional
        The image the labels belong to (default: looked for by stem beside the labels, or in a
        sibling ``images/`` folder of a ``labels/`` folder).  YOLO boxes are normalised, so YOLO
        labels need it (or an export's ``provenance.json``) for the image size.

    Returns
    -------
    image : ndarray or None
        The image (an export's ``.tif``, i.e. the original data; RGB images are averaged to
        grey), or None when none was found.
    atoms : pandas.DataFrame
        ``y, x, class, class_name, y0, x0, y1, x1, source`` (px, row/col, pixel-centre
        convention) plus any other columns a CSV holds; ``source`` is ``"imported"`` unless the
        CSV says otherwise.
    info : dict
        ``format`` ("csv", "yolo" or "voc"), ``label_path``, ``image_path``, ``shape``,
        ``classes``, ``precision_px`` (rounding bound of the positions: 0 for the CSV,
        ``0.5e-6 · max(H, W)`` for YOLO, 0.5 for VOC), ``provenance`` (an export's record, or
        None), ``n_difficult`` (VOC) and ``warnings``.

    Raises
    ------
    ValueError
        If nothing importable is found, or a file is malformed (the message names the file).
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"no such file or folder: {path}")
    if path.is_dir():
        if _is_export(path):
            return _import_export(path, image_path)
        items = list_label_images(path)
        if not items:
            raise ValueError(
                f"{path}: no labels found (expected an export folder, Pascal VOC .xml, "
                "YOLO .txt + classes.txt, or *_atoms.csv files)"
            )
        if len(items) > 1:
            shown = ", ".join(p.name for p in items[:3])
            raise ValueError(
                f"{path} holds labels for {len(items)} images ({shown}, …); import one of them "
                "(list_label_images lists them)"
            )
        return import_labels(items[0], image_path=image_path)
    suffix = path.suffix.lower()
    if suffix in LABEL_IMAGE_SUFFIXES:
        found = _labels_beside(path.parent, path.stem, _FOLDER_ORDER)
        if found is None:
            raise ValueError(f"{path.name}: no labels with the same name beside it")
        return _import_file(found[1], found[0], image_path or path, None)
    if path.name.endswith(CSV_SUFFIX) or suffix == ".csv":
        return _import_file(path, "csv", image_path, None)
    if suffix == ".xml":
        return _import_file(path, "voc", image_path, None)
    if suffix == ".txt":
        if path.name == CLASSES_FILE:
            raise ValueError(f"{path.name} lists class names; import a label file or folder")
        return _import_file(path, "yolo", image_path, None)
    raise ValueError(f"{path.name}: not a label file (.xml, .txt, .csv), image or folder")


def list_label_images(folder: str | os.PathLike) -> list[Path]:
    """List the labelled images in a folder, one importable path per image.

    Parameters
    ----------
    folder : path-like
        An export folder, a folder of export folders, or a folder of label files (labelImg's
        Pascal VOC ``.xml``, YOLO ``.txt`` + ``classes.txt``, ``*_atoms.csv``; a ``labels/``
        sub-folder in the Ultralytics layout is searched when the folder has none itself).

    Returns
    -------
    list of pathlib.Path
        Sorted; each one is accepted by :func:`import_labels`: export folders, or for other
        folders the label file chosen for each image stem (CSV, then VOC, then YOLO).

    Raises
    ------
    ValueError
        If ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"not a folder: {folder}")
    if _is_export(folder):
        return [folder]
    subs = sorted(
        p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and _is_export(p)
    )
    if subs:
        return subs
    stems: dict[str, dict[str, Path]] = {}
    for f in sorted(folder.iterdir()):
        kind = _label_kind(f)
        if kind is None:
            continue
        stem = f.name[: -len(CSV_SUFFIX)] if kind == "csv" else f.stem
        stems.setdefault(stem, {})[kind] = f
    found = [next(d[k] for k in _FOLDER_ORDER if k in d) for _, d in sorted(stems.items())]
    if not found and (folder / "labels").is_dir():
        return list_label_images(folder / "labels")
    return found


def _label_kind(f: Path) -> str | None:
    if not f.is_file() or f.name.startswith("."):
        return None
    if f.name.endswith(CSV_SUFFIX):
        return "csv"
    suffix = f.suffix.lower()
    if suffix == ".xml":
        return "voc"
    if suffix == ".txt" and f.name != CLASSES_FILE and _looks_like_yolo(f):
        return "yolo"
    return None


def _looks_like_yolo(f: Path) -> bool:
    try:
        _parse_yolo(f)
    except (ValueError, OSError, UnicodeDecodeError):
        return False
    return True


def _is_export(folder: Path) -> bool:
    prov = folder / PROVENANCE_FILE
    if not prov.is_file():
        return False
    try:
        record = json.loads(prov.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("kind") == LABELS_KIND


def _labels_beside(folder: Path, stem: str, order: Sequence[str]) -> tuple[str, Path] | None:
    candidates = {
        "csv": folder / f"{stem}{CSV_SUFFIX}",
        "voc": folder / f"{stem}.xml",
        "yolo": folder / f"{stem}.txt",
    }
    for kind in order:
        if candidates[kind].is_file():
            return kind, candidates[kind]
    return None


def _import_export(
    folder: Path, image_path: str | os.PathLike | None
) -> tuple[NDArray | None, pd.DataFrame, dict[str, Any]]:
    record = json.loads((folder / PROVENANCE_FILE).read_text(encoding="utf-8"))
    name = str(record.get("name", folder.name))
    found = _labels_beside(folder, name, _EXPORT_ORDER)
    if found is None:
        raise ValueError(f"{folder}: the export holds no labels for {name!r}")
    if image_path is None:
        for suffix in (".tif", ".png"):
            if (folder / f"{name}{suffix}").is_file():
                image_path = folder / f"{name}{suffix}"
                break
    return _import_file(found[1], found[0], image_path, record)


def _find_image(label: Path, stem: str, hint: str | None = None) -> Path | None:
    folders = [label.parent]
    if label.parent.name == "labels":
        folders.append(label.parent.parent / "images")
    for folder in folders:
        if hint and (folder / hint).is_file():
            return folder / hint
        for suffix in LABEL_IMAGE_SUFFIXES:
            for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
                if candidate.is_file():
                    return candidate
    return None


def _read_any_image(path: Path, warnings: list[str]) -> NDArray:
    from .images import ImageReadError, read_image

    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff", ".png", ".npy"):
        data = read_image(path).data
    else:
        try:
            import imageio.v3 as iio

            data = np.asarray(iio.imread(path))
        except Exception as err:
            raise ImageReadError(f"{path.name}: cannot read ({type(err).__name__}: {err})") from err
    if data.ndim == 3 and data.shape[-1] in (3, 4):
        warnings.append(f"{path.name} is RGB(A); averaged to grey")
        data = data[..., :3].astype(np.float32).mean(axis=-1)
    if data.ndim != 2:
        raise ValueError(f"{path.name}: expected a 2D image, got shape {data.shape}")
    return data


def _import_file(
    label: Path,
    kind: str,
    image_path: str | os.PathLike | None,
    record: dict[str, Any] | None,
) -> tuple[NDArray | None, pd.DataFrame, dict[str, Any]]:
    warnings: list[str] = []
    stem = label.name[: -len(CSV_SUFFIX)] if label.name.endswith(CSV_SUFFIX) else label.stem
    if record is None and kind == "csv" and _is_export(label.parent):
        record = json.loads((label.parent / PROVENANCE_FILE).read_text(encoding="utf-8"))
    voc_meta: dict[str, Any] = {}
    if kind == "voc":
        voc_meta = _parse_voc(label)
    img_file = Path(image_path) if image_path is not None else None
    if img_file is None:
        img_file = _find_image(label, stem, voc_meta.get("filename"))
    if img_file is not None and not img_file.is_file():
        raise ValueError(f"no such image file: {img_file}")
    image = _read_any_image(img_file, warnings) if img_file is not None else None
    shape: tuple[int, int] | None = (
        (int(image.shape[0]), int(image.shape[1])) if image is not None else None
    )
    if record and record.get("name") == stem and record.get("image", {}).get("shape"):
        shape = shape or tuple(int(v) for v in record["image"]["shape"][:2])  # type: ignore[assignment]
    classes = _read_classes(label)
    if classes is None and record and record.get("name") == stem:
        classes = record.get("classes")

    if kind == "csv":
        atoms = _read_atoms_csv(label, classes)
        precision = 0.0
    elif kind == "yolo":
        if shape is None:
            raise ValueError(
                f"{label.name}: YOLO boxes are normalised; the image is needed for its size "
                "(none found beside the labels; pass image_path)"
            )
        rows = _parse_yolo(label)
        ids = [r[0] for r in rows]
        if classes is None:
            warnings.append(f"no {CLASSES_FILE} found; classes named by their ids")
            classes = [f"class{k}" for k in range(max(ids, default=-1) + 1)] or [DEFAULT_CLASS]
        if any(i >= len(classes) for i in ids):
            raise ValueError(
                f"{label.name}: class id {max(ids)} but {CLASSES_FILE} names {len(classes)}"
            )
        boxes = yolo_to_boxes([r[1:] for r in rows], shape)
        atoms = _atoms_from_boxes(boxes, ids, [classes[i] for i in ids])
        precision = 0.5 * 10.0**-YOLO_DECIMALS * max(shape)
    else:
        vshape = voc_meta["shape"]
        if vshape is None:
            if shape is None:
                raise ValueError(f"{label.name}: no <size> and no image to take it from")
            vshape = shape
        elif shape is not None and tuple(vshape) != shape:
            warnings.append(f"{label.name} says {vshape}, the image is {shape}; using the XML")
        shape = tuple(vshape)  # type: ignore[assignment]
        names = voc_meta["names"]
        classes = list(classes or [])
        for n in sorted(set(names) - set(classes)):
            classes.append(n)
        if not classes:
            classes = [DEFAULT_CLASS]
        boxes = voc_to_boxes(voc_meta["boxes"])
        atoms = _atoms_from_boxes(boxes, [classes.index(n) for n in names], names)
        precision = 0.5
    if "source" not in atoms:
        atoms["source"] = "imported"
    else:
        atoms["source"] = atoms["source"].where(atoms["source"].notna(), "imported")
    if classes is None and "class_name" in atoms:
        classes = _classes_from_table(atoms)
    info = {
        "format": kind,
        "label_path": str(label),
        "image_path": str(img_file) if img_file is not None else None,
        "shape": list(shape) if shape is not None else None,
        "classes": classes,
        "precision_px": precision,
        "provenance": record,
        "n_atoms": len(atoms),
        "n_difficult": int(voc_meta.get("n_difficult", 0)),
        "warnings": warnings,
    }
    return image, atoms, info


def _classes_from_table(atoms: pd.DataFrame) -> list[str]:
    pairs = atoms[["class", "class_name"]].dropna().drop_duplicates()
    mapping = {int(c): str(n) for c, n in zip(pairs["class"], pairs["class_name"], strict=True)}
    return [mapping.get(k, f"class{k}") for k in range(max(mapping, default=-1) + 1)]


def _read_classes(label: Path) -> list[str] | None:
    for folder in (label.parent, label.parent.parent):
        f = folder / CLASSES_FILE
        if f.is_file():
            names = [ln.strip() for ln in f.read_text(encoding="utf-8").splitlines()]
            return [n for n in names if n]
    return None


def read_atoms_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read an atoms CSV with its floats exactly as written (see :func:`write_atoms_csv`).

    Parameters
    ----------
    path : path-like
        CSV with at least the columns ``y, x``.

    Returns
    -------
    pandas.DataFrame

    Raises
    ------
    ValueError
        If the file is missing, cannot be parsed, or lacks ``y`` or ``x``.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    # pandas >= 3 parses floats exactly by default (and deprecates the option)
    exact = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}
    try:
        table = pd.read_csv(path, **exact)
    except Exception as err:
        raise ValueError(f"{path.name}: cannot read as CSV ({err})") from err
    missing = [c for c in ("y", "x") if c not in table.columns]
    if missing:
        raise ValueError(f"{path.name}: missing column(s) {', '.join(missing)}")
    return table


def _read_atoms_csv(path: Path, classes: list[str] | None) -> pd.DataFrame:
    table = read_atoms_csv(path)
    if "class" not in table and "class_name" in table:
        names = [DEFAULT_CLASS if pd.isna(n) else str(n) for n in table["class_name"]]
        order = list(classes or []) + sorted(set(names) - set(classes or []))
        table["class_name"] = names
        table["class"] = [order.index(n) for n in names]
    if "class" not in table:
        table["class"] = 0
    if "class_name" not in table:
        ids = table["class"]
        table["class_name"] = [
            classes[int(i)] if classes and 0 <= int(i) < len(classes) else DEFAULT_CLASS
            for i in ids
        ]
    for col in BOX_COLUMNS:
        if col not in table:
            table[col] = np.nan
    front = [c for c in LABEL_COLUMNS if c in table]
    return table[front + [c for c in table.columns if c not in front]]


def _parse_yolo(path: Path) -> list[tuple[int, float, float, float, float]]:
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            cid_f = float(parts[0])
            q = [float(v) for v in parts[1:5]]
        except ValueError:
            q = []
            cid_f = -1.0
        if len(q) != 4 or cid_f < 0 or not cid_f.is_integer() or not np.isfinite(q).all():
            raise ValueError(f"{path.name}:{lineno}: not a YOLO line 'class cx cy w h': {line!r}")
        rows.append((int(cid_f), q[0], q[1], q[2], q[3]))
    return rows


def _parse_voc(path: Path) -> dict[str, Any]:
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as err:
        raise ValueError(f"{path.name}: not readable XML ({err})") from err
    if root.tag != "annotation":
        raise ValueError(f"{path.name}: not a Pascal VOC annotation (root <{root.tag}>)")
    shape = None
    size = root.find("size")
    if size is not None:
        try:
            w, h = int(float(size.findtext("width", ""))), int(float(size.findtext("height", "")))
            shape = (h, w) if h > 0 and w > 0 else None
        except ValueError:
            shape = None
    names, boxes, n_difficult = [], [], 0
    for i, obj in enumerate(root.findall("object"), start=1):
        box = obj.find("bndbox")
        name = (obj.findtext("name") or "").strip()
        if box is None or not name:
            raise ValueError(f"{path.name}: object {i} lacks <name> or <bndbox>")
        try:
            vals = [float(box.findtext(t, "")) for t in ("xmin", "ymin", "xmax", "ymax")]
        except ValueError as err:
            raise ValueError(f"{path.name}: object {i} has a bad <bndbox> ({err})") from err
        if vals[2] <= vals[0] or vals[3] <= vals[1]:
            raise ValueError(f"{path.name}: object {i} has an empty box {vals}")
        n_difficult += (obj.findtext("difficult") or "0").strip() in ("1", "true", "True")
        names.append(name)
        boxes.append(vals)
    return {
        "shape": shape,
        "filename": root.findtext("filename"),
        "names": names,
        "boxes": np.asarray(boxes, float).reshape(-1, 4),
        "n_difficult": n_difficult,
    }


def _atoms_from_boxes(boxes: NDArray, ids: list[int], names: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "y": (boxes[:, 0] + boxes[:, 2]) / 2,
            "x": (boxes[:, 1] + boxes[:, 3]) / 2,
            "class": np.asarray(ids, dtype=np.int64),
            "class_name": pd.Series(names, dtype=object),
            "y0": boxes[:, 0],
            "x0": boxes[:, 1],
            "y1": boxes[:, 2],
            "x1": boxes[:, 3],
            "source": "imported",
        }
    )
