"""The "Lattice" dock widget: unit cells, B sites, displacements and strain."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, PushButton

from .._provenance import METADATA_KEY
from ..core.image import InvalidImageError, as_analysis_image
from ..core.lattice import check_basis, displacement_precision
from ..core.refine import error_text
from . import _layers
from ._common import (
    current_frame,
    follow_atoms_layer,
    image_picker,
    pixel_size_of,
)
from ._job import JobWidget

if TYPE_CHECKING:
    import napari

STRAIN_COMPONENTS = ("exx", "eyy", "exy", "rotation")
#: Choice for the strain reference when no region is drawn.
MEDIAN_REFERENCE = "median of all cells"
#: Choice for the lattice vectors when none are drawn.
FOUND_BASIS = "found from the atoms"
#: Shapes that enclose a region (napari shape types).
REGION_SHAPES = ("rectangle", "polygon", "ellipse")


def points_layers(viewer: napari.Viewer) -> list[tuple[str, Any]]:
    """Return (name, layer) choices of every Points layer."""
    from napari.layers import Points

    return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, Points)]


def drawn_shapes_layers(viewer: napari.Viewer) -> list[tuple[str, Any]]:
    """Return (name, layer) choices of the Shapes layers a user drew (not this plugin's boxes)."""
    from napari.layers import Shapes

    return [
        (layer.name, layer)
        for layer in viewer.layers
        if isinstance(layer, Shapes) and METADATA_KEY not in layer.metadata
    ]


def _ellipse_polygon(corners: np.ndarray, n: int = 64) -> np.ndarray:
    # napari stores an ellipse as the four corners of its bounding box, in order
    centre = corners.mean(axis=0)
    u, v = (corners[1] - corners[0]) / 2, (corners[3] - corners[0]) / 2
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)[:, None]
    return centre + np.cos(t) * u + np.sin(t) * v


def region_polygons(shapes: napari.layers.Shapes, image: napari.layers.Image) -> list[Any]:
    """Return the regions drawn in a Shapes layer as polygons in the image's pixels.

    Raises
    ------
    ValueError
        The layer has no shapes, or shapes that enclose nothing (lines, paths).
    """
    if len(shapes.data) == 0:
        raise ValueError(
            f"draw the strain reference region in '{shapes.name}' first "
            "(rectangles, polygons or ellipses)"
        )
    polygons = []
    for kind, vertices in zip(shapes.shape_type, shapes.data, strict=True):
        if kind not in REGION_SHAPES:
            raise ValueError(
                f"'{shapes.name}' holds a {kind}; a region is drawn as rectangles, polygons or "
                "ellipses"
            )
        px = _layers.image_pixels(shapes, image, vertices)
        polygons.append(_ellipse_polygon(px) if kind == "ellipse" else px)
    return polygons


def drawn_basis(shapes: napari.layers.Shapes, image: napari.layers.Image) -> tuple[Any, Any]:
    """Return the lattice vectors a and b drawn as the first two lines of a Shapes layer (px).

    Raises
    ------
    ValueError
        Fewer than two lines.
    """
    lines = [v for kind, v in zip(shapes.shape_type, shapes.data, strict=True) if kind == "line"]
    if len(lines) < 2:
        raise ValueError(
            f"draw the lattice vectors a and b as two lines in '{shapes.name}' "
            f"(it has {len(lines)})"
        )
    ends = [_layers.image_pixels(shapes, image, line) for line in lines[:2]]
    return ends[0][-1] - ends[0][0], ends[1][-1] - ends[1][0]


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
        self._image = image_picker(viewer, "the atoms were found in (B sites are fitted on it)")
        self._atoms = ComboBox(
            label="Atoms",
            choices=lambda _w: points_layers(viewer),
            tooltip="Points layer with the refined atoms (Detect atoms)",
        )
        self._bsites = CheckBox(
            text="B sites and displacements",
            value=True,
            tooltip="Fit the column at the centre of every cell (the B site of a perovskite) "
            "and its displacement from the centre of the four corners (polarization)",
        )
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
        self._strain = ComboBox(
            label="Strain map",
            choices=STRAIN_COMPONENTS,
            value="exx",
            tooltip="Component shown by the Strain layer (one square per cell, red = "
            "tensile, blue = compressive; rotation in degrees); all four are in its table",
        )
        self._reference = ComboBox(
            label="Strain reference",
            choices=lambda _w: [(MEDIAN_REFERENCE, None), *drawn_shapes_layers(viewer)],
            tooltip="Strain is measured against the median cell, or against the median of the "
            "cells inside the shapes of a layer (e.g. the substrate)",
        )
        self._draw_reference = PushButton(
            text="Draw region",
            tooltip="Add a Shapes layer to draw the reference region in (rectangles, polygons "
            "or ellipses), e.g. the substrate under a film",
        )
        self._basis = ComboBox(
            label="Lattice vectors",
            choices=lambda _w: [(FOUND_BASIS, None), *drawn_shapes_layers(viewer)],
            tooltip="Found from the atoms, or the first two lines of a Shapes layer (a, b)",
        )
        self._draw_basis = PushButton(
            text="Draw a, b",
            tooltip="Add a Shapes layer to draw the lattice vectors a and b as two lines, "
            "each from an atom to its neighbour",
        )
        self.extend(
            [
                self._image,
                self._atoms,
                self._bsites,
                self._tolerance,
                self._scale,
                self._strain,
                _row("Strain reference", self._reference, self._draw_reference),
                _row("Lattice vectors", self._basis, self._draw_basis),
            ]
        )
        self._add_job_controls("Build cells")
        self._scale.changed.connect(self._rescale_arrows)
        self._strain.changed.connect(self._recolour_strain)
        self._draw_reference.changed.connect(self._on_draw_reference)
        self._draw_basis.changed.connect(self._on_draw_basis)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            for combo in (self._image, self._atoms, self._reference, self._basis):
                event.connect(combo.reset_choices)
        follow_atoms_layer(viewer, self._image, self._atoms)

    # -- drawing a reference region or the lattice vectors ----------------------------------
    def _drawing_layer(self, kind: str, mode: str, combo: ComboBox) -> None:
        """Add (or reuse) a Shapes layer over the image, select it in ``mode`` and in ``combo``."""
        image = self._image.value
        if image is None:
            self._refuse("Lattice: choose an image first")
            return
        name = _layers.layer_name(kind, image.name)
        if name in self._viewer.layers:
            layer = self._viewer.layers[name]
        else:
            layer = self._viewer.add_shapes(
                name=name,
                edge_color="yellow",
                face_color=[1.0, 1.0, 0.0, 0.15],
                edge_width=max(1.0, 0.004 * max(image.data.shape[-2:])),
                **_layers.geometry(image),
            )
        combo.reset_choices()
        combo.value = layer
        self._viewer.layers.selection.active = layer
        layer.mode = mode

    def _on_draw_reference(self, *_: Any) -> None:
        self._drawing_layer("Strain reference", "add_rectangle", self._reference)

    def _on_draw_basis(self, *_: Any) -> None:
        self._drawing_layer("Lattice vectors", "add_line", self._basis)

    # -- running ------------------------------------------------------------------------------
    def _on_run(self, *_: Any) -> None:
        from ..pipeline import find_cells

        layer, atoms_layer = self._image.value, self._atoms.value
        if layer is None or atoms_layer is None:
            self._refuse("Lattice: choose an image and its Atoms layer (run Detect atoms first)")
            return
        try:
            frame, _ = current_frame(self._viewer, layer)
            image = as_analysis_image(frame, rgb=layer.rgb)
            atoms = _layers.atoms_table(atoms_layer, layer)  # in the image's pixels
            if len(atoms) < 4:
                raise ValueError(
                    f"{atoms_layer.name} has {len(atoms)} points; a lattice needs at least 4"
                )
            region_layer, basis_layer = self._reference.value, self._basis.value
            region = None if region_layer is None else region_polygons(region_layer, layer)
            basis = None if basis_layer is None else drawn_basis(basis_layer, layer)
            if basis is not None:
                check_basis(basis)
        except (InvalidImageError, ValueError) as err:
            self._refuse(f"Lattice: {err}")
            return
        pixel_size = pixel_size_of(layer)
        params = {
            "bsites": bool(self._bsites.value),
            "tolerance": float(self._tolerance.value),
            "basis": basis,
            "reference_region": region,
        }
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
            if region_layer is not None:
                provenance["reference_layer"] = region_layer.name
            if basis_layer is not None:
                provenance["basis_layer"] = basis_layer.name
            return {
                "lattice": lattice,
                "atoms_layer": atoms_layer.name,
                "layers": build_lattice_layers(
                    lattice, layer, provenance, scale=scale, component=component
                ),
            }

        self._start_job(
            compute,
            lambda out: self._show(layer, out),
            status=f"Building cells for {layer.name}…",
            needs=layer,
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
        region = self._reference.value
        atoms_name = out.get("atoms_layer", "")
        self._status.value = (
            f"{info['n_cells']} cells from '{atoms_name}' ({info['n_cells_ok']} ok, "
            f"{info['n_distorted']} distorted); "
            f"|a| = {np.hypot(*a):.2f} px, |b| = {np.hypot(*b):.2f} px"
            + (f"; {precision}" if precision else "")
            + (
                f"; strain against {info['reference_cells']} cells in '{region.name}'"
                if region is not None
                else ""
            )
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
    if provenance.get("params", {}).get("reference_region") is not None:
        # the cells the strain is measured against are outlined
        out["Strain"].border_color = "white"
        out["Strain"].border_width = np.where(cells["reference_cell"].to_numpy(bool), 0.12, 0.0)
    has_b = cells["bsite_y"].notna() if "bsite_y" in cells else pd.Series(False, cells.index)
    found = cells[has_b].reset_index(drop=True)
    good = found[found["bsite_fit_ok"].astype(bool)].reset_index(drop=True) if len(found) else found
    if len(found):
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
    if len(good):  # no arrows layer without a B site (napari refuses empty colour arrays)
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


def _row(label: str, *widgets: Any) -> Container:
    """One labelled form row holding several widgets side by side."""
    row = Container(widgets=list(widgets), layout="horizontal", labels=False, label=label)
    row.margins = (0, 0, 0, 0)
    return row


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
