"""The "Fine-tune detector" dock widget in a real napari viewer (run under Xvfb).

The fine-tuning runs are real (torch, a few steps on a tiny export) and write only into
``tmp_path`` (``NAPARI_ATOMNET_MODELS`` is pointed there).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from napari_atomnet import synth
from napari_atomnet._widgets._common import CUSTOM_MODEL
from napari_atomnet._widgets._detect import DetectAtomsWidget
from napari_atomnet._widgets._finetune import (
    INSTALL_HINT,
    LABELS,
    SIMULATIONS,
    SOURCE_DEFAULTS,
    FineTuneWidget,
)
from napari_atomnet.io.labels import export_labels

pytestmark = pytest.mark.gui

NAME = "tuned-test"


def _notes(severity: str) -> list[str]:
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records if n.severity == severity]


def _labels(choices) -> list[str]:
    return [getattr(c, "name", c) for c in choices]


@pytest.fixture
def models(tmp_path, monkeypatch):
    """An empty user model folder in tmp_path."""
    folder = tmp_path / "models"
    monkeypatch.setenv("NAPARI_ATOMNET_MODELS", str(folder))
    return folder


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """A folder of two export folders: simulated dark-atom images with their exact labels."""
    root = tmp_path_factory.mktemp("labels")
    for seed in (1, 2):
        sim = synth.lattice_image((160, 160), spacing=13.0, polarity="dark", dose=300, seed=seed)
        export_labels(sim.image, sim.atoms, root, name=f"img{seed}", formats="csv")
    return root


@pytest.fixture
def widget(make_napari_viewer, models, export_dir):
    viewer = make_napari_viewer()
    w = FineTuneWidget(viewer)
    w._data.value = export_dir
    w._name.value = NAME
    w._steps.value = 10  # progress (and a loss point) every 5 steps
    w._sim_images.value = 2
    return w


def _user_files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_fine_tune_draws_the_loss_writes_the_model_and_updates_the_pickers(
    widget, models, qtbot, napari_bars
):
    detect = DetectAtomsWidget(widget._viewer)
    assert NAME not in _labels(detect._model.choices)
    with qtbot.waitSignal(widget.run_finished, timeout=120_000):
        widget._run.native.click()
        assert not widget._run.enabled and widget._cancel.enabled
    status = widget._status.value
    assert "F1" in status and "→" in status, status
    assert _user_files(models) == [f"{NAME}.json", f"{NAME}.onnx", f"{NAME}.pt"]
    assert str(models / f"{NAME}.onnx") in status
    # the loss curve got a point per step, drawn in the dock
    steps = [step for step, _ in widget.losses]
    assert steps == [5, 10], steps
    assert len(widget._raw_line.get_xdata()) == len(steps)
    assert all(bar.value == bar.max for bar in widget._bars.values())
    assert napari_bars == []  # minutes long: the stage bars show the progress, not napari's
    # the new model is offered by the Detect atoms picker (and as a base here) at once
    assert NAME in _labels(detect._model.choices)
    assert NAME in _labels(widget._base.choices)
    assert any(NAME in message for message in _notes("info"))
    assert widget._run.enabled and not widget._cancel.enabled
    # another source: the last run's curve and bars are cleared
    widget._source.value = SIMULATIONS
    assert widget.losses == [] and len(widget._raw_line.get_xdata()) == 0
    assert all(bar.value == 0 for bar in widget._bars.values())


def test_cancel_writes_nothing(widget, models, qtbot):
    widget._steps.value = 100_000
    with qtbot.waitSignal(widget.run_finished, timeout=120_000):
        widget._run.native.click()
        qtbot.waitUntil(lambda: len(widget.losses) > 0, timeout=90_000)
        widget._cancel.native.click()
    assert "Cancelled" in widget._status.value
    assert not any(name.startswith(NAME) for name in _user_files(models))
    assert widget._run.enabled and widget._worker is None


def test_bad_input_notifies_and_changes_nothing(widget, models, tmp_path):
    from conftest import make_log_detector

    assert widget._lr.native.isHidden()  # advanced settings fold away
    widget._show_advanced.value = True
    assert not any(w.native.isHidden() for w in (widget._lr, widget._user_fraction))
    models.mkdir()
    make_log_detector(models / "taken.onnx")
    before = _user_files(models)
    empty = tmp_path / "empty"
    empty.mkdir()
    no_weights = make_log_detector(tmp_path / "no-weights.onnx")
    cases = [
        ({"_data": ""}, "choose the folder"),
        ({"_data": empty}, "no labelled images"),
        ({"_name": "  "}, "enter a name"),
        ({"_name": "../evil"}, "not a safe file name"),
        ({"_name": "taken"}, "exists already"),
        ({"_name": "atomnet-detect"}, "built-in model's name"),
        ({"_base": CUSTOM_MODEL, "_custom": no_weights}, "no torch weights"),
    ]
    good = {"_data": widget._data.value, "_name": NAME, "_base": widget._base.value}
    for change, message in cases:
        for attr, value in {**good, **change}.items():
            if value == "":  # a FileEdit left empty
                getattr(widget, attr).line_edit.value = ""
            else:
                getattr(widget, attr).value = value
        widget._run.native.click()
        assert message in _notes("error")[-1], (change, _notes("error")[-1])
        assert widget._worker is None and widget._run.enabled
    assert _user_files(models) == before
    assert widget.losses == []
    # a model without its torch weights says so as soon as it is picked
    widget._base.reset_choices()
    widget._base.value = next(c for c in widget._base.choices if getattr(c, "name", "") == "taken")
    assert not widget._base_note.native.isHidden()
    assert "taken.pt" in widget._base_note.value
    widget._run.native.click()
    assert "no torch weights" in _notes("error")[-1]
    assert widget._worker is None and _user_files(models) == before
    # training from scratch on simulations takes only the architecture: no note then
    widget._source.value = SIMULATIONS
    widget._base.value = next(c for c in widget._base.choices if getattr(c, "name", "") == "taken")
    assert widget._base_note.native.isHidden()
    widget._source.value = LABELS
    widget._base.value = next(c for c in widget._base.choices if getattr(c, "name", "") == "taken")
    assert "taken.pt" in widget._base_note.value


def test_without_torch_the_widget_says_how_to_install_it(make_napari_viewer, models, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a, **k: None if name == "torch" else real(name, *a, **k),
    )
    widget = FineTuneWidget(make_napari_viewer())
    assert not widget._missing.native.isHidden() and INSTALL_HINT in widget._missing.value
    assert not widget._run.enabled
    widget._run.native.click()  # disabled: a click does nothing
    assert widget._worker is None
    widget._on_run()  # and a run started anyway says what is missing
    assert INSTALL_HINT in _notes("error")[-1]
    assert widget._worker is None and not widget._run.enabled


def test_module_imports_neither_torch_nor_the_training_code():
    code = textwrap.dedent(
        """
        import sys
        import napari_atomnet._widgets._finetune
        bad = [m for m in sys.modules if m == "torch" or m.startswith("napari_atomnet.training")]
        print(bad)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_default_steps_are_the_library_default(make_napari_viewer):
    pytest.importorskip("torch")
    from napari_atomnet._widgets._finetune import BASE_ROLES, FineTuneWidget
    from napari_atomnet.training.adapt import ADAPT_CHANNELS, ADAPT_IMAGES, adapt_config
    from napari_atomnet.training.finetune import FineTuneConfig

    widget = FineTuneWidget(make_napari_viewer())
    assert widget._steps.value == FineTuneConfig().steps == SOURCE_DEFAULTS[LABELS][0]
    assert SOURCE_DEFAULTS[SIMULATIONS][0] == adapt_config().steps
    # the tooltip spells out the widths the adaptation trains (the dock imports no training)
    assert "widths " + "-".join(map(str, ADAPT_CHANNELS)) in BASE_ROLES[SIMULATIONS][1]
    assert widget._conditions["n_images"].value == ADAPT_IMAGES
    # the adaptation's fields start at the library's defaults (the pixel size has none there)
    from dataclasses import MISSING, fields

    from napari_atomnet.training.adapt import ImagingConditions

    for field in fields(ImagingConditions):
        if field.name in ("candidates", "candidate_weights"):  # set by matching to an image
            assert field.name not in widget._matched_fields and field.default == ()
        elif field.default is not MISSING:
            assert widget._conditions[field.name].value == field.default, field.name


def test_adapting_to_imaging_conditions_writes_a_model_for_them(widget, models, qtbot):
    """Train on simulations at the microscope's conditions: the inputs swap, the run is real."""
    layer = widget._viewer.add_image(np.zeros((64, 64)), name="calibrated", scale=(0.0135, 0.0135))
    widget._viewer.layers.selection.active = layer
    widget._source.value = SIMULATIONS
    assert widget._conditions["pixel_size_angstrom"].value == pytest.approx(0.135)
    assert widget._data.native.isHidden() and widget._polarity.native.isHidden()
    assert not widget._conditions["defocus"].native.isHidden()
    assert widget._base.value.name == "atomnet-hrtem" and widget._steps.value == 3000
    assert widget._base.label == "Settings of"  # trained from scratch, not fine-tuned
    assert widget._run.text == "Train"
    widget._name.value = "  "
    widget._run.native.click()
    assert "enter a name" in _notes("error")[-1] and widget._worker is None
    conditions = {"defocus": 60.0, "cs_um": -10.0, "pixel_size_angstrom": 0.12, "n_images": 10}
    for key, value in conditions.items():
        widget._conditions[key].value = value
    widget._name.value = "dark60"
    widget._steps.value = 10
    with qtbot.waitSignal(widget.run_finished, timeout=180_000):
        widget._run.native.click()
    status = widget._status.value
    assert "held-out atoms in simulations at your conditions" in status, status
    assert _user_files(models) == ["dark60.json", "dark60.onnx", "dark60.pt"]
    import json

    record = json.loads((models / "dark60.json").read_text())["fine_tuning"]
    assert record["conditions"]["defocus"] == 60.0 and record["simulated_at_conditions"] == 10
    assert [step for step, _ in widget.losses] == [5, 10]
    # the Detect dock picks up what the adapted card knows: dark atoms, no refinement
    detect = DetectAtomsWidget(widget._viewer)
    assert detect._contrast.value == "auto" and detect._refine.value
    detect._model.value = next(c for c in detect._model.choices if _labels([c]) == ["dark60"])
    assert detect._contrast.value == "dark" and not detect._refine.value
    widget._source.value = LABELS  # back: the labels' inputs and defaults return
    assert not widget._data.native.isHidden() and widget._conditions["cs_um"].native.isHidden()
    assert widget._base.value.name == "atomnet-detect" and widget._steps.value == 300
    assert widget._base.label == "Start from" and widget._run.text == "Fine-tune"


def test_matching_the_conditions_to_an_image(widget, models, qtbot):
    """ "Match defocus and Cs to the image" fills the optics from the image (the bundled
    graphene sample: -60 Å, -10 µm) and the adaptation simulates at every pair it allows;
    editing the values afterwards uses them instead."""
    import json

    viewer = widget._viewer
    viewer.open_sample("napari-atomnet", "graphene_hrtem")
    viewer.layers.selection.active = viewer.layers["graphene_hrtem"]
    widget._source.value = SIMULATIONS
    assert not widget._match.native.isHidden() and widget._matched.native.isHidden()
    with qtbot.waitSignal(widget.run_finished, timeout=120_000):
        widget._match.native.click()
    pairs = np.array(widget._matched_fields["candidates"])
    assert len(widget._matched_fields["candidate_weights"]) == len(pairs)
    assert len(pairs) > 10 and (np.abs(pairs - (-60.0, -10.0)) <= (5, 1)).all(axis=1).any()
    best = (widget._conditions["defocus"].value, widget._conditions["cs_um"].value)
    assert best in {tuple(p) for p in pairs}
    assert widget._conditions["defocus"].value < 0  # bright atoms: not underfocus
    assert widget._conditions["pixel_size_angstrom"].value == pytest.approx(0.12)
    assert "Matched to graphene_hrtem: defocus" in widget._matched.value
    assert not widget._matched.native.isHidden()
    widget._name.value = "matched"
    widget._conditions["n_images"].value = 10
    widget._steps.value = 2
    with qtbot.waitSignal(widget.run_finished, timeout=180_000):
        widget._run.native.click()
    record = json.loads((models / "matched.json").read_text())["fine_tuning"]
    np.testing.assert_allclose(record["conditions"]["candidates"], pairs)
    assert max(record["conditions"]["candidate_weights"]) == 1.0  # the best match
    # editing the optics forgets the match: the next run draws around the values entered
    widget._conditions["defocus"].value = 60.0
    assert widget._matched_fields == {} and widget._matched.native.isHidden()
    # no image to match: a notification, nothing runs
    viewer.layers.clear()
    widget._match.native.click()
    assert "select the HRTEM image" in _notes("error")[-1] and widget._worker is None
