"""The "Segment particles" dock widget: particle instances, size table, histograms, CSV export."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from magicgui.widgets import ComboBox, FileEdit, FloatSpinBox, Label, PushButton
from psygnal import Signal

from .._provenance import METADATA_KEY, make_provenance
from ..core.image import InvalidImageError, as_analysis_image
from ..core.segment import particle_table, size_statistics
from . import _layers
from ._common import (
    MODEL_TOOLTIP,
    current_frame,
    custom_model_file,
    follow_models,
    image_picker,
    notify_info,
    pixel_size_of,
    plot_style,
)
from ._job import JobWidget

if TYPE_CHECKING:
    import napari

CUSTOM = "Custom .onnx…"
KIND = "Particles"
#: Histograms drawn in the dock: (column stem, title).
HISTOGRAMS = (
    ("equivalent_diameter", "Equivalent diameter D", "D"),
    ("perimeter", "Perimeter P", "P"),
    ("circularity", "Circularity 4πS/P²", "4πS/P²"),
)
#: Seconds of quiet after the last label edit before the table is recomputed.
EDIT_DEBOUNCE_MS = 250


def _column(table: pd.DataFrame, stem: str, calibrated: bool) -> tuple[str, str]:
    """Column name and unit of a measured quantity, in nm when available."""
    if stem == "circularity":
        return "circularity", ""
    if calibrated and f"{stem}_nm" in table:
        return f"{stem}_nm", "nm"
    return f"{stem}_px", "px"


class SegmentParticlesWidget(JobWidget):
    """Segment nanoparticles in the current image and measure them.

    Results: a Labels layer ``Particles (<image>)`` whose features table holds one row per
    particle (area, equivalent diameter, perimeter, circularity, centroid, ``touches_border``;
    in nm when calibrated); histograms of diameter, perimeter and circularity with mean ± std
    (border particles left out) in the dock; CSV export.  Editing the labels with napari's tools
    (paint, fill, erase, undo) updates the table and the histograms.  Running again replaces the
    layer.
    """

    #: Emitted after the table and histograms were recomputed (after a run or a label edit).
    table_updated = Signal()

    job_name = "Segment particles"

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self._watched: Any = None  # the Particles layer whose edits are followed
        self._image = image_picker(viewer, "to segment")
        self._model = ComboBox(label="Model", choices=self._model_choices, tooltip=MODEL_TOOLTIP)
        follow_models(self._model)
        self._custom = custom_model_file()
        self._pixel_size = FloatSpinBox(
            label="Pixel size (nm)",
            min=0.0,
            max=1e6,
            step=0.001,
            value=0.0,
            tooltip="Calibration for the nm columns; taken from the image layer's scale when it "
            "is calibrated. 0: uncalibrated (pixels only).",
        )
        self._pixel_size.native.setDecimals(5)  # atomic-resolution images: 0.01 nm pixels
        self._stats = Label(value="")
        self._csv = FileEdit(
            label="CSV file",
            filter="*.csv",
            mode="w",
            tooltip="Where Export CSV writes the particle table (never over an existing file)",
        )
        self._export = PushButton(
            text="Export CSV",
            tooltip="Write the particle table (with your label edits) and its provenance",
        )
        self.extend([self._image, self._model, self._custom, self._pixel_size])
        self._add_job_controls("Segment")
        self.extend([self._stats, self._csv, self._export])
        self._style = plot_style(viewer)
        self._build_canvas()
        self._timer = self._make_timer()
        self._model.changed.connect(self._on_model_changed)
        self._image.changed.connect(self._on_image_changed)
        self._export.changed.connect(self._on_export)
        viewer.layers.events.inserted.connect(self._image.reset_choices)
        viewer.layers.events.removed.connect(self._image.reset_choices)
        self._on_model_changed()
        self._on_image_changed()

    # -- construction ---------------------------------------------------------------------------
    def _build_canvas(self) -> None:
        import matplotlib
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        with matplotlib.rc_context(self._style):
            self._figure = Figure(figsize=(4.0, 5.0), layout="constrained")
            self._axes = self._figure.subplots(len(HISTOGRAMS), 1)
        self._canvas = FigureCanvasQTAgg(self._figure)
        self._canvas.setMinimumHeight(300)  # room for the form above on a laptop screen
        self.native.layout().addWidget(self._canvas)
        self._draw_histograms(None)

    def _make_timer(self) -> Any:
        from qtpy.QtCore import QTimer

        timer = QTimer(self.native)
        timer.setSingleShot(True)
        timer.setInterval(EDIT_DEBOUNCE_MS)
        timer.timeout.connect(self.refresh_table)
        return timer

    # -- pickers --------------------------------------------------------------------------------
    def _model_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        from ..models.registry import list_models

        return [(card.label, card) for card in list_models("segmentation")] + [(CUSTOM, CUSTOM)]

    def _on_model_changed(self, *_: Any) -> None:
        self._custom.visible = self._model.value == CUSTOM

    def _on_image_changed(self, *_: Any) -> None:
        layer = self._image.value
        if layer is not None:
            self._pixel_size.value = pixel_size_of(layer) or 0.0

    def _selected_model(self) -> Any:
        from ..models.registry import load_model

        if self._model.value == CUSTOM:
            path = self._custom.value
            if not path or not str(path).lower().endswith(".onnx"):
                raise ValueError("choose a .onnx model file")
            return load_model(path, task="segmentation")
        if self._model.value is None:
            raise ValueError("no segmentation model is installed; choose a custom .onnx file")
        return load_model(self._model.value.path, task="segmentation")

    def _pixel_size_nm(self) -> float | None:
        value = float(self._pixel_size.value)
        return value if value > 0 else None

    # -- running --------------------------------------------------------------------------------
    def _on_run(self, *_: Any) -> None:
        from ..models.segmenter import segment_particles

        layer = self._image.value
        if layer is None:
            self._refuse("Segment particles: add or choose an image layer first")
            return
        try:
            frame, index = current_frame(self._viewer, layer)
            image = as_analysis_image(frame, rgb=layer.rgb)
            card = self._selected_model()
        except (InvalidImageError, ValueError) as err:
            self._refuse(f"Segment particles: {err}")
            return
        pixel_size = self._pixel_size_nm()
        source = layer.name + (f" frame {index}" if index else "")

        def compute(progress: Any = None, cancelled: Any = None) -> dict[str, Any]:
            result = segment_particles(
                image,
                card,
                pixel_size_nm=pixel_size,
                keep_probability=False,
                progress=progress,
                cancelled=cancelled,
            )
            provenance = make_provenance(
                "segment",
                result.params,
                model=result.card.provenance(),
                source=source,
                extra={"device": result.device, "pixel_size_nm": pixel_size},
            )
            if index:
                provenance["frame"] = list(index)
            return {
                "labels": result.labels,
                "table": result.table,
                "provenance": provenance,
                "warning": result.size_warning(),
            }

        self._start_job(
            compute,
            lambda out: self._show(layer, out),
            status=f"Segmenting particles in {layer.name}…",
            needs=layer,
        )

    def _show(self, image_layer: napari.layers.Image, out: dict[str, Any]) -> None:
        from napari.layers import Labels

        table = out["table"]
        layer = Labels(
            out["labels"],
            name=_layers.layer_name(KIND, image_layer.name),
            features=_features(table),
            opacity=0.5,
            metadata={METADATA_KEY: out["provenance"]},
            **_layers.geometry(image_layer),
        )
        self._watch(_layers.replace_layer(self._viewer, layer))
        seconds = out["provenance"]["params"].get("seconds", {}).get("total")
        n_border = int(table["touches_border"].sum()) if len(table) else 0
        self._status.value = f"{len(table)} particles ({n_border} at the border) in " + (
            f"{image_layer.name} ({seconds:.2f} s on {out['provenance']['device'].upper()})"
            if seconds
            else image_layer.name
        )
        if out.get("warning"):
            self._status.value += f". Note: {out['warning']}."
            notify_info(f"Segment particles: {out['warning']}")
        self._update_views(table)

    # -- following label edits ------------------------------------------------------------------
    def _watch(self, layer: Any) -> None:
        self._unwatch()
        self._watched = layer
        for name in ("paint", "data", "labels_update"):
            getattr(layer.events, name).connect(self._schedule_refresh)

    def _unwatch(self) -> None:
        layer, self._watched = self._watched, None
        if layer is None:
            return
        for name in ("paint", "data", "labels_update"):
            getattr(layer.events, name).disconnect(self._schedule_refresh)

    def _schedule_refresh(self, *_: Any) -> None:
        try:
            self._timer.start()  # restarts: recompute once the edits stop
        except RuntimeError:  # the dock was closed and its timer deleted: stop following
            self._unwatch()

    def refresh_table(self) -> None:
        """Recompute the watched layer's features table and the histograms from its labels."""
        layer = self._watched
        if layer is None or layer not in self._viewer.layers:
            return
        meta = layer.metadata.get(METADATA_KEY, {})
        table = particle_table(np.asarray(layer.data), pixel_size_nm=meta.get("pixel_size_nm"))
        layer.features = _features(table)
        meta["edited"] = True
        self._update_views(table)

    # -- views ----------------------------------------------------------------------------------
    def _update_views(self, table: pd.DataFrame) -> None:
        stats = size_statistics(table)
        calibrated = "equivalent_diameter_nm" in table
        col, unit = _column(table, "equivalent_diameter", calibrated)
        n_border = stats.attrs.get("n_border", 0)
        if col in stats.index and stats.loc[col, "n"] > 0:
            d = stats.loc[col]
            std = f" ± {d['std']:.3g}" if np.isfinite(d["std"]) else ""
            self._stats.value = (
                f"D = {d['mean']:.3g}{std} {unit} (n = {int(d['n'])}; "
                f"{n_border} at the border left out)"
            )
        else:
            self._stats.value = f"no complete particles ({n_border} at the border)"
        self._draw_histograms(table)
        self.table_updated.emit()

    def _draw_histograms(self, table: pd.DataFrame | None) -> None:
        import matplotlib

        with matplotlib.rc_context(self._style):
            self._plot_histograms(table)
        self._canvas.draw_idle()

    def _plot_histograms(self, table: pd.DataFrame | None) -> None:
        inner = None
        if table is not None and len(table):
            inner = table[~table["touches_border"].to_numpy(bool)]
        calibrated = table is not None and "equivalent_diameter_nm" in table
        for ax, (stem, title, symbol) in zip(self._axes, HISTOGRAMS, strict=True):
            ax.clear()
            ax.tick_params(labelsize=7)
            if inner is None or len(inner) == 0:
                ax.set_title(f"{title}: no particles", fontsize=8)
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            col, unit = _column(inner, stem, calibrated)
            v = pd.to_numeric(inner[col], errors="coerce").to_numpy(float)
            v = v[np.isfinite(v)]
            if v.size == 0:
                ax.set_title(f"{title}: no values", fontsize=8)
                continue
            mean = float(v.mean())
            std = float(v.std(ddof=1)) if v.size > 1 else 0.0
            edges = self._style["figure.facecolor"]
            ax.hist(v, bins=min(30, max(5, v.size // 3)), color="#4c9be8", edgecolor=edges)
            ax.axvspan(mean - std, mean + std, color="orange", alpha=0.2)
            ax.axvline(mean, color="orange", lw=1.5)
            suffix = f" {unit}" if unit else ""
            ax.set_title(f"{title}: {mean:.3g} ± {std:.2g}{suffix} (n = {v.size})", fontsize=8)
            ax.set_xlabel(f"{symbol} ({unit})" if unit else symbol, fontsize=7)
            ax.set_ylabel("particles", fontsize=7)

    # -- export ---------------------------------------------------------------------------------
    def _on_export(self, *_: Any) -> None:
        from ..io import write_csv

        layer = self._watched
        if layer is None or layer not in self._viewer.layers:
            self._refuse("Export CSV: segment an image first")
            return
        path = self._csv.value
        if not path or str(path) in ("", ".") or not str(path).lower().endswith(".csv"):
            self._refuse("Export CSV: choose a .csv file name")
            return
        if self._timer.isActive():  # pending edits: measure them first
            self._timer.stop()
            self.refresh_table()
        table = layer.features.drop(columns=["index"], errors="ignore")
        provenance = dict(layer.metadata.get(METADATA_KEY, {}))
        provenance["layer"] = layer.name
        provenance["coordinates"] = (
            "pixels; y = row, x = column; a pixel's centre has integer coordinates"
        )
        try:
            written = write_csv(table, path, provenance=provenance, overwrite=False)
        except OSError as err:
            self._refuse(f"Export CSV: {err}")
            return
        self._status.value = f"Exported {len(table)} particles to {written}"
        notify_info(f"Exported {len(table)} particles to {written}")


def _features(table: pd.DataFrame) -> pd.DataFrame:
    """Labels-layer features: the table with napari's ``index`` column (= label value)."""
    features = table.copy()
    features.insert(0, "index", table["label"].to_numpy())
    return features.reset_index(drop=True)
