"""Small pieces shared by the dock widgets: layer pickers, frames of stacks, messages."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import napari


def image_layers(viewer: napari.Viewer) -> list[tuple[str, Any]]:
    """Return (name, layer) choices of every Image layer, for a ComboBox."""
    from napari.layers import Image

    return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, Image)]


def current_frame(viewer: napari.Viewer, layer: napari.layers.Image) -> tuple[np.ndarray, tuple]:
    """Return the 2D frame of ``layer`` shown now, and its index in the leading axes.

    For a 2D image this is the image itself and ``()``; for a T×Y×X (or any N-D) stack it is the
    plane at the viewer's current position.  Lazy (dask) data is read for this frame only.
    """
    data = layer.data
    if layer.rgb or data.ndim <= 2:
        return np.asarray(data), ()
    point = np.asarray(layer.world_to_data(viewer.dims.point))[: data.ndim - 2]
    index = tuple(
        int(np.clip(round(float(v)), 0, n - 1)) for v, n in zip(point, data.shape, strict=False)
    )
    return np.asarray(data[index]), index


def notify_error(message: str) -> None:
    """Show an error notification in napari (and nothing else changes)."""
    from napari.utils.notifications import show_error

    show_error(message)


def notify_info(message: str) -> None:
    """Show an information notification in napari."""
    from napari.utils.notifications import show_info

    show_info(message)
