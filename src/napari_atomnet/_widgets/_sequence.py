"""The "Sequence" dock widget: atoms in every frame of a movie, drift, site occupancy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, FloatSpinBox

from .._provenance import METADATA_KEY
from . import _layers
from ._common import MODEL_TOOLTIP, custom_model_file, follow_models, pixel_size_of
from ._detect import contrast_combo, follow_card, refine_checkbox
from ._job import JobWidget

if TYPE_CHECKING:
    import napari

#: Kind of the result layer: ``Sequence atoms (<image>)``.
SEQUENCE_ATOMS = "Sequence atoms"
CLASSICAL_LABEL = "Classical (Gaussian filter)"
CUSTOM = "Custom .onnx…"
DRIFT_CHOICES = [
    ("From the atoms (median displacement)", "atoms"),
    ("From the images (cross-correlation)", "image"),
    ("None", None),
]


def stack_layers(viewer: napari.Viewer) -> list[tuple[str, Any]]:
    """(name, layer) of every grey Image layer with a frame axis (T×Y×X)."""
    from napari.layers import Image

    return [
        (layer.name, layer)
        for layer in viewer.layers
        if isinstance(layer, Image) and not layer.rgb and layer.data.ndim == 3
    ]


class SequenceWidget(JobWidget):
    """Detect and refine atoms in every frame of a T×Y×X stack, estimate drift, link sites.

    Result: one Points layer ``Sequence atoms (<image>)`` with (frame, y, x) coordinates on the
    stack and features ``frame``, ``site``, ``occupancy``, ``events``, the drift-corrected
    ``y_corr``, ``x_corr`` and the fit values; points are coloured by their site's occupancy.
    Running again replaces it.  The current frame alone is analysed by the Detect atoms widget,
    into ``Atoms (<image>)``: the two results live side by side.
    """

    job_name = "Sequence"

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self._image = ComboBox(
            label="Movie",
            choices=lambda _w: stack_layers(viewer),
            tooltip="An image stack (T×Y×X): every frame is analysed",
        )
        self._model = ComboBox(label="Model", choices=self._model_choices, tooltip=MODEL_TOOLTIP)
        follow_models(self._model)
        self._custom = custom_model_file()
        self._threshold = FloatSpinBox(
            label="Confidence ≥",
            min=0.01,
            max=0.99,
            step=0.01,
            value=0.3,
            tooltip="Minimum detection confidence (the model's card sets it when picked)",
        )
        self._contrast = contrast_combo()
        self._refine = refine_checkbox()
        self._drift = ComboBox(
            label="Drift",
            choices=DRIFT_CHOICES,
            value="atoms",
            tooltip="How the stage drift between frames is measured before the atoms of "
            "different frames are linked into sites",
        )
        self._radius = FloatSpinBox(
            label="Site radius (px)",
            min=0.0,
            max=100.0,
            step=0.5,
            value=0.0,
            tooltip="Atoms of different frames closer than this (after drift correction) are "
            "one site. 0: 0.35 × the atom spacing.",
        )
        self.extend(
            [
                self._image,
                self._model,
                self._custom,
                self._threshold,
                self._contrast,
                self._refine,
                self._drift,
                self._radius,
            ]
        )
        # a movie takes minutes: its progress shows in this dock, not in napari's activity bar
        self._add_job_controls("Analyse all frames", job_bar=True)
        self._model.changed.connect(self._on_model_changed)
        viewer.layers.events.inserted.connect(self._image.reset_choices)
        viewer.layers.events.removed.connect(self._image.reset_choices)
        self._on_model_changed()

    # -- model picker -------------------------------------------------------------------------
    def _model_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        from ..models.registry import list_models

        models = [(card.label, card) for card in list_models("detection")]
        return [*models, (CLASSICAL_LABEL, "classical"), (CUSTOM, CUSTOM)]

    def _on_model_changed(self, *_: Any) -> None:
        self._custom.visible = self._model.value == CUSTOM
        card = self._model.value
        self._threshold.enabled = card != "classical"
        if card not in (None, CUSTOM, "classical"):
            self._threshold.value = float(card.info.get("default_threshold", 0.3))
        follow_card(card, self._refine, self._contrast)

    def _selected_detector(self) -> Any:
        from ..models.registry import load_model

        value = self._model.value
        if value == "classical":
            return "classical"
        if value == CUSTOM:
            path = self._custom.value
            if not path or not str(path).lower().endswith(".onnx"):
                raise ValueError("choose a .onnx model file")
            return load_model(path, task="detection")
        if value is None:
            raise ValueError("no detection model is installed; choose one")
        return load_model(value.path, task="detection")

    # -- running ------------------------------------------------------------------------------
    def _on_run(self, *_: Any) -> None:
        from ..sequences import analyze_sequence

        layer = self._image.value
        if layer is None:
            self._refuse("Sequence: add or choose a T×Y×X image stack first")
            return
        try:
            if layer.rgb or layer.data.ndim != 3:
                raise ValueError(f"{layer.name} is not a T×Y×X stack")
            detector = self._selected_detector()
        except ValueError as err:
            self._refuse(f"Sequence: {err}")
            return
        stack = layer.data
        params = {
            "detector": detector,
            "threshold": None if detector == "classical" else float(self._threshold.value),
            "refine": bool(self._refine.value),
            "polarity": str(self._contrast.value),
            "drift": self._drift.value,
            "radius": float(self._radius.value) or None,
            "source": layer.name,
            "pixel_size_nm": pixel_size_of(layer),
        }

        def compute(progress: Any = None, cancelled: Any = None) -> Any:
            return analyze_sequence(stack, progress=progress, cancelled=cancelled, **params)

        self._start_job(
            compute,
            lambda result: self._show(layer, result),
            status=f"Analysing {stack.shape[0]} frames of {layer.name}…",
            needs=layer,
        )

    def _show(self, layer: napari.layers.Image, result: Any) -> None:
        if len(result.atoms) == 0:  # an empty layer would only hide an earlier result
            n = len(result.frames)
            self._status.value = f"No atoms found in {n} frame(s); layers unchanged."
            return
        points = sequence_points(result, layer)
        _layers.replace_layer(self._viewer, points)
        sites = result.sites
        n_frames = len(result.frames)
        drift = np.abs(result.drift).max() if len(result.drift) else 0.0
        self._status.value = (
            f"{len(result.atoms)} atoms in {n_frames} frames; {len(sites)} sites, mean "
            f"occupancy {sites['occupancy'].mean():.2f}, {int(sites['events'].sum())} "
            f"appear/disappear events; drift up to {drift:.1f} px"
        )
        found_nm = result.provenance["params"].get("pixel_size_estimated_nm")
        if found_nm:  # a model that learnt one sampling, on an uncalibrated movie
            self._status.value += (
                f"; pixel size unknown: {10 * found_nm:.4g} Å/px, found from the atoms' "
                "spacing on the first frame (set the layer's scale in nm)"
            )


def sequence_points(result: Any, image_layer: napari.layers.Image) -> Any:
    """Build a sequence's ``Sequence atoms (<image>)`` Points layer: (frame, y, x), by occupancy."""
    from napari.layers import Points

    atoms = result.atoms.reset_index(drop=True)
    if "source" not in atoms:
        atoms = atoms.assign(source="model")
    coords = atoms[["frame", "y", "x"]].to_numpy(float)
    spacing = np.nan
    if len(atoms):
        first = atoms[atoms["frame"] == atoms["frame"].min()]
        spacing = _layers._marker_size(first, None) / 0.35
    provenance = dict(result.provenance)
    provenance["drift_px"] = np.asarray(result.drift).round(4).tolist()
    kwargs: dict[str, Any] = {}
    if len(atoms):
        kwargs.update(face_color="occupancy", face_colormap="viridis", face_contrast_limits=(0, 1))
    return Points(
        coords if len(atoms) else np.empty((0, 3)),
        ndim=3,
        name=_layers.layer_name(SEQUENCE_ATOMS, image_layer.name),
        features=atoms,
        border_color="black",
        border_width=0.1,
        size=max(2.0, 0.35 * spacing) if np.isfinite(spacing) else 4.0,
        metadata={METADATA_KEY: provenance, "sites": result.sites.to_dict("list")},
        scale=tuple(np.asarray(image_layer.scale)),
        translate=tuple(np.asarray(image_layer.translate)),
        **kwargs,
    )
