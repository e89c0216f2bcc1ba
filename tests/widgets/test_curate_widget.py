"""The "Curate atoms" dock widget in a real napari viewer (run under Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from napari_atomnet import synth
from napari_atomnet._widgets import _layers
from napari_atomnet._widgets._curate import ACCEPT_KEY, REJECT_KEY, UNDO_KEY, CurateAtomsWidget
from napari_atomnet.pipeline import refine_atoms

pytestmark = pytest.mark.gui


@pytest.fixture
def curated(make_napari_viewer):
    """A perovskite with 12 atoms 'missed' by the model, in a viewer with Atoms + Boxes."""
    sim = synth.perovskite_haadf((256, 256), spacing=24, dose=300, seed=12)
    viewer = make_napari_viewer()
    image = viewer.add_image(sim.image, name="img")
    truth = sim.atoms[["y", "x", "class"]].copy()
    truth["score"] = 0.9
    for c, s in (("y0", -4), ("x0", -4), ("y1", 4), ("x1", 4)):
        truth[c] = truth[c[0]] + s
    atoms = refine_atoms(sim.image.astype(float), truth.reset_index(drop=True))
    rng = np.random.default_rng(3)
    missed = rng.choice(len(atoms), 12, replace=False)
    shown = atoms.drop(index=missed).reset_index(drop=True)
    layer = viewer.add_layer(_layers.atoms_points(shown, image, {"step": "test"}))
    viewer.add_layer(_layers.boxes_shapes(shown, image, {}))
    widget = CurateAtomsWidget(viewer)
    return viewer, widget, layer, atoms.loc[missed], sim


def test_added_point_snaps_to_the_peak_and_is_marked_manual(curated):
    viewer, _, layer, missed, _ = curated
    target = missed.iloc[0]
    n = len(layer.data)
    layer.add([[target["y"] + 1.7, target["x"] - 1.4]])  # one click, off the peak
    assert len(layer.data) == n + 1
    y, x = layer.data[-1]
    assert np.hypot(y - target["y"], x - target["x"]) < 0.1
    feats = layer.features.iloc[-1]
    assert feats["source"] == "manual" and bool(feats["fit_ok"])
    assert layer.metadata["napari_atomnet"]["edits"] == {"added": 1}
    boxes = viewer.layers["Boxes (img)"]
    assert len(boxes.data) == n + 1  # the boxes follow
    np.testing.assert_allclose(boxes.data[-1].mean(axis=0), [y, x], atol=1e-6)


def test_snapping_never_puts_a_second_atom_on_a_peak(curated):
    _, widget, layer, _, _ = curated
    n = len(layer.data)
    existing = layer.data[40].copy()
    click = existing + np.array([2.0, 1.5])  # beside an atom the model found: its peak is taken
    layer.add([click])
    assert len(layer.data) == n + 1
    np.testing.assert_allclose(layer.data[-1], click)  # left where it was put
    feats = layer.features.iloc[-1]
    assert not bool(feats["fit_ok"]) and feats["fit_status"] == "peak_has_atom"
    assert "has an atom already" in widget._status.value
    nearest = cKDTree(layer.data[:-1]).query(layer.data[-1])[0]
    assert nearest > 2.0


def test_closing_the_dock_unhooks_snapping_and_keys(curated):
    from napari.utils.key_bindings import coerce_keybinding

    viewer, widget, layer, missed, _ = curated
    dock = viewer.window.add_dock_widget(widget)
    assert coerce_keybinding(ACCEPT_KEY) in set(viewer.keymap)
    viewer.window.remove_dock_widget(dock)  # what the dock's close button does
    for key in (ACCEPT_KEY, REJECT_KEY, UNDO_KEY):
        assert coerce_keybinding(key) not in set(viewer.keymap)
    target = missed.iloc[0]
    click = [target["y"] + 1.7, target["x"] - 1.4]
    layer.add([click])
    np.testing.assert_allclose(layer.data[-1], click)  # no longer snapped
    assert "edits" not in layer.metadata["napari_atomnet"]  # nor counted


def test_delete_move_and_undo(curated):
    _, widget, layer, _, _ = curated
    original = layer.data.copy()
    layer.selected_data = {0, 1}
    layer.remove_selected()
    assert len(layer.data) == len(original) - 2
    widget._undo.native.click()
    np.testing.assert_allclose(layer.data, original)
    layer._move({5}, layer.data[5] + [2.0, 0.0])  # drag off the peak: snaps back
    assert np.hypot(*(layer.data[5] - original[5])) < 0.15
    assert layer.metadata["napari_atomnet"]["edits"]["moved"] == 1
    widget._undo.native.click()
    np.testing.assert_allclose(layer.data, original)


def test_suggestions_find_missed_atoms_and_keys_accept_or_reject(curated, qtbot):
    viewer, widget, layer, missed, sim = curated
    widget._suggest.native.click()
    sugg = viewer.layers["Suggestions (img)"]
    d, _ = cKDTree(missed[["y", "x"]].to_numpy()).query(sugg.data)
    assert len(sugg.data) >= 10 and (d < 0.5).mean() > 0.9  # the missed columns, snapped
    vac = sim.extras["vacancies"]
    if len(vac):
        dv, _ = cKDTree(vac[["y", "x"]].to_numpy()).query(sugg.data)
        assert (dv > 3).all()  # vacancies are not suggested
    n_atoms, n_sugg = len(layer.data), len(sugg.data)
    # the current suggestion stands out from the others
    colours = np.asarray(sugg.border_color)
    assert not np.allclose(colours[0], colours[1]) and np.allclose(colours[1], colours[2])
    from napari.utils.key_bindings import coerce_keybinding

    bound = set(viewer.keymap)
    assert {coerce_keybinding(ACCEPT_KEY), coerce_keybinding(REJECT_KEY)} <= bound
    widget.resolve_current(accept=True)
    widget.resolve_current(accept=False)
    assert len(layer.data) == n_atoms + 1 and len(sugg.data) == n_sugg - 2
    accepted = layer.features.iloc[-1]
    assert accepted["source"] == "manual"
    # an accepted site is fitted like an atom added by hand: on a missed column's peak
    assert bool(accepted["fit_ok"]) and accepted["fit_status"] == "ok"
    d, _ = cKDTree(missed[["y", "x"]].to_numpy()).query(layer.data[-1])
    assert d < 0.1
    widget._resolve_all(accept=True)
    assert "Suggestions (img)" not in viewer.layers
    assert len(layer.data) == n_atoms + n_sugg - 1
    assert layer.metadata["napari_atomnet"]["edits"]["accepted"] == n_sugg - 1
    widget.close()
    assert coerce_keybinding(ACCEPT_KEY) not in set(viewer.keymap)
    assert coerce_keybinding(REJECT_KEY) not in set(viewer.keymap)


def test_export_then_import_round_trips_the_curated_atoms(curated, make_napari_viewer, tmp_path):
    import json

    viewer, widget, layer, missed, _ = curated
    target = missed.iloc[0]
    layer.add([[target["y"] + 1.0, target["x"] - 1.0]])  # a hand correction, snapped
    widget._export_dir.value = tmp_path
    widget._tiles.value = True
    widget._tile_size.value = 128
    path = widget.export_labels()
    assert path is not None and (path / "img.txt").exists() and (path / "img.xml").exists()
    assert any((path / "tiles").iterdir())
    prov = json.loads((path / "provenance.json").read_text())
    assert prov["edits"]["added"] == 1
    # a second export of the same name is refused and leaves the first one as it was
    before = sorted(p.name for p in path.iterdir())
    assert widget.export_labels() is None
    assert sorted(p.name for p in path.iterdir()) == before
    # import into a fresh viewer: the same atoms, the manual one marked
    other = make_napari_viewer()
    importer = CurateAtomsWidget(other)
    importer._import_path.value = path
    image_layer = importer.import_labels()
    assert image_layer is not None
    np.testing.assert_array_equal(image_layer.data, viewer.layers["img"].data)
    atoms = other.layers["Atoms (img)"]
    np.testing.assert_allclose(atoms.data, layer.data, atol=1e-9)
    assert (atoms.features["source"] == "manual").sum() == 1
    assert "Boxes (img)" in other.layers


def test_export_and_import_refuse_bad_input(curated, tmp_path):
    _, widget, _, _, _ = curated
    assert widget.export_labels() is None  # no folder chosen
    widget._import_path.value = tmp_path  # an empty folder
    assert widget.import_labels() is None
    assert not any(tmp_path.iterdir())
