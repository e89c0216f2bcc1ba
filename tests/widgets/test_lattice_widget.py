"""The "Lattice" dock widget in a real napari viewer (run under Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from napari_atomnet._widgets import _layers
from napari_atomnet._widgets._lattice import LatticeWidget
from napari_atomnet.pipeline import find_atoms

pytestmark = pytest.mark.gui


@pytest.fixture
def viewer_with_atoms(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-atomnet", "perovskite_haadf")
    image = viewer.layers["perovskite_haadf"]
    result = find_atoms(image.data, detector="classical", source=image.name)
    viewer.add_layer(_layers.atoms_points(result.atoms, image, result.provenance))
    return viewer


def test_lattice_layers_and_table(viewer_with_atoms, qtbot, tmp_path):
    viewer = viewer_with_atoms
    widget = LatticeWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget._atoms.value.name == "Atoms (perovskite_haadf)"  # picked for the image
    with qtbot.waitSignal(widget.run_finished, timeout=60_000):
        widget._run.native.click()
    cells = viewer.layers["Unit cells (perovskite_haadf)"]
    disp = viewer.layers["Displacements (perovskite_haadf)"]
    bsites = viewer.layers["B sites (perovskite_haadf)"]
    strain = viewer.layers["Strain (perovskite_haadf)"]
    n_cells = len(strain.data)
    assert n_cells > 350 and len(cells.data) == 2 * n_cells
    for col in ("exx", "eyy", "exy", "rotation", "bsite_y", "disp_y", "fit_ok", "status"):
        assert col in strain.features.columns
    # each displacement's standard error, and their median in the dock's summary
    ok = strain.features[strain.features["fit_ok"]]
    median = np.median(np.sqrt((ok["disp_y_err"] ** 2 + ok["disp_x_err"] ** 2) / 2))
    assert 0.005 < median < 0.3  # px: the classical detections refined at the sample's dose
    assert "median standard error" in widget._status.value
    # the B sites were fitted with the contrast the detection recorded on the Atoms layer
    assert strain.metadata["napari_atomnet"]["params"]["polarity"] == "bright"
    np.testing.assert_allclose(disp.scale, viewer.layers["perovskite_haadf"].scale[-2:])
    # arrows are the displacements × the scale factor, and they follow the truth
    feats = disp.features
    np.testing.assert_allclose(disp.data[:, 1, 0], feats["disp_y"] * 10.0)
    truth = viewer.layers["Truth (perovskite_haadf)"].features
    b_true = truth[truth["class"] == 1]
    d, i = cKDTree(b_true[["y", "x"]].to_numpy()).query(feats[["bsite_y", "bsite_x"]].to_numpy())
    near = d < 2
    err = np.hypot(
        feats["disp_y"][near] - b_true["disp_y"].to_numpy()[i[near]],
        feats["disp_x"][near] - b_true["disp_x"].to_numpy()[i[near]],
    )
    assert near.mean() > 0.95 and np.sqrt(np.mean(err**2)) < 0.3
    # the arrow scale and strain component update the shown layers in place
    widget._scale.value = 20.0
    np.testing.assert_allclose(disp.data[:, 1, 1], feats["disp_x"] * 20.0)
    widget._strain.value = "rotation"
    assert strain.metadata["strain_component"] == "rotation"
    assert len(bsites.data) >= n_cells - 5
    # screenshot for the docs
    strain.visible = True
    viewer.layers["Truth (perovskite_haadf)"].visible = False
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert np.ptp(shot[..., :3].astype(float), axis=2).mean() > 5  # colourful overlays drawn
    # re-running replaces, never stacks
    with qtbot.waitSignal(widget.run_finished, timeout=60_000):
        widget._run.native.click()
    names = [layer.name for layer in viewer.layers]
    assert names.count("Unit cells (perovskite_haadf)") == 1


def test_too_few_atoms_notifies(make_napari_viewer):
    from napari.utils.notifications import notification_manager

    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((64, 64)), name="img")
    viewer.add_points(np.array([[1.0, 1.0], [5.0, 5.0]]), name="Atoms (img)")
    widget = LatticeWidget(viewer)
    before = len(viewer.layers)
    widget._run.native.click()
    assert "at least 4" in notification_manager.records[-1].message
    assert len(viewer.layers) == before
