"""Small pieces shared by the dock widgets: layer pickers, frames of stacks, messages."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from psygnal import Signal

if TYPE_CHECKING:
    import napari


def image_layers(viewer: napari.Viewer) -> list[tuple[str, Any]]:
    """Return (name, layer) choices of every Image layer, for a ComboBox."""
    from napari.layers import Image

    return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, Image)]


def image_picker(viewer: napari.Viewer, what: str) -> Any:
    """Return the "Image" picker of a dock: every Image layer, with a tooltip saying ``what``."""
    from magicgui.widgets import ComboBox

    return ComboBox(
        label="Image",
        choices=lambda _w: image_layers(viewer),
        tooltip=f"The image layer {what} (of a stack: the frame shown now)",
    )


#: Tooltip of every Models picker that lists built-in, fine-tuned and custom models.
MODEL_TOOLTIP = (
    "The built-in models, those you fine-tuned or adapted (they appear here at once), or "
    "'Custom .onnx…' for any napari-atomnet model file"
)


def custom_model_file() -> Any:
    """Return the file picker shown when the model picker is on "Custom .onnx…"."""
    from magicgui.widgets import FileEdit

    return FileEdit(
        label="Model file",
        filter="*.onnx",
        mode="r",
        visible=False,
        tooltip="A napari-atomnet .onnx model (its card, embedded or beside it as .json, says "
        "what it does)",
    )


def follow_atoms_layer(viewer: napari.Viewer, image_combo: Any, atoms_combo: Any) -> None:
    """Keep an Atoms picker on ``Atoms (<image>)`` of the picked image.

    It is chosen when the image is picked and whenever that layer (re)appears, e.g. after
    Detect atoms ran (which replaces the layer): a picker left on another Points layer (the
    truth of a sample, an older result) would silently analyse the wrong atoms.
    """
    from ._layers import layer_name

    def select(*_: Any) -> None:
        image = image_combo.value
        if image is None:
            return
        name = layer_name("Atoms", image.name)
        if name in viewer.layers:
            atoms_combo.reset_choices()
            atoms_combo.value = viewer.layers[name]

    image_combo.changed.connect(select)
    viewer.layers.events.inserted.connect(select)
    select()


def when_undocked(widget: Any, callback: Callable[[], None]) -> None:
    """Call ``callback`` once when the dock holding ``widget`` is closed.

    napari's close button (and ``Window.remove_dock_widget``) takes the widget out of its dock
    without closing or deleting it, so a widget that hooks into the viewer (key bindings, layer
    events) must unhook itself then: it watches its Qt widget being un-parented after it was
    docked.
    """
    from qtpy.QtCore import QEvent, QObject

    class _Watch(QObject):
        def __init__(self, native: Any) -> None:
            super().__init__(native)
            self.docked = native.parent() is not None
            self.done = False

        def eventFilter(self, obj: Any, event: Any) -> bool:
            if event.type() == QEvent.Type.ParentChange and not self.done:
                if obj.parent() is not None:
                    self.docked = True
                elif self.docked:
                    self.done = True
                    callback()
            return False

    native = widget.native
    watch = _Watch(native)
    native.installEventFilter(watch)
    native._atomnet_undock_watch = watch  # the Python side of the filter lives as long as it


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


def refuse(status: Any, message: str) -> None:
    """Refuse an action: an error notification, and the dock's status line says why.

    The status line would otherwise still show the previous result, as if the refused run
    had produced it.
    """
    notify_error(message)
    status.value = message


def notify_info(message: str) -> None:
    """Show an information notification in napari."""
    from napari.utils.notifications import show_info

    show_info(message)


#: Model-picker entry that opens a file picker for any .onnx with a model card.
CUSTOM_MODEL = "Custom .onnx…"


def model_choices(task: str, *extra: tuple[str, Any]) -> list[tuple[str, Any]]:
    """Return the model-picker choices: built-in and user models of ``task``, ``extra``, custom."""
    from ..models.registry import list_models

    return [(card.label, card) for card in list_models(task)] + [
        *extra,
        (CUSTOM_MODEL, CUSTOM_MODEL),
    ]


def selected_model(choice: Any, custom_path: Any, task: str) -> Any:
    """Resolve a model-picker choice to a verified model card.

    Strings other than the custom entry (e.g. ``"classical"``) are returned unchanged.

    Raises
    ------
    ValueError
        No model chosen, no file chosen for a custom model, or a model that fails its checks.
    """
    from ..models.registry import ModelCard, load_model

    if choice == CUSTOM_MODEL:
        if not custom_path or not str(custom_path).lower().endswith(".onnx"):
            raise ValueError("choose a .onnx model file")
        return load_model(custom_path, task=task)
    if choice is None:
        raise ValueError(f"no {task} model is installed; choose a custom .onnx file")
    if isinstance(choice, ModelCard):
        return load_model(choice.path, task=task)
    return choice


class _ModelEvents:
    """Holder of the :data:`models_changed` signal (psygnal needs a class attribute)."""

    changed = Signal()


_MODEL_EVENTS = _ModelEvents()

#: Emitted on the GUI thread after a model was added to (or removed from) the user model
#: folder, e.g. by fine-tuning; every model picker made to :func:`follow_models` re-reads its
#: choices.
models_changed = _MODEL_EVENTS.changed


def follow_models(combo: Any) -> None:
    """Make a model-picker ComboBox re-read its choices whenever :data:`models_changed` fires.

    The picker is held weakly; once it is gone (or its dock was closed and its Qt widget
    deleted) the connection removes itself.
    """
    ref = weakref.ref(combo)

    def refresh() -> None:
        picker = ref()
        try:
            if picker is None:
                raise RuntimeError("picker deleted")
            picker.reset_choices()
        except RuntimeError:  # the widget (or its Qt object) is gone: stop following
            models_changed.disconnect(refresh)

    models_changed.connect(refresh)


def plot_style(viewer: napari.Viewer) -> dict[str, Any]:
    """Return matplotlib rcParams in the colours of the viewer's theme (dark by default).

    Plots in a dock are drawn inside ``matplotlib.rc_context(plot_style(viewer))`` so that they
    match the window instead of standing out as white cards.
    """
    from napari.utils.theme import get_theme

    try:
        theme = get_theme(viewer.theme)
    except (KeyError, ValueError):  # e.g. "system" in some versions
        theme = get_theme("dark")
    background, panel = theme.background.as_hex(), theme.foreground.as_hex()
    text, grid = theme.text.as_hex(), theme.highlight.as_hex()
    return {
        "figure.facecolor": background,
        "axes.facecolor": panel,
        "axes.edgecolor": grid,
        "axes.labelcolor": text,
        "axes.titlecolor": text,
        "text.color": text,
        "xtick.color": text,
        "ytick.color": text,
        "grid.color": grid,
        "legend.facecolor": panel,
        "legend.edgecolor": grid,
        "savefig.facecolor": background,
    }


def pixel_size_of(layer: Any) -> float | None:
    """Pixel size (nm) of an image layer when its scale is a calibration, else None.

    The scale counts as nm when the layer's units are nm or unset/pixel (the sample data and
    the readers set nm scales without units), as Å when they are Å; a scale of 1 means
    uncalibrated.
    """
    scale = float(np.asarray(layer.scale)[-1])
    units = getattr(layer, "units", None)
    unit = str(units[-1]) if units is not None and len(units) else ""
    if scale == 1.0 or not np.isfinite(scale) or scale <= 0:
        return None
    if unit in ("nanometer", "nm", "pixel", "px", ""):
        return scale
    if unit in ("angstrom", "Å"):
        return scale / 10.0
    return None
