"""The "Detect atoms" dock widget."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, PushButton

from .._provenance import METADATA_KEY
from ..core.image import InvalidImageError, as_analysis_image
from ..core.refine import error_text, median_standard_error
from ..models.detector import CONTRAST_CROP
from ..models.registry import ModelCard
from . import _layers
from ._common import (
    CUSTOM_MODEL,
    MODEL_TOOLTIP,
    current_frame,
    custom_model_file,
    follow_models,
    image_picker,
    model_choices,
    notify_info,
    pixel_size_of,
    selected_model,
)
from ._job import JobWidget

if TYPE_CHECKING:
    import napari

CUSTOM = CUSTOM_MODEL

#: The "Atom contrast" choices (label, value of ``polarity``), shared with the sequence widget.
CONTRAST_CHOICES = [
    ("auto", "auto"),
    ("bright (HAADF, HRTEM)", "bright"),
    ("dark (ABF, BF, HRTEM)", "dark"),
]
CONTRAST_TOOLTIP = (
    "Contrast of the atom columns: bright (HAADF), dark (ABF, bright-field), or auto: guessed "
    "from the image, which is right for STEM images. In HRTEM atoms are bright or dark "
    "depending on defocus and Cs, and the image's look does not say which: there the HRTEM "
    "model guesses it itself (it runs both ways and keeps the likelier: a second pass, over "
    f"the central {CONTRAST_CROP} × {CONTRAST_CROP} on large images), "
    "while the general model needs to be told."
)


def contrast_combo() -> ComboBox:
    """Return an "Atom contrast" picker (auto / bright / dark)."""
    return ComboBox(
        label="Atom contrast", choices=CONTRAST_CHOICES, value="auto", tooltip=CONTRAST_TOOLTIP
    )


def refine_checkbox() -> CheckBox:
    """Return the "Refine each peak by a 2D Gaussian fit" box; model pickers set it per card."""
    return CheckBox(
        text="Refine each peak by a 2D Gaussian fit",
        value=True,
        tooltip="Fit a 2D Gaussian to every detected peak (sub-pixel positions, amplitudes, "
        "widths). Off by default for HRTEM models: phase-contrast atoms are not Gaussian, so "
        "the fits would be judged unusable and the detected positions kept anyway.",
    )


def follow_card(card: Any, refine: CheckBox, contrast: ComboBox) -> None:
    """Set the refine box and the contrast to what a picked model's card says.

    The classical detector refines; a model adapted to HRTEM conditions knows its atoms'
    contrast (card ``polarity``).
    """
    if card == "classical":
        refine.value = True
    elif isinstance(card, ModelCard):
        refine.value = card.refine_default
        if card.polarity:
            contrast.value = card.polarity


# detection columns kept when re-refining (the fit columns are recomputed)
_DETECTION_COLUMNS = ("y", "x", "score", "class", "class_name", "y0", "x0", "y1", "x1", "source")


class DetectAtomsWidget(JobWidget):
    """Detect atom columns in the current image with an ONNX model, then refine each peak.

    Results: a Shapes layer ``Boxes (<image>)`` and a Points layer ``Atoms (<image>)`` whose
    features table holds one row per atom; running again replaces both.
    """

    job_name = "Detect atoms"

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self._image = image_picker(viewer, "to detect atoms in")
        self._model = ComboBox(
            label="Model", choices=lambda _w: model_choices("detection"), tooltip=MODEL_TOOLTIP
        )
        follow_models(self._model)  # fine-tuned models appear at once
        self._custom = custom_model_file()
        self._threshold = FloatSpinBox(
            label="Confidence ≥",
            min=0.01,
            max=0.99,
            step=0.01,
            value=0.3,
            tooltip="Minimum detection confidence. Lower it for faint columns (seed 000 "
            "needed 0.1 or 0.05 on some images).",
        )
        self._contrast = contrast_combo()
        self._refine = refine_checkbox()
        self._fit_check = CheckBox(
            text="Drop detections the fit does not confirm",
            value=True,
            tooltip="After refinement, drop the detections that the model is not sure of and "
            "whose Gaussian has no significant amplitude (the model card's fit check; e.g. "
            "'weak' columns proposed at empty cell centres)",
        )
        self._refine_points = PushButton(
            text="Refine selected atoms (all if none)",
            tooltip="Gaussian-fit the selected points of the Atoms layer (or all of them), "
            "e.g. after moving or adding points by hand",
        )
        self.extend(
            [
                self._image,
                self._model,
                self._custom,
                self._contrast,
                self._threshold,
                self._refine,
                self._fit_check,
            ]
        )
        self._refine.changed.connect(self._on_refine_changed)
        self._add_job_controls("Detect", self._refine_points)
        self._refine_points.changed.connect(self._on_refine_points)
        self._model.changed.connect(self._on_model_changed)
        viewer.layers.events.inserted.connect(self._image.reset_choices)
        viewer.layers.events.removed.connect(self._image.reset_choices)
        self._on_model_changed()

    # -- model picker -------------------------------------------------------------------------
    def _on_model_changed(self, *_: Any) -> None:
        self._custom.visible = self._model.value == CUSTOM
        card = self._model.value
        if card not in (None, CUSTOM):
            self._threshold.value = float(card.info.get("default_threshold", 0.3))
            self._model.tooltip = card.info.get("description", "")  # what the model is for
            follow_card(card, self._refine, self._contrast)

    def _on_refine_changed(self, *_: Any) -> None:
        self._fit_check.enabled = bool(self._refine.value)  # the check needs the fits

    # -- running ------------------------------------------------------------------------------
    def _on_run(self, *_: Any) -> None:
        from ..pipeline import find_atoms

        layer = self._image.value
        if layer is None:
            self._refuse("Detect atoms: add or choose an image layer first")
            return
        try:
            frame, index = current_frame(self._viewer, layer)
            image = as_analysis_image(frame, rgb=layer.rgb)
            card = selected_model(self._model.value, self._custom.value, "detection")
        except (InvalidImageError, ValueError) as err:
            self._refuse(f"Detect atoms: {err}")
            return
        threshold = float(self._threshold.value)
        refine = bool(self._refine.value)
        fit_check = bool(self._fit_check.value)
        polarity = str(self._contrast.value)
        source = layer.name + (f" frame {index}" if index else "")
        pixel_size = pixel_size_of(layer)

        def compute(progress: Any = None, cancelled: Any = None) -> dict[str, Any]:
            result = find_atoms(
                image,
                detector=card,
                threshold=threshold,
                refine=refine,
                fit_check=fit_check,
                polarity=polarity,
                source=source,
                progress=progress,
                cancelled=cancelled,
                pixel_size_nm=pixel_size,
            )
            if index:
                result.provenance["frame"] = list(index)
            return {
                "atoms": _layers.atoms_points(
                    result.atoms, layer, result.provenance, spacing=result.spacing
                ),
                "boxes": _layers.boxes_shapes(result.atoms, layer, result.provenance),
                "n": len(result.atoms),
                "device": result.provenance.get("device", "cpu"),
                "seconds": result.provenance.get("seconds"),
                "polarity": result.provenance["params"].get("polarity"),
                "by_model": "polarity_evidence" in result.provenance["params"],
                "precision": error_text("positions", median_standard_error(result.atoms)),
                "dropped": result.provenance["params"].get("fit_check", {}).get("dropped", 0),
                "sampling": result.provenance["params"].get("sampling"),
            }

        self._start_job(
            compute,
            lambda out: self._show(layer, out, index),
            status=f"Detecting atoms in {layer.name}…",
            needs=layer,
        )

    def _on_refine_points(self, *_: Any) -> None:
        """Refine the selected points (or all) of this image's Atoms layer by Gaussian fits."""
        from ..pipeline import refine_atoms

        layer = self._image.value
        name = _layers.layer_name("Atoms", layer.name) if layer is not None else ""
        if layer is None or name not in self._viewer.layers:
            self._refuse("Refine: detect atoms first (no Atoms layer for this image)")
            return
        atoms_layer = self._viewer.layers[name]
        try:
            # the frame the atoms were detected in, whichever frame is shown now
            recorded = provenance_of(atoms_layer).get("frame")
            if recorded is not None and len(recorded) == layer.data.ndim - 2 and not layer.rgb:
                index = tuple(int(i) for i in recorded)
                frame = np.asarray(layer.data[index])
            else:
                frame, index = current_frame(self._viewer, layer)
            image = as_analysis_image(frame, rgb=layer.rgb).astype(float)
        except (InvalidImageError, IndexError) as err:
            self._refuse(f"Refine: {err}")
            return
        table = atoms_layer.features.copy().reset_index(drop=True)
        table["y"], table["x"] = atoms_layer.data[:, -2], atoms_layer.data[:, -1]
        chosen = sorted(atoms_layer.selected_data) or list(range(len(table)))
        # the contrast chosen here, else the one the detection used, else a guess at the points
        polarity = self._contrast.value
        if polarity == "auto":
            polarity = provenance_of(atoms_layer).get("params", {}).get("polarity") or "auto"
        refined = refine_atoms(
            image,
            table.loc[chosen].drop(
                columns=[c for c in table.columns if c not in _DETECTION_COLUMNS]
            ),
            polarity=polarity,
        )
        for column in refined.columns:
            if column not in table:
                table[column] = np.nan
            table.loc[refined.index, column] = refined[column].to_numpy()
        data = atoms_layer.data.copy()
        data[refined.index, -2] = refined["y"].to_numpy()
        data[refined.index, -1] = refined["x"].to_numpy()
        atoms_layer.data = data
        atoms_layer.features = table
        atoms_layer.face_color = _layers.atom_colours(table)
        where = f" (on frame {_frame_text(index)}, where they were detected)" if index else ""
        self._status.value = (
            f"Refined {len(refined)} atom(s): {int(refined['fit_ok'].sum())} fits ok{where}"
        )

    def _show(self, layer: napari.layers.Image, out: dict[str, Any], index: tuple = ()) -> None:
        if out["boxes"] is not None:
            _layers.replace_layer(self._viewer, out["boxes"])
        else:
            _layers.remove_layer(self._viewer, _layers.layer_name("Boxes", layer.name))
            if out["n"] > _layers.MAX_BOXES:
                notify_info(
                    f"{out['n']} atoms: boxes are not drawn above "
                    f"{_layers.MAX_BOXES} (they are in the Atoms features table)"
                )
        _layers.replace_layer(self._viewer, out["atoms"])
        seconds = out["seconds"]
        contrast = f"{out['polarity']} " if out.get("polarity") else ""
        dropped = f"; {out['dropped']} unconfirmed dropped" if out.get("dropped") else ""
        told = "; contrast told by the model" if out.get("by_model") else ""
        if out.get("sampling"):  # a model that learnt one scale, on an uncalibrated image
            told += f"; {out['sampling']} (set the layer's scale in nm)"
        self._status.value = (
            f"{out['n']} {contrast}atoms in {layer.name}"
            + (f", frame {_frame_text(index)}" if index else "")
            + (f" ({seconds:.2f} s on {out['device'].upper()}{dropped}{told})" if seconds else "")
            + (f"; {out['precision']}" if out.get("precision") else "")
        )


def _frame_text(index: tuple) -> str:
    """Write a stack position for people: ``3`` for one leading axis, ``(1, 3)`` for more."""
    return str(index[0]) if len(index) == 1 else str(tuple(index))


def provenance_of(layer: Any) -> dict[str, Any]:
    """Return the provenance record stored on a result layer."""
    return layer.metadata.get(METADATA_KEY, {})
