"""The "Detect atoms" dock widget in a real napari viewer (run under Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_atomnet._widgets._detect import CUSTOM, DetectAtomsWidget, provenance_of
from napari_atomnet.models.registry import load_model

pytestmark = pytest.mark.gui


def _errors():
    from napari.utils.notifications import notification_manager

    return [n.message for n in notification_manager.records if n.severity == "error"]


@pytest.fixture
def viewer_with_sample(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-atomnet", "perovskite_haadf")
    return viewer


def _widget(viewer, model_path):
    widget = DetectAtomsWidget(viewer)
    widget._image.value = viewer.layers["perovskite_haadf"]
    widget._model.value = CUSTOM
    widget._custom.value = model_path
    return widget


def _run(qtbot, widget):
    with qtbot.waitSignal(widget.run_finished, timeout=60_000):
        widget._run.native.click()


def test_detect_adds_boxes_and_atoms_layers(viewer_with_sample, qtbot, tmp_path, napari_bars):
    from conftest import make_log_detector

    viewer = viewer_with_sample
    model = make_log_detector(tmp_path / "tiny.onnx", card={"tile": 256, "margin": 16})
    widget = _widget(viewer, model)
    widget._threshold.value = 0.5
    _run(qtbot, widget)
    assert napari_bars == [widget.job_name]  # a short job: napari's progress bar
    atoms = viewer.layers["Atoms (perovskite_haadf)"]
    boxes = viewer.layers["Boxes (perovskite_haadf)"]
    image = viewer.layers["perovskite_haadf"]
    n = len(atoms.data)
    assert n > 300
    assert len(boxes.data) == n and set(boxes.shape_type) == {"rectangle"}
    feats = atoms.features
    for column in ("y", "x", "score", "class", "fit_ok", "amplitude", "sigma_y", "y0", "x1"):
        assert column in feats.columns, column
    np.testing.assert_allclose(atoms.data, feats[["y", "x"]].to_numpy())
    np.testing.assert_allclose(atoms.scale, image.scale[-2:])
    prov = provenance_of(atoms)
    assert prov["model"]["name"] == "tiny" and len(prov["model"]["sha256"]) == 64
    assert prov["params"]["threshold"] == 0.5 and prov["source"] == "perovskite_haadf"
    # the strong A columns are found near their true positions
    truth = viewer.layers["Truth (perovskite_haadf)"].features
    a_sites = truth[truth["class"] == 0][["y", "x"]].to_numpy()
    d = np.hypot(*(a_sites[:, None] - atoms.data[None]).transpose(2, 0, 1)).min(axis=1)
    assert np.median(d) < 0.3

    # re-running replaces the layers instead of stacking new ones
    widget._threshold.value = 0.9
    _run(qtbot, widget)
    names = [layer.name for layer in viewer.layers]
    assert names.count("Atoms (perovskite_haadf)") == 1
    assert names.count("Boxes (perovskite_haadf)") == 1
    assert len(viewer.layers["Atoms (perovskite_haadf)"].data) < n
    assert widget._run.enabled and not widget._cancel.enabled


def test_bad_input_notifies_and_changes_nothing(make_napari_viewer, tmp_path):
    from conftest import make_log_detector

    viewer = make_napari_viewer()
    model = make_log_detector(tmp_path / "tiny.onnx")
    rgb = viewer.add_image(np.random.default_rng(0).random((64, 64, 3)), name="photo", rgb=True)
    nan = np.ones((64, 64))
    nan[3, 3] = np.nan
    viewer.add_image(nan, name="holes")
    widget = DetectAtomsWidget(viewer)
    widget._model.value = CUSTOM
    widget._custom.value = model
    before = [layer.name for layer in viewer.layers]
    for layer, message in ((rgb, "RGB"), (viewer.layers["holes"], "NaN")):
        widget._image.value = layer
        widget._run.native.click()
        assert message in _errors()[-1]
        assert widget._status.value == _errors()[-1]  # not an older run's result
    assert [layer.name for layer in viewer.layers] == before
    assert widget._worker is None and widget._run.enabled


def test_cancel_leaves_layers_unchanged(viewer_with_sample, qtbot, tmp_path):
    from conftest import make_log_detector

    viewer = viewer_with_sample
    model = make_log_detector(tmp_path / "tiny.onnx", card={"tile": 32, "margin": 8})
    widget = _widget(viewer, model)
    with qtbot.waitSignal(widget.run_finished, timeout=60_000):
        widget._run.native.click()
        widget._cancel.native.click()
    assert "Atoms (perovskite_haadf)" not in viewer.layers
    assert "Cancel" in widget._status.value


def test_refine_selected_points(viewer_with_sample, qtbot, tmp_path):
    from conftest import make_log_detector

    viewer = viewer_with_sample
    widget = _widget(
        viewer, make_log_detector(tmp_path / "tiny.onnx", card={"tile": 256, "margin": 16})
    )
    _run(qtbot, widget)
    atoms = viewer.layers["Atoms (perovskite_haadf)"]
    good = atoms.data.copy()
    feats = atoms.features
    centre_dist = np.hypot(feats["y"] - 256, feats["x"] - 256)
    strong = int(
        np.argmin(
            np.where(
                feats["fit_ok"] & (feats["amplitude"] > feats["amplitude"].median()),
                centre_dist,
                np.inf,
            )
        )
    )
    moved = good.copy()
    moved[strong] += [1.2, -0.9]  # knocked off its peak, e.g. by a hand edit
    moved[0] += [1.0, 1.0]  # not selected: stays where it is
    atoms.data = moved
    atoms.selected_data = {strong}
    widget._refine_points.native.click()
    np.testing.assert_allclose(atoms.data[strong], good[strong], atol=0.05)
    np.testing.assert_allclose(atoms.data[0], moved[0])
    assert "Refined 1 atom" in widget._status.value


@pytest.mark.parametrize("contrast", ["dark", "auto"])
def test_atom_contrast_reaches_the_detector(make_napari_viewer, qtbot, monkeypatch, contrast):
    from napari_atomnet import _samples
    from napari_atomnet.core.metrics import detection_scores
    from napari_atomnet.models import detector

    seen = []
    real = detector.detect_atoms

    def spy(*args, **kwargs):
        seen.append(kwargs.get("polarity"))
        return real(*args, **kwargs)

    monkeypatch.setattr(detector, "detect_atoms", spy)
    viewer = make_napari_viewer()
    viewer.open_sample("napari-atomnet", "interface_abf")  # ABF-like: dark columns
    widget = DetectAtomsWidget(viewer)
    widget._image.value = viewer.layers["interface_abf"]
    assert [c for c in widget._contrast.choices] == ["auto", "bright", "dark"]
    assert widget._contrast.value == "auto"
    widget._contrast.value = contrast
    _run(qtbot, widget)
    assert seen == [contrast]
    atoms = viewer.layers["Atoms (interface_abf)"]
    params = provenance_of(atoms)["params"]
    assert params["polarity"] == "dark" and params["polarity_requested"] == contrast
    assert "dark atoms" in widget._status.value
    assert "contrast told by the model" not in widget._status.value  # STEM: the image tells
    # the refined positions' median standard error, as the Atoms features table holds them
    ok = atoms.features[atoms.features["fit_ok"]]
    median = np.median(np.sqrt((ok["y_err"] ** 2 + ok["x_err"] ** 2) / 2))
    assert 0.005 < median < 0.5
    assert f"positions ± {median:.2g} px per axis" in widget._status.value
    truth = _samples.load_sample("interface_abf")["truth"][["y", "x"]].to_numpy()
    scores = detection_scores(atoms.data, truth, 3.0, shape=(384, 384), border=6.0)
    assert scores["recall"] >= 0.98 and scores["f1"] >= 0.95, scores
    # "Refine selected atoms" uses the contrast the detection used
    widget._contrast.value = "auto"
    widget._refine_points.native.click()
    assert "fits ok" in widget._status.value
    assert (atoms.features.loc[atoms.features["fit_ok"], "amplitude"] < 0).all()


def test_fit_check_checkbox(make_napari_viewer, qtbot):
    from napari_atomnet import synth

    viewer = make_napari_viewer()
    # ABF-like rocksalt at 20 counts: the "weak" channel proposes columns at empty cell centres
    sim = synth.lattice_image(
        (384, 384), lattice="rocksalt", spacing=13, polarity="dark", dose=20, seed=4_242_003
    )
    viewer.add_image(sim.image, name="abf")
    widget = DetectAtomsWidget(viewer)
    widget._image.value = viewer.layers["abf"]
    widget._contrast.value = "dark"
    assert widget._fit_check.value and widget._fit_check.enabled
    _run(qtbot, widget)
    checked = viewer.layers["Atoms (abf)"]
    dropped = provenance_of(checked)["params"]["fit_check"]["dropped"]
    assert dropped > 0 and f"{dropped} unconfirmed dropped" in widget._status.value
    checked_at = provenance_of(checked)["params"]["class_thresholds"]
    widget._fit_check.value = False
    _run(qtbot, widget)
    everything = viewer.layers["Atoms (abf)"]
    params = provenance_of(everything)["params"]
    assert "fit_check" not in params
    # detected at the card's own thresholds, not the lower ones meant for the fit check
    card = load_model("atomnet-detect").info
    assert params["class_thresholds"] == card["class_thresholds"]
    assert checked_at == card["fit_check"]["class_thresholds"] != params["class_thresholds"]
    widget._refine.value = False  # the check needs the Gaussian fits
    assert not widget._fit_check.enabled


def test_hrtem_model_from_the_picker_on_the_graphene_sample(make_napari_viewer, qtbot):
    from napari_atomnet.core.metrics import detection_scores

    viewer = make_napari_viewer()
    viewer.open_sample("napari-atomnet", "graphene_hrtem")
    widget = DetectAtomsWidget(viewer)
    widget._image.value = viewer.layers["graphene_hrtem"]
    assert len(widget._model.choices) >= 3  # two built-in detectors and "Custom .onnx…"
    card = next(c for c in widget._model.choices if getattr(c, "name", "") == "atomnet-hrtem")
    widget._model.value = card
    info = load_model("atomnet-hrtem").info
    assert widget._threshold.value == pytest.approx(info["default_threshold"])
    assert widget._model.tooltip == info["description"]
    assert not widget._refine.value  # its card: phase-contrast atoms are not Gaussian
    widget._contrast.value = "bright"  # the sample: defocus -60 Å, Cs -10 µm
    _run(qtbot, widget)
    atoms = viewer.layers["Atoms (graphene_hrtem)"]
    assert provenance_of(atoms)["model"]["name"] == "atomnet-hrtem"
    truth = viewer.layers["Truth (graphene_hrtem)"].data
    spacing = np.median(
        np.sort(np.hypot(*(truth[:, None] - truth[None]).transpose(2, 0, 1)), 1)[:, 1]
    )
    score = detection_scores(
        atoms.data,
        truth,
        0.25 * spacing,
        shape=viewer.layers["graphene_hrtem"].data.shape,
        border=0.5 * spacing,
    )
    assert score["f1"] >= 0.95
    assert "fit_ok" not in atoms.features
    widget._model.value = next(
        c for c in widget._model.choices if getattr(c, "name", "") == "atomnet-detect"
    )
    assert widget._refine.value  # the general model refines again


def test_hrtem_model_finds_dark_atoms_with_the_contrast_left_on_auto(make_napari_viewer, qtbot):
    """A user who does not know whether the atoms are dark or bright leaves "auto": the HRTEM
    model tells it (dark at +60 Å defocus) and the result says so."""
    from napari_atomnet import synth
    from napari_atomnet.core.metrics import detection_scores

    sim = synth.graphene_hrtem(
        (256, 256), defocus=60.0, cs_um=-10.0, dose=1e4, astig_angstrom=5.0, seed=3_100_000
    )
    assert sim.extras["polarity"] < 0
    viewer = make_napari_viewer()
    viewer.add_image(sim.image, name="dark graphene")
    widget = DetectAtomsWidget(viewer)
    widget._image.value = viewer.layers["dark graphene"]
    widget._model.value = next(
        c for c in widget._model.choices if getattr(c, "name", "") == "atomnet-hrtem"
    )
    assert widget._contrast.value == "auto"
    _run(qtbot, widget)
    atoms = viewer.layers["Atoms (dark graphene)"]
    params = provenance_of(atoms)["params"]
    assert params["polarity"] == "dark"
    assert params["polarity_evidence"]["dark"] > params["polarity_evidence"]["bright"]
    assert "dark atoms" in widget._status.value
    assert "contrast told by the model" in widget._status.value
    truth = sim.atoms[["y", "x"]].to_numpy()
    spacing = 1.42 / sim.params["pixel_size_angstrom"]
    score = detection_scores(
        atoms.data, truth, 0.25 * spacing, shape=sim.image.shape, border=0.5 * spacing
    )
    assert score["f1"] >= 0.9


def test_stack_refine_fits_the_frame_the_atoms_came_from(make_napari_viewer, qtbot, tmp_path):
    from conftest import make_log_detector

    viewer = make_napari_viewer()
    viewer.open_sample("napari-atomnet", "perovskite_haadf")
    frame = viewer.layers["perovskite_haadf"].data
    # frame 1 is another picture: the atoms of frame 0 sit between its columns
    stack = np.stack([frame, np.roll(frame, (11, 13), axis=(0, 1)), frame])
    image = viewer.add_image(stack, name="stack")
    widget = DetectAtomsWidget(viewer)
    widget._image.value = image
    widget._model.value = CUSTOM
    widget._custom.value = make_log_detector(tmp_path / "tiny.onnx", card={"tile": 256})
    viewer.dims.set_point(0, 0)
    _run(qtbot, widget)
    assert "frame 0" in widget._status.value
    atoms = viewer.layers["Atoms (stack)"]
    assert provenance_of(atoms)["frame"] == [0]
    detected = atoms.data.copy()
    viewer.dims.set_point(0, 1)  # the user looks at another frame, then refines
    widget._refine_points.native.click()
    feats = atoms.features
    assert feats["fit_ok"].mean() > 0.9  # fitted on frame 0, where the columns are
    assert np.median(np.hypot(*(atoms.data - detected).T)) < 0.1
    assert "on frame 0" in widget._status.value


def test_results_for_an_image_closed_while_running_are_dropped(viewer_with_sample, qtbot, tmp_path):
    from conftest import make_log_detector

    viewer = viewer_with_sample
    widget = _widget(viewer, make_log_detector(tmp_path / "tiny.onnx", card={"tile": 256}))
    with qtbot.waitSignal(widget.run_finished, timeout=60_000):
        widget._run.native.click()
        viewer.layers.remove("perovskite_haadf")
    assert "Atoms (perovskite_haadf)" not in viewer.layers
    assert "Boxes (perovskite_haadf)" not in viewer.layers
    assert "closed while running" in widget._status.value
