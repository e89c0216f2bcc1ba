"""Layer names, layer construction and replace-in-place for the dock widgets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._provenance import METADATA_KEY

if TYPE_CHECKING:
    import napari

#: Boxes beyond this count are not drawn (napari's Shapes layer gets slow); they stay in tables.
MAX_BOXES = 20_000

CLASS_COLOURS = np.array(
    [[1.0, 0.25, 0.25, 1.0], [0.25, 0.8, 1.0, 1.0], [1.0, 0.8, 0.2, 1.0], [0.7, 0.4, 1.0, 1.0]]
)
# semi-transparent, so the peak under a marker stays visible while curating
FIT_OK_COLOUR = np.array([1.0, 0.2, 0.2, 0.7])  # seed 000: fitted peaks red
FALLBACK_COLOUR = np.array([0.2, 1.0, 0.2, 0.7])  # fallbacks to the box centre green


def layer_name(kind: str, image_name: str) -> str:
    """Return the name of a result layer, e.g. ``"Atoms (haadf_01)"``."""
    return f"{kind} ({image_name})"


def geometry(image_layer: napari.layers.Image) -> dict[str, Any]:
    """Return scale and translate of the image's last two axes, for result layers."""
    return {
        "scale": tuple(np.asarray(image_layer.scale)[-2:]),
        "translate": tuple(np.asarray(image_layer.translate)[-2:]),
    }


def same_geometry(layer: Any, image_layer: Any) -> bool:
    """Tell whether a layer's (y, x) data coordinates are the image's pixels.

    True when both map their last two axes to the world alike (scale, translate, rotation,
    shear): then the layer's data can be used on the image array as it is.
    """
    probe = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0))
    here = [np.asarray(layer.data_to_world(p), float)[-2:] for p in probe]
    there = [np.asarray(image_layer.data_to_world(p), float)[-2:] for p in probe]
    return bool(np.allclose(here, there, rtol=1e-9, atol=1e-9))


def image_pixels(layer: Any, image_layer: Any, coords: Any) -> np.ndarray:
    """Return positions in a layer's data coordinates as (y, x) pixels of an image layer.

    Through world coordinates, so a layer drawn or loaded at another scale or offset than the
    image (e.g. points in nm over an image in pixels) lands where it is shown.
    """
    coords = np.atleast_2d(np.asarray(coords, dtype=float))
    if same_geometry(layer, image_layer):
        return coords[:, -2:].copy()
    return np.array(
        [image_layer.world_to_data(layer.data_to_world(c))[-2:] for c in coords], dtype=float
    ).reshape(-1, 2)


def atoms_table(layer: Any, image_layer: Any = None) -> pd.DataFrame:
    """Return the atoms table of a Points layer: features, with positions from its data.

    Positions come from ``layer.data`` so points the user moved or added by hand count; with
    ``image_layer`` they are given in that image's pixels (:func:`image_pixels`).
    """
    table = layer.features.copy().reset_index(drop=True)
    yx = layer.data[:, -2:] if image_layer is None else image_pixels(layer, image_layer, layer.data)
    table["y"], table["x"] = yx[:, 0], yx[:, 1]
    return table


def atoms_points(
    atoms: pd.DataFrame,
    image_layer: napari.layers.Image,
    provenance: dict[str, Any],
    *,
    spacing: float | None = None,
) -> Any:
    """Build the ``Atoms (<image>)`` Points layer (not yet added to a viewer)."""
    from napari.layers import Points

    size = _marker_size(atoms, spacing)
    atoms = atoms.reset_index(drop=True)
    if "source" not in atoms:
        atoms = atoms.assign(source="model")
    return Points(
        atoms[["y", "x"]].to_numpy(float),
        name=layer_name("Atoms", image_layer.name),
        features=atoms,
        feature_defaults=_atom_defaults(atoms),
        face_color=atom_colours(atoms),
        border_color="black",
        border_width=0.1,
        size=size,
        metadata={METADATA_KEY: provenance},
        **geometry(image_layer),
    )


def boxes_shapes(
    atoms: pd.DataFrame, image_layer: napari.layers.Image, provenance: dict[str, Any]
) -> Any | None:
    """Build the ``Boxes (<image>)`` Shapes layer, or None when there are too many boxes."""
    from napari.layers import Shapes

    if len(atoms) > MAX_BOXES or not {"y0", "x0", "y1", "x1"} <= set(atoms.columns):
        return None
    corners = np.stack(
        [atoms[["y0", "x0"]].to_numpy(float), atoms[["y1", "x1"]].to_numpy(float)], axis=1
    )
    cls = atoms["class"].to_numpy(int) if "class" in atoms else np.zeros(len(atoms), int)
    return Shapes(
        list(corners),
        shape_type="rectangle",
        name=layer_name("Boxes", image_layer.name),
        edge_color=CLASS_COLOURS[np.clip(cls, 0, len(CLASS_COLOURS) - 1)] if len(atoms) else "red",
        edge_width=max(
            0.3, 0.04 * float(np.median(corners[:, 1, 0] - corners[:, 0, 0])) if len(atoms) else 0.5
        ),
        face_color="transparent",
        opacity=0.8,
        features=atoms[["score", "class"]].reset_index(drop=True) if len(atoms) else None,
        metadata={METADATA_KEY: provenance},
        **geometry(image_layer),
    )


def atom_colours(atoms: pd.DataFrame) -> np.ndarray:
    """Face colours: red where the Gaussian fit succeeded, green for fallbacks, else by class."""
    if len(atoms) == 0:
        return np.empty((0, 4))
    if "fit_ok" in atoms:
        ok = atoms["fit_ok"].fillna(False).to_numpy(bool)
        return np.where(ok[:, None], FIT_OK_COLOUR, FALLBACK_COLOUR)
    cls = atoms["class"].to_numpy(int) if "class" in atoms else np.zeros(len(atoms), int)
    return CLASS_COLOURS[np.clip(cls, 0, len(CLASS_COLOURS) - 1)]


def replace_layer(viewer: napari.Viewer, layer: Any) -> Any:
    """Add ``layer``, replacing (at the same place in the list) a layer of the same name."""
    if layer.name in viewer.layers:
        old = viewer.layers[layer.name]
        index = viewer.layers.index(old)
        was_selected = old in viewer.layers.selection
        viewer.layers.remove(old)
        viewer.layers.insert(index, layer)
        if was_selected:
            viewer.layers.selection.add(layer)
        return layer
    return viewer.add_layer(layer)


def remove_layer(viewer: napari.Viewer, name: str) -> None:
    """Remove a layer by name if it exists."""
    if name in viewer.layers:
        viewer.layers.remove(viewer.layers[name])


def _marker_size(atoms: pd.DataFrame, spacing: float | None) -> float:
    if spacing is None or not np.isfinite(spacing):
        if len(atoms) > 1:
            from scipy.spatial import cKDTree

            pts = atoms[["y", "x"]].to_numpy(float)
            spacing = float(np.median(cKDTree(pts).query(pts, k=2)[0][:, 1]))
        else:
            spacing = 10.0
    return max(2.0, 0.22 * spacing)


def _atom_defaults(atoms: pd.DataFrame) -> dict[str, Any]:
    """Feature values for atoms added by hand: marked manual, not yet fitted."""
    defaults: dict[str, Any] = {}
    for column, dtype in atoms.dtypes.items():
        if pd.api.types.is_bool_dtype(dtype):
            defaults[column] = False
        elif pd.api.types.is_integer_dtype(dtype):
            defaults[column] = 0
        elif pd.api.types.is_numeric_dtype(dtype):
            defaults[column] = np.nan
        else:
            defaults[column] = ""
    defaults.update(source="manual")
    if "fit_status" in defaults:
        defaults["fit_status"] = "manual"
    return defaults
