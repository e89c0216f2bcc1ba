"""CSV tables with a provenance JSON beside them."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._atomic import ExportExistsError, atomic_path


def provenance_path(csv_path: str | os.PathLike) -> Path:
    """Return the provenance JSON path that belongs to a CSV (``atoms.csv`` → ``atoms.json``)."""
    return Path(csv_path).with_suffix(".json")


def write_csv(
    table: pd.DataFrame,
    path: str | os.PathLike,
    *,
    provenance: dict[str, Any] | None = None,
    overwrite: bool = False,
    float_format: str = "%.4f",
) -> Path:
    """Write a table as CSV with a header, and its provenance as JSON beside it, atomically.

    Parameters
    ----------
    table : pandas.DataFrame
        The table; its index is not written.
    path : path-like
        CSV destination.
    provenance : dict, optional
        What made the table (plugin version, model, parameters, source); written to
        :func:`provenance_path` of ``path``.
    overwrite : bool
        Replace existing files.  Without it, nothing is written when either file exists.
    float_format : str
        printf format for floats (4 decimals keep 1e-4 px precision).

    Returns
    -------
    pathlib.Path
        The CSV path.
    """
    path = Path(path)
    json_path = provenance_path(path)
    if not overwrite:
        for p in (path, json_path) if provenance is not None else (path,):
            if p.exists():
                raise ExportExistsError(p)
    columns = _text_columns(table, float_format)
    with atomic_path(path, overwrite=overwrite) as tmp:
        if columns is None:  # nullable / categorical / date columns: pandas formats them
            table.to_csv(tmp, index=False, float_format=float_format)
        else:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh, lineterminator="\n")
                writer.writerow(table.columns)
                writer.writerows(zip(*columns, strict=True))
    if provenance is not None:
        with atomic_path(json_path, overwrite=overwrite) as tmp:
            tmp.write_text(json.dumps(provenance, indent=2, default=str), encoding="utf-8")
    return path


def _text_columns(table: pd.DataFrame, float_format: str) -> list[list[Any]] | None:
    """Return the cells of ``table`` as pandas' ``to_csv`` writes them, by column (or None).

    pandas formats every float through Python-level code per cell, which cost more than the
    analysis of a frame in batch runs; here each column is formatted in one pass (the same
    printf format, NaN as an empty cell, integers and booleans as ``str`` does).  Columns of
    other dtypes give None: the caller lets pandas write the table.
    """
    if not all(isinstance(name, str) for name in table.columns):
        return None
    columns: list[list[Any]] = []
    for name in table.columns:
        series = table[name]
        dtype = series.dtype
        if isinstance(dtype, np.dtype) and dtype.kind == "f":
            values = series.to_numpy()
            text = list(map(float_format.__mod__, values.tolist()))
            for i in np.flatnonzero(np.isnan(values)).tolist():
                text[i] = ""
            columns.append(text)
        elif isinstance(dtype, np.dtype) and dtype.kind in "iub":
            columns.append(series.to_numpy().tolist())
        elif pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype):
            cells = series.tolist()
            if not all(isinstance(v, str) or _missing(v) for v in cells):
                return None
            columns.append(["" if _missing(v) else v for v in cells])
        else:
            return None
    return columns


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def read_csv(path: str | os.PathLike, *, required: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a CSV table and check it has the ``required`` columns.

    Parameters
    ----------
    path : path-like
        CSV file.
    required : tuple of str
        Column names that must be present.

    Returns
    -------
    pandas.DataFrame

    Raises
    ------
    ValueError
        If the file cannot be parsed or lacks a required column.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    try:
        table = pd.read_csv(path)
    except Exception as err:
        raise ValueError(f"{path.name}: cannot read as CSV ({err})") from err
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ValueError(f"{path.name}: missing column(s) {', '.join(missing)}")
    return table
