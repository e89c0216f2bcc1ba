"""The "Fine-tune detector" dock widget: retrain the atom detector on the user's data.

It trains on exported, corrected labels, or adapts the HRTEM detector to the microscope's imaging
conditions.  The science is :func:`napari_atomnet.training.finetune.fine_tune_detector` (labels)
and :func:`napari_atomnet.training.adapt.adapt_detector` (simulations at given conditions); this
widget collects its inputs, runs it off the GUI thread, draws the loss curve as it comes in, and
announces the new model to every model picker (:data:`._common.models_changed`).  Neither torch
nor ``napari_atomnet.training`` is imported until a run starts.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)

from ..core.image import InvalidImageError, as_analysis_image
from ._common import (
    CUSTOM_MODEL,
    current_frame,
    custom_model_file,
    follow_models,
    model_choices,
    models_changed,
    notify_info,
    pixel_size_of,
    plot_style,
)
from ._detect import contrast_combo
from ._job import JobWidget

if TYPE_CHECKING:
    import napari

#: How to install what fine-tuning needs.
INSTALL_HINT = 'pip install "napari-atomnet[train]"'
#: Progress stages reported by the fine-tuning function: (stage, label, what is counted).
STAGES = (
    ("data", "Data", "images"),
    ("train", "Training", "steps"),
    ("evaluate", "Evaluation", "images"),
)
#: What to train on: the user's corrected labels, or simulations at their HRTEM conditions.
LABELS = "Corrected labels (export folder)"
SIMULATIONS = "Simulations at my HRTEM conditions"
#: The optics a match to an image sets (editing one of them drops the match).
MATCHED_OPTICS = ("defocus", "cs_um", "defocus_tolerance", "cs_tolerance_um")
#: Steps and base model each source starts with (FineTuneConfig / adapt_config defaults; a
#: test keeps them equal).
SOURCE_DEFAULTS = {LABELS: (300, "atomnet-detect"), SIMULATIONS: (3000, "atomnet-hrtem")}
#: What the base model is for each source (label, tooltip) and what the steps cost.
BASE_ROLES = {
    LABELS: (
        "Start from",
        "The detector to fine-tune; its torch weights (.pt) must lie beside its .onnx",
    ),
    SIMULATIONS: (
        "Settings of",
        "A new compact detector (widths 16-32-48-64) is trained from scratch on the simulations "
        "with this one's classes, input normalisation and thresholds (this one's F1 on them is "
        "the 'before'); it needs no .pt, only a card naming napari-atomnet's architecture",
    ),
}
RUN_TEXTS = {LABELS: "Fine-tune", SIMULATIONS: "Train"}
STEPS_TOOLTIPS = {
    LABELS: "More steps learn more and take longer (300: a few minutes on a laptop CPU)",
    SIMULATIONS: "More steps learn more and take longer (3000: about 7 minutes on 2 CPU cores "
    "with native bfloat16, 11 without)",
}
#: Least seconds between two redraws of the loss curve while training: a redraw costs tens of
#: milliseconds of the CPU the training needs, and the curve changes slowly.
CURVE_REDRAW_S = 2.0
#: Half-width (in loss points) of the centred moving mean drawn as the loss curve's trend.
TREND_HALF_WIDTH = 3


def torch_available() -> bool:
    """Whether PyTorch is installed (checked without importing it)."""
    return importlib.util.find_spec("torch") is not None


def check_new_model_name(name: str) -> str:
    """Return ``name`` stripped if it can name a new model, else raise ValueError.

    Imports :mod:`napari_atomnet.training.finetune` (which does not import torch) for the
    naming rules.

    Raises
    ------
    ValueError
        Empty, not usable as a file name, or a model of that name exists already (built-in or
        in the user model folder).
    """
    from ..models.registry import user_model_dir
    from ..training.finetune import check_model_name

    name = name.strip()
    if not name:
        raise ValueError("enter a name for the new model")
    return check_model_name(name, user_model_dir())


class FineTuneWidget(JobWidget):
    """Fine-tune the atom detector on exported labels (Curate atoms → Export) and register it.

    The labels are mixed with simulated images so the model keeps what it knew; part of the
    labelled data is held out and the detector's F1 on it is shown before and after.  The new
    model (ONNX, model card and torch weights) is written to the user model folder and appears
    in every model picker (Detect atoms, Sequence, this widget).  Needs PyTorch (the ``train``
    extra); without it the widget says how to install it.
    """

    job_name = "Fine-tune detector"

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self._has_torch = torch_available()
        self._steps_seen: list[int] = []
        self._losses: list[float] = []
        self._drawn_at = -float("inf")  # time.monotonic() of the last loss-curve redraw
        self._missing = Label(
            value=f"Fine-tuning needs PyTorch, which is not installed.\nInstall it with:\n"
            f"    {INSTALL_HINT}\nthen restart napari.",
            visible=not self._has_torch,
        )
        self._missing.native.setWordWrap(True)
        self._missing.native.setTextInteractionFlags(_selectable())
        self._missing.native.setStyleSheet("color: #f0a030;")
        self._source = ComboBox(
            label="Train on",
            choices=[LABELS, SIMULATIONS],
            value=LABELS,
            tooltip="Your corrected labels (Curate atoms → Export), or graphene HRTEM images "
            "simulated at your microscope's conditions (adapts the HRTEM detector to them)",
        )
        self._conditions = _conditions_widgets()
        # the (defocus, Cs) pairs an image was matched to, with their weights
        # (ImagingConditions' fields); cleared when the user edits the optics
        self._matched_fields: dict[str, tuple] = {}
        self._match = PushButton(
            text="Match defocus and Cs to the image",
            visible=False,
            tooltip="Find every (defocus, Cs) the selected image is consistent with (about 15 s) "
            "and simulate at all of them",
        )
        self._matched = Label(value="", visible=False)
        self._matched.native.setWordWrap(True)
        self._data = FileEdit(
            label="Labels folder",
            mode="d",
            tooltip="An export folder (Curate atoms → Export), a folder of them, or a folder of "
            "labelImg (Pascal VOC) / YOLO label files beside their images",
        )
        self._base = ComboBox(
            label=BASE_ROLES[LABELS][0],
            choices=lambda _w: model_choices("detection"),
            tooltip=BASE_ROLES[LABELS][1],
        )
        follow_models(self._base)
        self._custom = custom_model_file()
        self._base_note = Label(value="", visible=False)
        self._base_note.native.setWordWrap(True)
        self._base_note.native.setStyleSheet("color: #f0a030;")
        self._name = LineEdit(
            label="New model name",
            tooltip="File name of the new model in the user model folder, e.g. 'srtio3-abf'",
        )
        self._polarity = contrast_combo()
        self._steps = SpinBox(
            label="Training steps",
            min=1,
            max=100_000,
            step=50,
            value=300,  # FineTuneConfig().steps (a test keeps them equal)
            tooltip=STEPS_TOOLTIPS[LABELS],
        )
        self._show_advanced = CheckBox(
            text="Advanced settings",
            value=False,
            tooltip="Show the learning rate, the share of your labels in each batch and the "
            "number of simulated images mixed in",
        )
        self._lr = FloatSpinBox(
            label="Learning rate",
            min=1e-6,
            max=1.0,
            step=1e-4,
            value=1e-3,
            visible=False,
            tooltip="Peak learning rate (AdamW, after a short warm-up, then decaying)",
        )
        self._lr.native.setDecimals(6)
        self._user_fraction = FloatSpinBox(
            label="Share of your data",
            min=0.05,
            max=1.0,
            step=0.05,
            value=0.5,
            visible=False,
            tooltip="Fraction of each training batch cut from your labelled images; the rest is "
            "simulated, so the model does not forget what it knew",
        )
        self._sim_images = SpinBox(
            label="Simulated images",
            min=0,
            max=10_000,
            step=10,
            value=200,
            visible=False,
            tooltip="How many simulated images (with exact labels) are mixed in",
        )
        self._advanced = (self._lr, self._user_fraction, self._sim_images)
        self.extend(
            [
                self._missing,
                self._source,
                self._data,
                self._match,
                self._matched,
                *self._conditions.values(),
                self._base,
                self._custom,
                self._base_note,
                self._name,
                self._polarity,
                self._steps,
                self._show_advanced,
                *self._advanced,
            ]
        )
        self._bars = {}
        for stage, label, unit in STAGES:
            bar = self._bars[stage] = ProgressBar(label=label, min=0, max=1, value=0)
            bar.native.setFormat(f"%v / %m {unit}")
        self._add_job_controls(RUN_TEXTS[LABELS], *self._bars.values())
        _wrap_freely(self._status)
        self._build_canvas()
        self._base.changed.connect(self._on_base_changed)
        self._show_advanced.changed.connect(self._on_show_advanced)
        self._source.changed.connect(self._on_source_changed)
        self._match.changed.connect(self._on_match)
        for key in MATCHED_OPTICS:
            self._conditions[key].changed.connect(self._forget_match)
        self._on_source_changed()
        self._on_base_changed()
        self._set_running(False)

    # -- construction ---------------------------------------------------------------------------
    def _build_canvas(self) -> None:
        import matplotlib
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self._style = plot_style(self._viewer)
        with matplotlib.rc_context(self._style):
            self._figure = Figure(figsize=(4.0, 3.0), layout="constrained")
            self._axes = self._figure.subplots()
            (self._raw_line,) = self._axes.plot(
                [], [], color="#4c9be8", lw=1.0, alpha=0.6, marker=".", ms=3, label="loss"
            )
            (self._mean_line,) = self._axes.plot([], [], color="#f08c28", lw=2.0, label="trend")
        self._canvas = FigureCanvasQTAgg(self._figure)
        self._canvas.setMinimumHeight(240)  # room for the form above on a laptop screen
        self.native.layout().addWidget(self._canvas)
        self._draw_curve(title="Training loss")

    # -- controls -------------------------------------------------------------------------------
    def _on_base_changed(self, *_: Any) -> None:
        choice = self._base.value
        self._custom.visible = choice == CUSTOM_MODEL
        note = ""
        if choice is None:
            note = "No detection model is installed; choose a custom .onnx with its .pt."
        elif choice != CUSTOM_MODEL and self._needs_weights() and not choice.weights.is_file():
            note = (
                f"{choice.name} cannot be fine-tuned: its torch weights "
                f"({choice.weights.name}) are not beside {Path(choice.path).name}."
            )
        self._base_note.value = note
        self._base_note.visible = bool(note)

    def _on_show_advanced(self, *_: Any) -> None:
        for widget in self._advanced:
            widget.visible = bool(self._show_advanced.value) and self._source.value == LABELS

    def _on_source_changed(self, *_: Any) -> None:
        """Show the inputs of the chosen source; start from its model with its step count."""
        simulated = self._source.value == SIMULATIONS
        self._data.visible = self._polarity.visible = not simulated
        self._show_advanced.visible = not simulated  # an adaptation uses adapt_config
        for widget in self._conditions.values():
            widget.visible = simulated
        self._match.visible = simulated
        self._matched.visible = simulated and bool(self._matched_fields)
        if simulated:
            self._sampling_from_image()
        steps, base = SOURCE_DEFAULTS[self._source.value]
        self._steps.value = steps
        self._steps.tooltip = STEPS_TOOLTIPS[self._source.value]
        self._base.label, self._base.tooltip = BASE_ROLES[self._source.value]
        self._run.text = RUN_TEXTS[self._source.value]
        card = next((c for c in self._base.choices if getattr(c, "name", "") == base), None)
        if card is not None:
            self._base.value = card
        self._on_base_changed()  # whether the base's weights are needed depends on the source
        self._on_show_advanced()
        if self._worker is None:  # the last run's curve and bars belong to the other source
            self._reset_views()

    def _selected_image(self) -> Any:
        """Return the selected image layer, or the only one; None when that is not clear."""
        from napari.layers import Image

        layer = self._viewer.layers.selection.active
        if not isinstance(layer, Image):
            images = [lay for lay in self._viewer.layers if isinstance(lay, Image)]
            layer = images[0] if len(images) == 1 else None
        return layer

    def _sampling_from_image(self) -> None:
        """Take the pixel size from the selected (or only) image layer when it is calibrated."""
        layer = self._selected_image()
        nm = pixel_size_of(layer) if layer is not None else None
        box = self._conditions["pixel_size_angstrom"]
        if nm is not None and box.min <= 10 * nm <= box.max:
            box.value = 10 * nm
            box.tooltip = f"Sampling of your images, Å per pixel (from {layer.name}'s calibration)"

    def _on_match(self, *_: Any) -> None:
        """Match defocus and Cs to the selected image (off the GUI thread)."""
        from ..pipeline import match_imaging_conditions

        layer = self._selected_image()
        if layer is None:
            self._refuse("Fine-tune: select the HRTEM image to match in the layer list")
            return
        try:
            frame, _ = current_frame(self._viewer, layer)
            image = as_analysis_image(frame, rgb=layer.rgb)
        except (InvalidImageError, ValueError) as err:
            self._refuse(f"Fine-tune: {err}")
            return
        self._sampling_from_image()
        pixel_size = float(self._conditions["pixel_size_angstrom"].value)
        voltage = float(self._conditions["voltage_kv"].value)

        def compute(progress: Any = None, cancelled: Any = None) -> Any:
            return match_imaging_conditions(
                image, pixel_size, voltage_kv=voltage, progress=progress, cancelled=cancelled
            )

        def show(fit: Any) -> None:
            from ..training.adapt import ImagingConditions

            matched = asdict(ImagingConditions.from_fit(fit, pixel_size))
            for key in MATCHED_OPTICS:
                with self._conditions[key].changed.blocked():
                    self._conditions[key].value = matched[key]
            self._matched_fields = {
                key: matched[key] for key in ("candidates", "candidate_weights")
            }
            self._matched.value = f"Matched to {layer.name}: {fit.summary()}."
            self._matched.visible = True
            self._status.value = (
                f"{len(fit.consistent)} (defocus, Cs) pairs fit {layer.name}; the "
                "simulations are drawn from all of them (editing the values above uses those "
                "instead)."
            )

        self._start_job(
            compute, show, status=f"Matching defocus and Cs to {layer.name}…", needs=layer
        )

    def _forget_match(self, *_: Any) -> None:
        if self._matched_fields:
            self._matched_fields = {}
            self._matched.value = ""
            self._matched.visible = False

    def _set_running(self, running: bool) -> None:
        super()._set_running(running)
        self._match.enabled = not running
        if not self._has_torch:
            self._run.enabled = False
            self._run.tooltip = f"Needs PyTorch: {INSTALL_HINT}"

    # -- running --------------------------------------------------------------------------------
    def _inputs(self) -> dict[str, Any]:
        """Check the form; return the arguments of the job (ValueError says what is wrong)."""
        from ..io.labels import list_label_images

        if not self._has_torch:
            raise ValueError(f"PyTorch is not installed; install it with {INSTALL_HINT}")
        base_arg = self._base_model()
        if self._source.value == SIMULATIONS:
            from ..training.adapt import ImagingConditions

            values: dict[str, Any] = {key: float(w.value) for key, w in self._conditions.items()}
            n_images = int(values.pop("n_images"))
            values.update(self._matched_fields)
            ImagingConditions(**values).check()
            return {
                "conditions": values,
                "n_images": n_images,
                "name": check_new_model_name(str(self._name.value)),
                "base": base_arg,
                "config": {"steps": int(self._steps.value)},
            }
        folder = self._data.value
        if not folder or str(folder) in ("", "."):
            raise ValueError("choose the folder of exported labels")
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise ValueError(f"labels folder not found: {folder}")
        if not list_label_images(folder):
            raise ValueError(
                f"no labelled images in {folder} (export them with Curate atoms → Export, or "
                "choose a folder of labelImg / YOLO labels)"
            )
        name = check_new_model_name(str(self._name.value))
        return {
            "data_dir": folder,
            "name": name,
            "base": base_arg,
            "polarity": self._polarity.value,
            "config": {
                "steps": int(self._steps.value),
                "lr": float(self._lr.value),
                "user_fraction": float(self._user_fraction.value),
                "sim_images": int(self._sim_images.value),
            },
        }

    def _needs_weights(self) -> bool:
        """Fine-tuning on labels starts from the base's weights; training from scratch does not."""
        return self._source.value == LABELS

    def _base_model(self) -> str:
        """Return the base model (registry name or path); to fine-tune it needs its weights."""
        base = self._base.value
        if base == CUSTOM_MODEL:
            path = self._custom.value
            if not path or not str(path).lower().endswith(".onnx"):
                raise ValueError("choose the .onnx file of the model to start from")
            base_arg, weights = str(Path(path).expanduser()), Path(path).with_suffix(".pt")
        elif base is None:
            raise ValueError("no detection model to start from; choose a custom .onnx")
        else:
            base_arg, weights = base.name, base.weights
        if self._needs_weights() and not weights.is_file():
            raise ValueError(
                f"{Path(base_arg).stem} has no torch weights ({weights.name} beside its .onnx); "
                "only models with their .pt can be fine-tuned"
            )
        return base_arg

    def _on_run(self, *_: Any) -> None:
        try:
            args = self._inputs()
        except ValueError as err:
            self._refuse(f"Fine-tune: {err}")
            return
        self._reset_views()

        def compute(progress: Any = None, cancelled: Any = None) -> Any:
            from ..training.finetune import FineTuneConfig, fine_tune_detector

            def report(stage: str, done: int, total: int, loss: float | None = None) -> None:
                progress(done, total, stage, loss)

            if "conditions" in args:
                from ..training.adapt import ImagingConditions, adapt_config, adapt_detector

                return adapt_detector(
                    ImagingConditions(**args["conditions"]),
                    name=args["name"],
                    base=args["base"],
                    n_images=args["n_images"],
                    config=adapt_config(**args["config"]),
                    progress=report,
                    cancelled=cancelled,
                )
            return fine_tune_detector(
                args["data_dir"],
                name=args["name"],
                base=args["base"],
                polarity=args["polarity"],
                config=FineTuneConfig(**args["config"]),
                progress=report,
                cancelled=cancelled,
            )

        self._start_job(
            compute,
            self._show,
            status=f"Fine-tuning {args['base']} as {args['name']}…",
            on_progress=self._on_progress,
            activity=False,  # minutes long: the stage bars above show the progress
        )

    def _on_error(self, err: BaseException) -> None:
        if isinstance(err, InterruptedError):
            self._status.value = "Cancelled; nothing was written."
            self._draw_curve(title="Training loss (cancelled)")
            return
        super()._on_error(err)

    def _on_progress(self, item: tuple) -> None:
        """Progress report ``(done, total, stage, loss)`` from the job, on the GUI thread."""
        done, total, *extra = item
        stage = extra[0] if extra else "train"
        loss = extra[1] if len(extra) > 1 else None
        order = [s for s, *_ in STAGES]
        if stage in self._bars:
            for earlier in order[: order.index(stage)]:  # stages are done once the next starts
                bar = self._bars[earlier]
                bar.value = bar.max
            bar = self._bars[stage]
            bar.max = max(int(total), 1)
            bar.value = min(int(done), bar.max)
        if stage == "train" and loss is not None and np.isfinite(loss):
            self._steps_seen.append(int(done))
            self._losses.append(float(loss))
            now = time.monotonic()
            if now - self._drawn_at >= CURVE_REDRAW_S or done >= total:
                self._drawn_at = now
                self._draw_curve(title=f"Training loss: step {done}/{total}")

    def _show(self, result: Any) -> None:
        """Show a finished fine-tune (GUI thread): F1 before → after, where it was written."""
        for bar in self._bars.values():
            bar.value = bar.max
        if result.history:
            steps, losses = zip(*result.history, strict=True)
            self._steps_seen, self._losses = [int(s) for s in steps], [float(v) for v in losses]
        path = Path(result.onnx_path)
        name = path.stem
        record = (result.card or {}).get("fine_tuning", {})
        f1 = f"Held-out F1 {_f1(result.f1_before)} → {_f1(result.f1_after)}"
        where = "atoms in simulations at your conditions" if "conditions" in record else "atoms"
        atoms = record.get("heldout_atoms")
        seconds = record.get("wall_seconds")
        self._draw_curve(title=f1)
        took = f" in {_duration(seconds)}" if seconds else ""
        self._status.value = "\n".join(
            [
                f"{f1} (before → after" + (f"; {atoms} held-out {where})" if atoms else ")"),
                f"Model {name!r} written{took} to {path}",
                "It is now in the Detect atoms model list.",
            ]
        )
        models_changed.emit()
        notify_info(f"{name!r} ready: {f1[0].lower()}{f1[1:]}")

    # -- loss curve -----------------------------------------------------------------------------
    def _reset_views(self) -> None:
        self._steps_seen, self._losses = [], []
        self._drawn_at = -float("inf")
        for bar in self._bars.values():
            bar.max, bar.value = 1, 0
        self._draw_curve(title="Training loss")

    def _draw_curve(self, *, title: str) -> None:
        import matplotlib

        with matplotlib.rc_context(self._style):
            self._plot_curve(title)
        self._canvas.draw_idle()

    def _plot_curve(self, title: str) -> None:
        ax = self._axes
        x = np.asarray(self._steps_seen, float)
        y = np.asarray(self._losses, float)
        self._raw_line.set_data(x, y)
        self._mean_line.set_data(x, _trend(y))
        ax.relim()
        ax.autoscale_view()
        if y.size:
            ax.set_ylim(0.0, 1.08 * float(y.max()))
            ax.set_xlim(0.0, max(float(x.max()), 1.0))
        ax.set_title(title, fontsize=10, fontweight="bold")
        ax.set_xlabel("training step", fontsize=8)
        ax.set_ylabel("loss", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
        if y.size and not ax.get_legend():
            ax.legend(fontsize=7, loc="upper right")

    @property
    def losses(self) -> list[tuple[int, float]]:
        """The (step, loss) points on the curve."""
        return list(zip(self._steps_seen, self._losses, strict=True))


def _conditions_widgets() -> dict[str, Any]:
    """Return the inputs of an adaptation: ImagingConditions' fields and the image count."""

    def spin(label: str, lo: float, hi: float, step: float, value: float, tip: str) -> Any:
        return FloatSpinBox(
            label=label, min=lo, max=hi, step=step, value=value, tooltip=tip, visible=False
        )

    dose = spin("Dose (e/Å²)", 10.0, 1e7, 1000.0, 1e4, "Electron dose; images drawn within x2")
    dose.native.setDecimals(0)
    return {
        "defocus": spin(
            "Defocus (Å)", -2000, 2000, 5, 0.0, "Positive: underfocus (as in seed 003)"
        ),
        "defocus_tolerance": spin(
            "Defocus ± (Å)", 0, 500, 5, 20.0, "Defocus is drawn within ± this of the value"
        ),
        "cs_um": spin("Cs (µm)", -2000, 2000, 1, 0.0, "Spherical aberration"),
        "cs_tolerance_um": spin(
            "Cs ± (µm)", 0, 500, 1, 5.0, "Cs is drawn within ± this of the value"
        ),
        "astig_max_angstrom": spin(
            "Astigmatism ≤ (Å)", 0, 200, 1, 10.0, "Residual two-fold astigmatism, drawn up to this"
        ),
        "pixel_size_angstrom": spin(
            "Pixel size (Å)", 0.03, 0.5, 0.005, 0.12, "Sampling of your images, Å per pixel"
        ),
        "voltage_kv": spin("Voltage (kV)", 20, 1000, 10, 80.0, "Acceleration voltage"),
        "dose": dose,
        "n_images": SpinBox(
            label="Simulated images",
            min=10,
            max=2000,
            step=10,
            value=500,
            tooltip="Images simulated, 256² each (a fifth held out to measure F1)",
            visible=False,
        ),
    }


def _trend(y: np.ndarray) -> np.ndarray:
    """Centred moving mean of the loss points (the curve's trend line; no lag).

    The window is ``2 * TREND_HALF_WIDTH + 1`` points, shrunk symmetrically near both ends.
    """
    n = len(y)
    out = np.empty(n)
    for i in range(n):
        h = min(TREND_HALF_WIDTH, i, n - 1 - i)
        out[i] = y[i - h : i + h + 1].mean()
    return out


def _f1(value: float) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.3f}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(float(seconds)), 60)
    nbsp = "\u00a0"  # keep "2 min 18 s" on one line when the status wraps
    return f"{minutes}{nbsp}min{nbsp}{secs}{nbsp}s" if minutes else f"{secs}{nbsp}s"


def _wrap_freely(label: Label) -> None:
    """Let a word-wrapped label take the dock's width instead of widening it (long paths)."""
    from qtpy.QtWidgets import QSizePolicy

    label.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    label.native.setMinimumWidth(1)


def _selectable() -> Any:
    from qtpy.QtCore import Qt

    return Qt.TextInteractionFlag.TextSelectableByMouse
