"""The "Lattice" dock widget: unit cells, B sites, displacements and strain."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox

from .._provenance import METADATA_KEY
from ..core.image import InvalidImageError, as_analysis_image
from ..core.lattice import displacement_precision
from ..core.refine import error_text
from . import _layers
from ._common import (
    current_frame,
    image_layers,
    notify_error,
    pixel_size_of,
)
from ._job import JobWidget

if TYPE_CHECKING:
    import napari

STRAIN_COMPONENTS = ("exx", "eyy", "exy", "rotation")


def points_layers(viewer: napari.Viewer) -> list[tuple[str, Any]]:
    """Return (name, layer) choices of every Points layer."""
    from napari.layers import Points

    return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, Points)]


def atoms_from_layer(layer: napari.layers.Points) -> pd.DataFrame:
    """Return the atoms table of a Points layer: features, with positions from its data.

    Positions come from ``layer.data`` so points the user moved or added by hand count.
    """
    table = layer.features.copy().reset_index(drop=True)
    table["y"] = layer.data[:, -2]
    table["x"] = layer.data[:, -1]
    return table


class LatticeWidget(JobWidget):
    """Build unit cells from an Atoms layer; show cells, B sites, displacements and strain.

    Results: Vectors ``Unit cells (<image>)`` (the a and b edges of every cell, one colour per
    cell), Points ``B sites (<image>)``, Vectors ``Displacements (<image>)`` (arrows scaled by the
    factor set here, coloured by direction) and Points ``Strain (<image>)`` (one square per cell,
    coloured by the chosen strain component).  Every layer carries the per-cell table as features;
    running again replaces them.
    """

    job_name = "Lattice"

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self._image = ComboBox(label="Image", choices=lambda _w: image_layers(viewer))
        self._atoms = ComboBox(
            label="Atoms",
            choices=lambda _w: points_layers(viewer),
            tooltip="Points layer with the refined atoms (Detect atoms)",
        )
        self._bsites = CheckBox(text="B sites and displacements", value=True)
        self._tolerance = FloatSpinBox(
            label="Corner tolerance",
            min=0.05,
            max=0.5,
            step=0.05,
            value=0.3,
            tooltip="Corner search radius, as a fraction of the cell edge",
        )
        self._scale = FloatSpinBox(
            label="Arrow scale ×",
            min=0.1,
            max=500.0,
            step=1.0,
            value=10.0,
            tooltip="Displacement arrows are drawn this many times longer than they are",
        )
        self._strain = ComboBox(label="Strain map", choices=STRAIN_COMPONENTS, value="exx")
        self.extend(
            [self._image, self._atoms, self._bsites, self._tolerance, self._scale, self._strain]
        )
        self._add_job_controls("Build cells")
        self._scale.changed.connect(self._rescale_arrows)
        self._strain.changed.connect(self._recolour_strain)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            event.connect(self._image.reset_choices)
            event.connect(self._atoms.reset_choices)
        self._select_atoms_for_image()
        self._image.changed.connect(self._select_atoms_for_image)

    def _select_atoms_for_image(self, *_: Any) -> None:
        image = self._image.value
        if image is None:
            return
        name = _layers.layer_name("Atoms", image.name)
        if name in self._viewer.layers:
            self._atoms.value = self._viewer.layers[name]

    # -- running ------------------------------------------------------------------------------
    def _on_run(self, *_: Any) -> None:
        from ..pipeline import find_cells

        layer, atoms_layer = self._image.value, self._atoms.value
        if layer is None or atoms_layer is None:
            notify_error("Lattice: choose an image and its Atoms layer (run Detect atoms first)")
            return
        try:
            frame, _ = current_frame(self._viewer, layer)
            image = as_analysis_image(frame, rgb=layer.rgb)
            atoms = atoms_from_layer(atoms_layer)
            if len(atoms) < 4:
                raise ValueError(
                    f"{atoms_layer.name} has {len(atoms)} points; a lattice needs at least 4"
                )
        except (InvalidImageError, ValueError) as err:
            notify_error(f"Lattice: {err}")
            return
        pixel_size = pixel_size_of(layer)
        params = {"bsites": bool(self._bsites.value), "tolerance": float(self._tolerance.value)}
        # B sites are fitted with the atom contrast the detection used, when it is recorded
        recorded = atoms_layer.metadata.get(METADATA_KEY, {}).get("params", {}).get("polarity")
        params["polarity"] = recorded if recorded in ("bright", "dark") else "auto"
        scale = float(self._scale.value)
        component = self._strain.value

        def compute(progress: Any = None, cancelled: Any = None) -> dict[str, Any]:
            lattice, provenance = find_cells(
                image,
                atoms,
                pixel_size_nm=pixel_size,
                source=layer.name,
                progress=progress,
                cancelled=cancelled,
                **params,
            )
            provenance["atoms_layer"] = atoms_layer.name
            return {
                "lattice": lattice,
                "layers": build_lattice_layers(
                    lattice, layer, provenance, scale=scale, component=component
                ),
            }

        self._start_job(
            compute, lambda out: self._show(layer, out), status=f"Building cells for {layer.name}…"
        )

    def _show(self, layer: napari.layers.Image, out: dict[str, Any]) -> None:
        names = {
            kind: _layers.layer_name(kind, layer.name)
            for kind in ("Unit cells", "Strain", "B sites", "Displacements")
        }
        for kind, name in names.items():
            new = out["layers"].get(kind)
            if new is None:
                _layers.remove_layer(self._viewer, name)
            else:
                _layers.replace_layer(self._viewer, new)
        info = out["lattice"].info
        a, b = out["lattice"].a, out["lattice"].b
        precision = error_text("displacements", *displacement_precision(out["lattice"].cells))
        self._status.value = (
            f"{info['n_cells']} cells ({info['n_cells_ok']} ok, {info['n_distorted']} distorted); "
            f"|a| = {np.hypot(*a):.2f} px, |b| = {np.hypot(*b):.2f} px"
            + (f"; {precision}" if precision else "")
        )

    def _rescale_arrows(self, *_: Any) -> None:
        image = self._image.value
        if image is None:
            return
        name = _layers.layer_name("Displacements", image.name)
        if name in self._viewer.layers:
            vec = self._viewer.layers[name]
            feats = vec.features
            data = vec.data.copy()
            data[:, 1, 0] = feats["disp_y"].to_numpy() * float(self._scale.value)
            data[:, 1, 1] = feats["disp_x"].to_numpy() * float(self._scale.value)
            vec.data = data

    def _recolour_strain(self, *_: Any) -> None:
        image = self._image.value
        if image is None:
            return
        name = _layers.layer_name("Strain", image.name)
        if name in self._viewer.layers:
            _colour_strain(self._viewer.layers[name], self._strain.value)


def build_lattice_layers(
    lattice: Any,
    image_layer: napari.layers.Image,
    provenance: dict[str, Any],
    *,
    scale: float = 10.0,
    component: str = "exx",
) -> dict[str, Any]:
    """Build the result layers of a lattice analysis (not added to a viewer)."""
    from napari.layers import Points, Vectors

    cells = lattice.cells.drop(columns=["i0", "i1", "i2", "i3"]).reset_index(drop=True)
    geometry = _layers.geometry(image_layer)
    meta = {METADATA_KEY: provenance}
    name = image_layer.name
    out: dict[str, Any] = {}
    if len(cells) == 0:
        return out
    p0 = cells[["y", "x"]].to_numpy(float)
    edges = np.concatenate(
        [
            np.stack([p0, cells[["a_y", "a_x"]].to_numpy(float)], axis=1),
            np.stack([p0, cells[["b_y", "b_x"]].to_numpy(float)], axis=1),
        ]
    )
    colours = _cell_colours(len(cells))
    edge_len = float(np.median(np.hypot(cells["a_y"], cells["a_x"])))
    out["Unit cells"] = Vectors(
        edges,
        name=_layers.layer_name("Unit cells", name),
        features=pd.concat([cells, cells], ignore_index=True).assign(
            edge=["a"] * len(cells) + ["b"] * len(cells)
        ),
        edge_color=np.concatenate([colours, colours]),
        edge_width=max(0.5, 0.05 * edge_len),
        vector_style="line",
        metadata=meta,
        **geometry,
    )
    out["Strain"] = Points(
        cells[["centre_y", "centre_x"]].to_numpy(float),
        name=_layers.layer_name("Strain", name),
        features=cells,
        symbol="square",
        size=0.9 * edge_len,
        border_width=0,
        opacity=0.6,
        visible=False,
        metadata=meta,
        **geometry,
    )
    _colour_strain(out["Strain"], component)
    if "bsite_y" in cells:
        found = cells[cells["bsite_y"].notna()].reset_index(drop=True)
        ok = found["bsite_fit_ok"].to_numpy(bool)
        out["B sites"] = Points(
            found[["bsite_y", "bsite_x"]].to_numpy(float),
            name=_layers.layer_name("B sites", name),
            features=found,
            face_color=np.where(ok[:, None], [[0.2, 0.8, 1.0, 1.0]], [[1.0, 0.6, 0.0, 1.0]]),
            border_width=0,
            size=max(2.0, 0.2 * edge_len),
            metadata=meta,
            **geometry,
        )
        good = found[ok].reset_index(drop=True)
        arrows = np.stack(
            [
                good[["centre_y", "centre_x"]].to_numpy(float),
                good[["disp_y", "disp_x"]].to_numpy(float) * scale,
            ],
            axis=1,
        )
        out["Displacements"] = Vectors(
            arrows,
            name=_layers.layer_name("Displacements", name),
            features=good,
            edge_color=_direction_colours(good["disp_angle"].to_numpy(float)),
            edge_width=max(0.8, 0.08 * edge_len),
            vector_style="arrow",
            metadata={METADATA_KEY: {**provenance, "arrow_scale": scale}},
            **geometry,
        )
    return out


def _colour_strain(layer: Any, component: str) -> None:
    values = layer.features[component].to_numpy(float)
    limit = float(np.nanpercentile(np.abs(values), 98)) if len(values) else 1.0
    layer.face_colormap = "RdBu_r"
    layer.face_contrast_limits = (-limit or -1e-6, limit or 1e-6)
    layer.face_color = component
    layer.metadata = {**layer.metadata, "strain_component": component}


def _cell_colours(n: int) -> np.ndarray:
    # golden-ratio hues: neighbouring cells get clearly different colours (seed 000)
    from matplotlib.colors import hsv_to_rgb

    hues = (np.arange(n) * 0.618033988749895) % 1.0
    rgb = hsv_to_rgb(np.stack([hues, np.full(n, 0.8), np.full(n, 1.0)], axis=1))
    return np.concatenate([rgb, np.ones((n, 1))], axis=1)


def _direction_colours(angle_deg: np.ndarray) -> np.ndarray:
    from matplotlib.colors import hsv_to_rgb

    hue = (np.nan_to_num(angle_deg) % 360.0) / 360.0
    rgb = hsv_to_rgb(np.stack([hue, np.ones_like(hue), np.ones_like(hue)], axis=1))
    return np.concatenate([rgb, np.ones((len(hue), 1))], axis=1)
