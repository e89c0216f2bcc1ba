"""The "Detect atoms" dock widget."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    PushButton,
)
from psygnal import Signal

from .._provenance import METADATA_KEY
from ..core.image import InvalidImageError, as_analysis_image
from . import _layers
from ._common import current_frame, image_layers, notify_error, notify_info
from ._worker import progress_generator, start_job

if TYPE_CHECKING:
    import napari

CUSTOM = "Custom .onnx…"
# detection columns kept when re-refining (the fit columns are recomputed)
_DETECTION_COLUMNS = ("y", "x", "score", "class", "class_name", "y0", "x0", "y1", "x1", "source")


class DetectAtomsWidget(Container):
    """Detect atom columns in the current image with an ONNX model, then refine each peak.

    Results: a Shapes layer ``Boxes (<image>)`` and a Points layer ``Atoms (<image>)`` whose
    features table holds one row per atom; running again replaces both.
    """

    #: Emitted on the GUI thread when a run ends (finished, failed or cancelled).
    run_finished = Signal()

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self._worker: Any = None
        self._image = ComboBox(label="Image", choices=lambda _w: image_layers(viewer))
        self._model = ComboBox(label="Model", choices=self._model_choices)
        self._custom = FileEdit(label="Model file", filter="*.onnx", mode="r", visible=False)
        self._threshold = FloatSpinBox(
            label="Confidence ≥",
            min=0.01,
            max=0.99,
            step=0.01,
            value=0.3,
            tooltip="Minimum detection confidence. Lower it for faint columns (seed 000 "
            "needed 0.1 or 0.05 on some images).",
        )
        self._refine = CheckBox(text="Refine each peak by a 2D Gaussian fit", value=True)
        self._run = PushButton(text="Detect")
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._refine_points = PushButton(
            text="Refine selected atoms (all if none)",
            tooltip="Gaussian-fit the selected points of the Atoms layer (or all of them), "
            "e.g. after moving or adding points by hand",
        )
        self._status = Label(value="")
        self._status.native.setWordWrap(True)
        buttons = Container(widgets=[self._run, self._cancel], layout="horizontal", labels=False)
        self.extend(
            [
                self._image,
                self._model,
                self._custom,
                self._threshold,
                self._refine,
                buttons,
                self._status,
            ]
        )
        self._model.changed.connect(self._on_model_changed)
        self._run.changed.connect(self._on_run)
        self._cancel.changed.connect(self._on_cancel)
        self._refine_points.changed.connect(self._on_refine_points)
        viewer.layers.events.inserted.connect(self._image.reset_choices)
        viewer.layers.events.removed.connect(self._image.reset_choices)
        self._on_model_changed()

    # -- model picker -------------------------------------------------------------------------
    def _model_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        from ..models.registry import list_models

        return [(card.label, card) for card in list_models("detection")] + [(CUSTOM, CUSTOM)]

    def _on_model_changed(self, *_: Any) -> None:
        self._custom.visible = self._model.value == CUSTOM
        card = self._model.value
        if card not in (None, CUSTOM):
            self._threshold.value = float(card.info.get("default_threshold", 0.3))

    def _selected_model(self) -> Any:
        from ..models.registry import load_model

        if self._model.value == CUSTOM:
            path = self._custom.value
            if not path or not str(path).lower().endswith(".onnx"):
                raise ValueError("choose a .onnx model file")
            return load_model(path, task="detection")
        if self._model.value is None:
            raise ValueError("no detection model is installed; choose a custom .onnx file")
        return load_model(self._model.value.path, task="detection")

    # -- running ------------------------------------------------------------------------------
    def _on_run(self, *_: Any) -> None:
        from ..pipeline import find_atoms

        layer = self._image.value
        if layer is None:
            notify_error("Detect atoms: add or choose an image layer first")
            return
        try:
            frame, index = current_frame(self._viewer, layer)
            image = as_analysis_image(frame, rgb=layer.rgb)
            card = self._selected_model()
        except (InvalidImageError, ValueError) as err:
            notify_error(f"Detect atoms: {err}")
            return
        threshold = float(self._threshold.value)
        refine = bool(self._refine.value)
        source = layer.name + (f" frame {index}" if index else "")

        def compute(progress: Any = None, cancelled: Any = None) -> dict[str, Any]:
            result = find_atoms(
                image,
                detector=card,
                threshold=threshold,
                refine=refine,
                source=source,
                progress=progress,
                cancelled=cancelled,
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
            }

        self._set_running(True)
        self._status.value = f"Detecting atoms in {layer.name}…"
        start_job(
            self,
            lambda: (yield from progress_generator(compute)),
            description="Detect atoms",
            on_result=lambda out: self._show(layer, out),
            on_error=self._on_error,
            on_finished=self._on_finished,
        )

    def _on_refine_points(self, *_: Any) -> None:
        """Refine the selected points (or all) of this image's Atoms layer by Gaussian fits."""
        from ..pipeline import refine_atoms

        layer = self._image.value
        name = _layers.layer_name("Atoms", layer.name) if layer is not None else ""
        if layer is None or name not in self._viewer.layers:
            notify_error("Refine: detect atoms first (no Atoms layer for this image)")
            return
        atoms_layer = self._viewer.layers[name]
        try:
            frame, _ = current_frame(self._viewer, layer)
            image = as_analysis_image(frame, rgb=layer.rgb).astype(float)
        except InvalidImageError as err:
            notify_error(f"Refine: {err}")
            return
        table = atoms_layer.features.copy().reset_index(drop=True)
        table["y"], table["x"] = atoms_layer.data[:, -2], atoms_layer.data[:, -1]
        chosen = sorted(atoms_layer.selected_data) or list(range(len(table)))
        refined = refine_atoms(
            image,
            table.loc[chosen].drop(
                columns=[c for c in table.columns if c not in _DETECTION_COLUMNS]
            ),
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
        self._status.value = (
            f"Refined {len(refined)} atom(s): {int(refined['fit_ok'].sum())} fits ok"
        )

    def _show(self, layer: napari.layers.Image, out: dict[str, Any]) -> None:
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
        self._status.value = f"{out['n']} atoms in {layer.name}" + (
            f" ({seconds:.2f} s on {out['device'].upper()})" if seconds else ""
        )

    def _on_error(self, err: BaseException) -> None:
        if isinstance(err, InterruptedError):
            self._status.value = "Cancelled; layers unchanged."
            return
        self._status.value = f"Failed: {err}"
        notify_error(f"Detect atoms failed: {err}")

    def _on_cancel(self, *_: Any) -> None:
        if self._worker is not None:
            self._worker.quit()
            self._status.value = "Cancelling…"

    def _on_finished(self) -> None:
        self._set_running(False)
        self._worker = None
        self.run_finished.emit()

    def _set_running(self, running: bool) -> None:
        self._run.enabled = not running
        self._cancel.enabled = running


def provenance_of(layer: Any) -> dict[str, Any]:
    """Return the provenance record stored on a result layer."""
    return layer.metadata.get(METADATA_KEY, {})
