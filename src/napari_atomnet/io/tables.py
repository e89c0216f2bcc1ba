"""CSV tables with a provenance JSON beside them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

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
                raise ExportExistsError(f"{p} exists; choose another name or allow overwriting")
    with atomic_path(path, overwrite=overwrite) as tmp:
        table.to_csv(tmp, index=False, float_format=float_format)
    if provenance is not None:
        with atomic_path(json_path, overwrite=overwrite) as tmp:
            tmp.write_text(json.dumps(provenance, indent=2, default=str), encoding="utf-8")
    return path


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
