"""What made a result: stored in ``layer.metadata['napari_atomnet']`` and beside every export."""

from __future__ import annotations

import datetime as _dt
import platform
from typing import Any

from ._version import __version__

#: Key under which provenance is kept in a napari layer's metadata.
METADATA_KEY = "napari_atomnet"


def make_provenance(
    step: str,
    params: dict[str, Any] | None = None,
    *,
    model: dict[str, Any] | None = None,
    source: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the provenance record of one analysis step.

    Parameters
    ----------
    step : str
        What was done (``"detect"``, ``"refine"``, ``"cells"``, …).
    params : dict, optional
        The parameters that were used.
    model : dict, optional
        ``{"name": ..., "sha256": ...}`` of the model, where one was used.
    source : str, optional
        The source image (layer name or file path).
    extra : dict, optional
        Anything else worth keeping (e.g. counts of hand edits).

    Returns
    -------
    dict
        JSON-serialisable record with the plugin version and a UTC timestamp.
    """
    record: dict[str, Any] = {
        "plugin": "napari-atomnet",
        "version": __version__,
        "step": step,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "params": dict(params or {}),
        "model": model,
        "source": source,
    }
    if extra:
        record.update(extra)
    return record
