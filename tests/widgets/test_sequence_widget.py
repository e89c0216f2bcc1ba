"""The Sequence widget and the file reader in a real napari viewer (run under Xvfb)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parents[1] / "io"))
from microscope_files import write_dm, write_hspy, write_velox

from napari_atomnet._provenance import METADATA_KEY
from napari_atomnet._reader import get_reader
from napari_atomnet._widgets._sequence import SequenceWidget
from napari_atomnet.sequences import analyze_sequence
from test_sequences import blinking_movie

pytestmark = pytest.mark.gui


def _errors():
    from napari.utils.notifications import notification_manager

    return [n.message for n in notification_manager.records if n.severity == "error"]


@pytest.fixture(scope="module")
def movie():
    return blinking_movie(n_frames=8, shape=(96, 96))


def _run(qtbot, widget):
    with qtbot.waitSignal(widget.run_finished, timeout=60_000):
        widget._run.native.click()


def test_sequence_widget_points_on_the_stack(
    make_napari_viewer, qtbot, movie, tmp_path, napari_bars
):
    stack, _, present, _ = movie
    viewer = make_napari_viewer()
    image = viewer.add_image(stack, name="movie", scale=(1.0, 0.05, 0.05))
    viewer.add_image(stack[0], name="single")  # 2D images are not offered
    widget = SequenceWidget(viewer)
    assert list(widget._image.choices) == [image]  # 2D images are not offered
    widget._image.value = image
    widget._model.value = "classical"
    _run(qtbot, widget)
    # a movie takes minutes: the progress shows in the dock, not in napari's activity bar
    # (whose spinner takes CPU from the job where the window is drawn in software)
    assert napari_bars == []
    assert widget._job_bar.max == len(stack) and widget._job_bar.value == len(stack)
    layer = viewer.layers["Sequence atoms (movie)"]
    assert layer.data.shape == (present.sum(), 3)
    feats = layer.features
    for column in ("frame", "site", "occupancy", "events", "y_corr", "x_corr", "fit_ok"):
        assert column in feats.columns, column
    np.testing.assert_allclose(layer.data, feats[["frame", "y", "x"]].to_numpy())
    np.testing.assert_allclose(layer.scale, image.scale)
    # the same numbers as the core function
    ref = analyze_sequence(stack, detector="classical", drift="atoms")
    np.testing.assert_allclose(np.sort(feats["occupancy"]), np.sort(ref.atoms["occupancy"]))
    assert len(layer.metadata["sites"]["site"]) == len(ref.sites) == present.any(axis=1).sum()
    # coloured by occupancy: full sites and half-occupied sites differ
    colours = layer.face_color
    full = feats["occupancy"].to_numpy() == 1.0
    assert full.any() and (~full).any()
    assert not np.allclose(colours[full][0], colours[~full][0])
    prov = layer.metadata[METADATA_KEY]
    assert prov["step"] == "analyze_sequence" and len(prov["drift_px"]) == len(stack)
    assert "sites" in widget._status.value

    # running again replaces the layer
    widget._drift.value = "image"
    _run(qtbot, widget)
    assert [ly.name for ly in viewer.layers].count("Sequence atoms (movie)") == 1

    viewer.layers.remove("single")
    viewer.reset_view()
    viewer.dims.set_point(0, 3)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    assert shot.std() > 5


def test_cancel_keeps_layers(make_napari_viewer, qtbot, movie):
    stack, *_ = movie
    viewer = make_napari_viewer()
    viewer.add_image(np.concatenate([stack] * 4), name="long")
    widget = SequenceWidget(viewer)
    widget._model.value = "classical"
    with qtbot.waitSignal(widget.run_finished, timeout=60_000):
        widget._run.native.click()
        widget._cancel.native.click()
    assert "Sequence atoms (long)" not in viewer.layers
    assert "Cancel" in widget._status.value


def test_no_stack_gives_a_message(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32)), name="flat")
    widget = SequenceWidget(viewer)
    widget._run.native.click()
    assert any("T×Y×X" in m for m in _errors())
    assert len(viewer.layers) == 1


def test_reader_layers_in_viewer(make_napari_viewer, tmp_path, movie):
    stack, *_ = movie
    viewer = make_napari_viewer()
    velox = write_velox(
        tmp_path / "scan.emd", [("HAADF", stack[0]), ("DF4", stack)], pixel_size_m=4e-11
    )
    reader = get_reader(str(velox))
    assert reader is not None and get_reader(str(tmp_path / "x.txt")) is None
    layers = reader(str(velox))
    assert [meta["name"] for _, meta, _ in layers] == ["scan HAADF", "scan DF4"]
    for data, meta, kind in layers:
        viewer.add_layer(__import__("napari").layers.Layer.create(data, meta, kind))
    haadf, df4 = viewer.layers["scan HAADF"], viewer.layers["scan DF4"]
    np.testing.assert_allclose(haadf.scale, [0.04, 0.04])
    np.testing.assert_allclose(df4.scale, [1.0, 0.04, 0.04])
    assert tuple(str(u) for u in df4.units)[-2:] == ("nanometer", "nanometer")
    assert tuple(df4.axis_labels) == ("t", "y", "x")
    assert df4.metadata["source"]["title"] == "DF4" and df4.metadata["pixel_size_nm"] == 0.04
    assert df4.data.shape == stack.shape
    np.testing.assert_array_equal(np.asarray(df4.data[5]), stack[5])
    # a DM4 and an hspy file in one go
    dm = write_dm(tmp_path / "a.dm4", [(stack[0], "BF", (0.1, 0.1), ("Å", "Å"))], version=4)
    hs = write_hspy(tmp_path / "b.hspy", stack, scale=0.02, units="nm", chunks=(1, 96, 96))
    both = get_reader([str(dm), str(hs)])([str(dm), str(hs)])
    assert [m["name"] for _, m, _ in both] == ["a", "b"]
    assert both[0][1]["scale"] == pytest.approx((0.01, 0.01), rel=1e-7)  # DM stores float32


def test_sequence_on_a_lazy_stack_from_a_file(make_napari_viewer, qtbot, tmp_path, movie):
    import dask.array as da

    stack, _, present, _ = movie
    path = write_hspy(tmp_path / "m.hspy", stack, scale=0.02, units="nm", chunks=(1, 96, 96))
    viewer = make_napari_viewer()
    ((data, meta, _),) = get_reader(str(path))(str(path))
    layer = viewer.add_image(data, **meta)
    assert isinstance(layer.data, da.Array)
    widget = SequenceWidget(viewer)
    widget._image.value = layer
    widget._model.value = "classical"
    widget._drift.value = None
    with qtbot.waitSignal(widget.run_finished, timeout=60_000):
        widget._run.native.click()
    points = viewer.layers["Sequence atoms (m)"]
    assert len(points.data) == present.sum()
    np.testing.assert_allclose(points.scale, [1.0, 0.02, 0.02])
    assert (points.features[["dy", "dx"]].to_numpy() == 0).all()  # drift correction off


def test_viewer_open_with_the_plugin(make_napari_viewer, tmp_path, movie):
    stack, *_ = movie
    viewer = make_napari_viewer()
    path = write_velox(
        tmp_path / "scan.emd", [("HAADF", stack[0]), ("DF4", stack)], pixel_size_m=4e-11
    )
    layers = viewer.open(str(path), plugin="napari-atomnet")
    assert [ly.name for ly in layers] == ["scan HAADF", "scan DF4"]
    np.testing.assert_allclose(viewer.layers["scan DF4"].scale, [1.0, 0.04, 0.04])
    bad = tmp_path / "bad.dm4"
    bad.write_bytes(b"junk")
    with pytest.raises(Exception, match="cannot read as Gatan"):
        viewer.open(str(bad), plugin="napari-atomnet")


def test_sequence_widget_atom_contrast(make_napari_viewer, qtbot, movie, monkeypatch):
    from napari_atomnet import sequences

    seen = []
    real = sequences.analyze_sequence

    def spy(stack, **kwargs):
        seen.append(kwargs.get("polarity"))
        return real(stack, **kwargs)

    monkeypatch.setattr(sequences, "analyze_sequence", spy)
    stack = movie[0]
    viewer = make_napari_viewer()
    viewer.add_image(stack.max() - stack, name="dark movie")  # dark columns
    widget = SequenceWidget(viewer)
    widget._model.value = "classical"
    widget._contrast.value = "dark"
    _run(qtbot, widget)
    assert seen == ["dark"]
    prov = viewer.layers["Sequence atoms (dark movie)"].metadata[METADATA_KEY]
    assert prov["params"]["polarity"] == "dark"
    assert len(viewer.layers["Sequence atoms (dark movie)"].data) == movie[2].sum()


def test_a_movie_without_atoms_adds_no_layer(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    noise = np.random.default_rng(1).poisson(20.0, (2, 96, 96)).astype(np.float32)
    viewer.add_image(noise, name="noise")
    widget = SequenceWidget(viewer)  # the built-in model: it finds no columns in noise
    _run(qtbot, widget)
    assert "Sequence atoms (noise)" not in viewer.layers
    assert "No atoms found in 2 frame(s)" in widget._status.value


def test_an_uncalibrated_hrtem_movie_gets_its_pixel_size_from_the_model(make_napari_viewer, qtbot):
    """atomnet-hrtem learnt one sampling: on a movie without a calibration it finds the pixel
    size on the first frame, detects every frame there, and the status says what it found."""
    from napari_atomnet import synth

    frames = [  # one aligned microscope (bright atoms), as a movie's frames share it
        synth.graphene_hrtem(
            (192, 192), defocus=-60, cs_um=-10, astig_angstrom=5.0, dose=1e4, seed=3_200_000 + k
        )
        for k in range(2)
    ]
    viewer = make_napari_viewer()
    viewer.add_image(np.stack([f.image for f in frames]), name="graphene movie")  # scale 1
    widget = SequenceWidget(viewer)
    widget._model.value = next(
        c for c in widget._model.choices if getattr(c, "name", "") == "atomnet-hrtem"
    )
    _run(qtbot, widget)
    layer = viewer.layers["Sequence atoms (graphene movie)"]
    found_nm = layer.metadata[METADATA_KEY]["params"]["pixel_size_estimated_nm"]
    assert found_nm == pytest.approx(0.012, rel=0.03)  # the simulations' 0.12 Å/px
    assert "found from the atoms' spacing" in widget._status.value
    from napari_atomnet.core.metrics import detection_scores

    feats = layer.features
    for k, sim in enumerate(frames):
        mine = feats.loc[feats["frame"] == k, ["y", "x"]].to_numpy(float)
        truth = sim.atoms[["y", "x"]].to_numpy()  # bond 11.8 px at 0.12 Å/px
        scores = detection_scores(mine, truth, 3.0, shape=sim.image.shape, border=6.0)
        assert scores["f1"] >= 0.98
