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


def _last_message():
    from napari.utils.notifications import notification_manager

    return notification_manager.records[-1].message


def test_strain_against_a_drawn_region_and_drawn_vectors(viewer_with_atoms, qtbot):
    """The user draws the strain reference (a rectangle, an ellipse, or shapes in a layer of
    their own in world units) and the lattice vectors (two lines); bad drawings notify and
    change nothing."""
    viewer = viewer_with_atoms
    image = viewer.layers["perovskite_haadf"]
    widget = LatticeWidget(viewer)
    viewer.window.add_dock_widget(widget)

    def run():
        with qtbot.waitSignal(widget.run_finished, timeout=60_000):
            widget._run.native.click()
        return viewer.layers["Strain (perovskite_haadf)"]

    widget._draw_reference.native.click()
    region = viewer.layers["Strain reference (perovskite_haadf)"]
    assert widget._reference.value is region and region.mode == "add_rectangle"
    assert viewer.layers.selection.active is region
    np.testing.assert_allclose(region.scale, image.scale[-2:])
    names = [layer.name for layer in viewer.layers]
    widget._run.native.click()  # nothing drawn yet
    assert "draw the strain reference region" in _last_message()
    assert [layer.name for layer in viewer.layers] == names

    box = (40.0, 60.0, 200.0, 220.0)
    region.add_rectangles(np.array([box[:2], box[2:]]))
    feats = run().features
    inside = feats["centre_y"].between(box[0], box[2]) & feats["centre_x"].between(box[1], box[3])
    chosen = feats["reference_cell"]
    assert chosen.sum() >= 20 and chosen.equals(inside & (feats["status"] == "ok"))
    assert abs(feats.loc[chosen, "exx"].median()) < 1e-3
    assert f"strain against {chosen.sum()} cells in 'Strain reference" in widget._status.value
    strain = viewer.layers["Strain (perovskite_haadf)"]
    meta = strain.metadata["napari_atomnet"]
    assert meta["reference_layer"] == region.name and meta["params"]["reference_region"]
    np.testing.assert_array_equal(strain.border_width > 0, chosen.to_numpy())
    # the same numbers as the pipeline given the rectangle as a polygon
    from napari_atomnet._widgets._layers import atoms_table
    from napari_atomnet.pipeline import find_cells

    polygon = [[box[0], box[1]], [box[0], box[3]], [box[2], box[3]], [box[2], box[1]]]
    direct, _ = find_cells(
        image.data,
        atoms_table(widget._atoms.value),
        polarity="bright",
        reference_region=[polygon],
    )
    np.testing.assert_allclose(feats["exx"], direct.cells["exx"], atol=1e-9)

    # an ellipse: the cells whose centres lie inside it
    region.data = []
    centre, radii = np.array([300.0, 250.0]), np.array([60.0, 90.0])
    region.add_ellipses(np.array([centre, radii]))
    feats = run().features
    r2 = ((feats["centre_y"] - centre[0]) / radii[0]) ** 2
    r2 += ((feats["centre_x"] - centre[1]) / radii[1]) ** 2
    clear = (abs(r2 - 1) > 0.05) & (feats["status"] == "ok")  # leave out the polygon's edge
    assert feats["reference_cell"][clear].equals((r2 < 1)[clear])

    # a layer of the user's own, in world units (nm): converted to the image's pixels
    scale = np.asarray(image.scale[-2:])
    world = viewer.add_shapes(
        np.array([[box[0], box[1]], [box[2], box[3]]]) * scale,
        shape_type="rectangle",
        name="substrate",
    )
    widget._reference.value = world
    feats = run().features
    assert feats["reference_cell"].equals(inside & (feats["status"] == "ok"))

    # lines do not enclose a region
    world.add_lines(np.array([[0.0, 0.0], [50.0, 50.0]]))
    names = [layer.name for layer in viewer.layers]
    widget._run.native.click()
    assert "holds a line" in _last_message()
    assert [layer.name for layer in viewer.layers] == names
    widget._reference.value = None

    # lattice vectors drawn as two lines: the cells of the diagonal lattice (a + b, b)
    a = np.array([feats["a_y"].median(), feats["a_x"].median()])
    b = np.array([feats["b_y"].median(), feats["b_x"].median()])
    widget._draw_basis.native.click()
    vectors = viewer.layers["Lattice vectors (perovskite_haadf)"]
    assert widget._basis.value is vectors and vectors.mode == "add_line"
    start = np.array([250.0, 250.0])
    vectors.add_lines(np.array([start, start + a + b]))
    widget._run.native.click()  # one line only
    assert "two lines" in _last_message()
    vectors.add_lines(np.array([start, start + b]))
    feats = run().features
    edge = np.hypot(feats["a_y"], feats["a_x"]).median()
    assert edge == pytest.approx(np.hypot(*(a + b)), rel=0.02)
    assert viewer.layers["Lattice vectors (perovskite_haadf)"] is vectors
    # those cells' centres hold no B column: no fit succeeds and no arrows are drawn
    assert not feats["bsite_fit_ok"].any()
    assert "Displacements (perovskite_haadf)" not in viewer.layers
    # parallel lines: refused before anything runs
    vectors.data = []
    vectors.add_lines(np.array([[start, start + a], [start, start + 2 * a]]))
    widget._run.native.click()
    assert "from parallel" in _last_message()


def test_picker_follows_detection_and_points_in_world_units(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-atomnet", "perovskite_haadf")
    image = viewer.layers["perovskite_haadf"]
    widget = LatticeWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget._atoms.value.name == "Truth (perovskite_haadf)"  # the only Points layer
    # Detect atoms adds the image's Atoms layer: the picker moves to it
    result = find_atoms(image.data, detector="classical", source=image.name)
    _layers.replace_layer(viewer, _layers.atoms_points(result.atoms, image, result.provenance))
    assert widget._atoms.value.name == "Atoms (perovskite_haadf)"
    with qtbot.waitSignal(widget.run_finished, timeout=60_000):
        widget._run.native.click()
    assert "from 'Atoms (perovskite_haadf)'" in widget._status.value
    expected = viewer.layers["Strain (perovskite_haadf)"].features
    # the same atoms typed in world units (nm, scale 1) give the same cells, in pixels
    assert image.scale[-1] != 1.0
    world = result.atoms[["y", "x"]].to_numpy() * image.scale[-2:] + image.translate[-2:]
    features = viewer.layers["Atoms (perovskite_haadf)"].features
    by_hand = viewer.add_points(world, name="hand points", features=features)
    widget._atoms.value = by_hand
    with qtbot.waitSignal(widget.run_finished, timeout=60_000):
        widget._run.native.click()
    assert "from 'hand points'" in widget._status.value
    cells = viewer.layers["Strain (perovskite_haadf)"].features
    assert len(cells) == len(expected)
    np.testing.assert_allclose(cells["a_x"], expected["a_x"], atol=1e-6)
    np.testing.assert_allclose(cells["centre_y"], expected["centre_y"], atol=1e-6)
