"""The "Segment particles" dock widget in a real napari viewer (run under Xvfb)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_atomnet._provenance import METADATA_KEY
from napari_atomnet._widgets._segment import SegmentParticlesWidget

pytestmark = pytest.mark.gui

LAYER = "Particles (haadf_particles)"


def _errors():
    from napari.utils.notifications import notification_manager

    return [n.message for n in notification_manager.records if n.severity == "error"]


@pytest.fixture
def viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-atomnet", "haadf_particles")
    return viewer


@pytest.fixture
def widget(viewer):
    w = SegmentParticlesWidget(viewer)
    w._image.value = viewer.layers["haadf_particles"]
    return w


def _run(qtbot, widget):
    with qtbot.waitSignal(widget.run_finished, timeout=60_000):
        widget._run.native.click()


def test_segment_adds_particles_layer_table_and_histograms(viewer, widget, qtbot):
    image = viewer.layers["haadf_particles"]
    truth = viewer.layers["Truth (haadf_particles)"]
    assert widget._pixel_size.value == pytest.approx(image.scale[-1])  # from the calibration
    assert widget._model.value.name == "atomnet-particles"
    _run(qtbot, widget)
    layer = viewer.layers[LAYER]
    feats = layer.features
    for column in (
        "index",
        "label",
        "y",
        "x",
        "area_px",
        "equivalent_diameter_px",
        "perimeter_px",
        "circularity",
        "touches_border",
        "equivalent_diameter_nm",
        "area_nm2",
        "perimeter_nm",
    ):
        assert column in feats.columns, column
    labels = np.asarray(layer.data)
    assert feats["index"].tolist() == feats["label"].tolist()
    assert sorted(np.unique(labels[labels > 0]).tolist()) == feats["label"].tolist()
    np.testing.assert_allclose(layer.scale, image.scale[-2:])
    # the segmentation agrees with the truth: most particles found, sizes close
    n_truth = len(np.unique(truth.data)) - 1
    assert abs(len(feats) - n_truth) <= 0.1 * n_truth
    dice = (
        2 * np.sum((labels > 0) & (truth.data > 0)) / (np.sum(labels > 0) + np.sum(truth.data > 0))
    )
    assert dice > 0.9
    prov = layer.metadata[METADATA_KEY]
    assert prov["model"]["name"] == "atomnet-particles" and len(prov["model"]["sha256"]) == 64
    assert prov["source"] == "haadf_particles" and prov["step"] == "segment"
    # the dock shows the statistics of the complete particles and three histograms
    inner = feats[~feats["touches_border"]]
    mean = inner["equivalent_diameter_nm"].mean()
    assert f"{mean:.3g}" in widget._stats.value and "nm" in widget._stats.value
    titles = [ax.get_title() for ax in widget._axes]
    assert titles[0].startswith("Equivalent diameter D") and "±" in titles[0]
    assert f"n = {len(inner)}" in titles[0] and "nm" in titles[0]
    assert titles[2].startswith("Circularity") and all(len(ax.patches) > 3 for ax in widget._axes)
    # running again replaces the layer instead of stacking another one
    _run(qtbot, widget)
    assert [layer.name for layer in viewer.layers].count(LAYER) == 1
    assert widget._run.enabled and not widget._cancel.enabled


def test_editing_labels_updates_table_and_histograms(viewer, widget, qtbot):
    _run(qtbot, widget)
    layer = viewer.layers[LAYER]
    feats = layer.features
    victim = feats[~feats["touches_border"]].iloc[0]
    n_before = len(feats)
    # erase one particle with napari's fill tool (label 0 at its centroid)
    with qtbot.waitSignal(widget.table_updated, timeout=5_000):
        layer.fill((round(victim["y"]), round(victim["x"])), 0)
    feats = layer.features
    assert len(feats) == n_before - 1 and victim["label"] not in feats["label"].tolist()
    # paint a new particle (a disc of radius 5 in an empty corner region)
    new = int(feats["label"].max()) + 1
    with qtbot.waitSignal(widget.table_updated, timeout=5_000):
        layer.selected_label = new
        layer.brush_size = 9
        layer.paint((250, 256), new)
    feats = layer.features
    row = feats[feats["label"] == new]
    assert len(row) == 1 and row["area_px"].iloc[0] > 20
    assert layer.metadata[METADATA_KEY]["edited"] is True
    inner = feats[~feats["touches_border"]]
    assert f"n = {len(inner)}" in widget._axes[0].get_title()


def test_csv_export_is_atomic_and_refuses_to_overwrite(viewer, widget, qtbot, tmp_path):
    _run(qtbot, widget)
    out = tmp_path / "particles.csv"
    widget._csv.value = out
    widget._export.native.click()
    import pandas as pd

    table = pd.read_csv(out)
    feats = viewer.layers[LAYER].features
    assert len(table) == len(feats) and "index" not in table.columns
    np.testing.assert_allclose(
        table["equivalent_diameter_nm"], feats["equivalent_diameter_nm"], atol=1e-4
    )
    prov = json.loads(out.with_suffix(".json").read_text())
    assert prov["layer"] == LAYER and prov["model"]["name"] == "atomnet-particles"
    before = out.read_text()
    widget._export.native.click()
    assert "exists" in _errors()[-1] and out.read_text() == before


def test_uncalibrated_image_and_typed_pixel_size(make_napari_viewer, qtbot):
    from napari_atomnet import synth

    viewer = make_napari_viewer()
    sim = synth.core_shell_particles((256, 256), seed=904_321)
    viewer.add_image(sim.image, name="bf")
    w = SegmentParticlesWidget(viewer)
    w._image.value = viewer.layers["bf"]
    assert w._pixel_size.value == 0.0
    _run(qtbot, w)
    feats = viewer.layers["Particles (bf)"].features
    assert not any(c.endswith("_nm") for c in feats.columns)
    assert "px" in w._stats.value
    w._pixel_size.value = 0.5
    _run(qtbot, w)
    feats = viewer.layers["Particles (bf)"].features
    np.testing.assert_allclose(
        feats["equivalent_diameter_nm"], feats["equivalent_diameter_px"] * 0.5
    )


def test_atom_sized_particles_are_flagged(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-atomnet", "perovskite_haadf")  # atomic resolution, calibrated
    w = SegmentParticlesWidget(viewer)
    w._image.value = viewer.layers["perovskite_haadf"]
    _run(qtbot, w)
    assert "the size of atoms" in w._status.value


def test_bad_input_notifies_and_changes_nothing(make_napari_viewer):
    viewer = make_napari_viewer()
    rgb = viewer.add_image(np.random.default_rng(0).random((64, 64, 3)), name="photo", rgb=True)
    flat = viewer.add_image(np.ones((64, 64)), name="flat")
    widget = SegmentParticlesWidget(viewer)
    before = [layer.name for layer in viewer.layers]
    for layer, message in ((rgb, "RGB"), (flat, "constant")):
        widget._image.value = layer
        widget._run.native.click()
        assert message in _errors()[-1]
    widget._export.native.click()
    assert "segment an image first" in _errors()[-1]
    assert [layer.name for layer in viewer.layers] == before
    assert widget._worker is None and widget._run.enabled


def test_cancel_leaves_layers_unchanged(viewer, widget, qtbot):
    with qtbot.waitSignal(widget.run_finished, timeout=60_000):
        widget._run.native.click()
        widget._cancel.native.click()
    assert LAYER not in viewer.layers
    assert "Cancel" in widget._status.value
