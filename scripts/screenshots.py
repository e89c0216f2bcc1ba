"""Regenerate the screenshots in docs/ with a real napari viewer and the real widgets.

Usage (needs a screen, or Xvfb)::

    xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python scripts/screenshots.py [NAMES...]

Each screenshot runs the widget as a user would (sample data → Run → wait for the result).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import imageio.v3 as iio
import napari
from qtpy.QtWidgets import QApplication

DOCS = Path(__file__).resolve().parents[1] / "docs"


def wait(until, timeout: float = 120.0) -> None:
    app = QApplication.instance()
    t0 = time.time()
    while not until():
        app.processEvents()
        time.sleep(0.02)
        if time.time() - t0 > timeout:
            raise TimeoutError("the widget did not finish")
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)


def viewer_with(sample: str) -> napari.Viewer:
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 950)
    viewer.open_sample("napari-atomnet", sample)
    return viewer


def zoom(viewer: napari.Viewer, factor: float, frac=(0.5, 0.5)) -> None:
    viewer.reset_view()
    layer = viewer.layers[0]
    h, w = layer.data.shape[-2:]
    centre = layer.data_to_world((h * frac[0], w * frac[1]))
    viewer.camera.center = tuple(centre)
    viewer.camera.zoom *= factor


def save(viewer: napari.Viewer, name: str) -> None:
    QApplication.instance().processEvents()
    path = DOCS / f"{name}.png"
    iio.imwrite(path, viewer.screenshot(canvas_only=False, flash=False))
    print(f"wrote {path}")
    viewer.close()


def run(widget, viewer: napari.Viewer, layer: str) -> None:
    """Press the widget's Run and wait until its job is done and ``layer`` exists."""
    widget._run.native.click()
    wait(lambda: widget._worker is None and layer in viewer.layers)


def detected(sample: str = "perovskite_haadf") -> napari.Viewer:
    """Open ``sample`` in a viewer and detect its atoms with the Detect widget (not docked)."""
    from napari_atomnet._widgets import DetectAtomsWidget

    viewer = viewer_with(sample)
    run(DetectAtomsWidget(viewer), viewer, f"Atoms ({sample})")
    return viewer


def detect() -> None:
    from napari_atomnet._widgets import DetectAtomsWidget

    viewer = viewer_with("perovskite_haadf")
    widget = DetectAtomsWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Detect atoms")
    widget._image.value = viewer.layers["perovskite_haadf"]
    run(widget, viewer, "Atoms (perovskite_haadf)")
    zoom(viewer, 3.0, (0.3, 0.3))
    save(viewer, "detect_widget")


def detect_hrtem() -> None:
    from napari_atomnet._widgets import DetectAtomsWidget

    viewer = viewer_with("graphene_hrtem")
    # as an uncalibrated file would open: the model finds the pixel size (the status says it)
    viewer.layers["graphene_hrtem"].scale = (1.0, 1.0)
    widget = DetectAtomsWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Detect atoms")
    widget._image.value = viewer.layers["graphene_hrtem"]
    widget._model.value = next(
        card for card in widget._model.choices if getattr(card, "name", "") == "atomnet-hrtem"
    )
    # contrast left on "auto": the HRTEM model tells it (the sample: bright, at -60 Å, -10 µm)
    run(widget, viewer, "Atoms (graphene_hrtem)")
    viewer.layers["Boxes (graphene_hrtem)"].visible = False
    zoom(viewer, 1.6, (0.62, 0.45))
    save(viewer, "detect_hrtem_widget")


def lattice() -> None:
    from napari_atomnet._widgets import LatticeWidget

    viewer = detected()
    widget = LatticeWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Lattice")
    run(widget, viewer, "Displacements (perovskite_haadf)")
    for name in ("Atoms", "Boxes"):
        viewer.layers[f"{name} (perovskite_haadf)"].visible = False
    zoom(viewer, 2.2, (0.7, 0.65))
    save(viewer, "lattice_widget")


def strain() -> None:
    import numpy as np

    from napari_atomnet._widgets import LatticeWidget

    viewer = detected()
    widget = LatticeWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Lattice")
    widget._strain.value = "exx"
    # the strain reference: a region the user draws (here a rectangle in the upper left)
    widget._draw_reference.native.click()
    region = viewer.layers["Strain reference (perovskite_haadf)"]
    region.add_rectangles(np.array([[30.0, 30.0], [170.0, 200.0]]))
    region.mode = "pan_zoom"
    run(widget, viewer, "Strain (perovskite_haadf)")
    for name in ("Atoms", "Boxes", "Unit cells", "B sites", "Displacements"):
        viewer.layers[f"{name} (perovskite_haadf)"].visible = False
    viewer.layers["Strain (perovskite_haadf)"].visible = True
    viewer.reset_view()
    save(viewer, "strain_map")


def curate() -> None:
    import numpy as np

    from napari_atomnet._widgets import CurateAtomsWidget

    viewer = detected()
    atoms = viewer.layers["Atoms (perovskite_haadf)"]
    # stand in for what a model misses: drop a handful of atoms
    rng = np.random.default_rng(0)
    atoms.selected_data = set(rng.choice(len(atoms.data), 12, replace=False).tolist())
    atoms.remove_selected()
    widget = CurateAtomsWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Curate atoms")
    widget.suggest()
    viewer.camera.zoom *= 3.0
    save(viewer, "curate_widget")


def segment() -> None:
    from napari_atomnet._widgets._segment import SegmentParticlesWidget

    viewer = viewer_with("core_shell_particles")
    for layer in list(viewer.layers)[1:]:  # the truth overlay would hide the result
        layer.visible = False
    widget = SegmentParticlesWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment particles")
    run(widget, viewer, "Particles (core_shell_particles)")
    viewer.layers["Particles (core_shell_particles)"].opacity = 0.45
    zoom(viewer, 1.6, (0.4, 0.4))
    save(viewer, "segment_widget")


def train_and_save(widget, viewer: napari.Viewer, work: Path, factor: float, name: str) -> None:
    """Run the Fine-tune dock, wait for it, save the screenshot, remove the work folder."""
    import shutil

    widget._run.native.click()
    try:
        wait(lambda: widget._worker is None, timeout=1800.0)
        zoom(viewer, factor, (0.5, 0.5))
        save(viewer, name)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def finetune() -> None:
    """Fine-tune the detector on one corrected image of a kind it handles poorly."""
    import os
    import tempfile

    from napari_atomnet import synth
    from napari_atomnet._widgets import _layers
    from napari_atomnet._widgets._finetune import FineTuneWidget
    from napari_atomnet.io.labels import export_labels, import_labels

    work = Path(tempfile.mkdtemp(prefix="atomnet-finetune-shot-"))
    os.environ["NAPARI_ATOMNET_MODELS"] = str(work / "models")  # not the real user folder
    # strongly overlapping columns: the built-in detector's weak spot (BENCHMARKS.md)
    sim = synth.lattice_image(
        (256, 256), lattice="square", spacing=10, sigma_frac=0.35, dose=300, seed=1
    )
    folder = export_labels(sim.image, sim.atoms, work / "labels", name="overlap_01")
    image, atoms, _ = import_labels(folder)
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 1050)
    layer = viewer.add_image(image, name="overlap_01")
    viewer.add_layer(_layers.atoms_points(atoms, layer, {"step": "corrected labels"}))
    widget = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tune detector")
    widget._data.value = work / "labels"
    widget._name.value = "overlap-tuned"
    widget._polarity.value = "bright"
    widget._steps.value = 200
    train_and_save(widget, viewer, work, 1.8, "finetune_widget")


def adapt_dock():
    """Open the graphene sample with the Fine-tune dock set to train on simulations.

    Returns the work folder (the user model folder points into it), the viewer and the dock.
    """
    import os
    import tempfile

    from napari_atomnet._widgets._finetune import SIMULATIONS, FineTuneWidget

    work = Path(tempfile.mkdtemp(prefix="atomnet-adapt-shot-"))
    os.environ["NAPARI_ATOMNET_MODELS"] = str(work / "models")  # not the real user folder
    viewer = viewer_with("graphene_hrtem")
    for layer in list(viewer.layers)[1:]:
        layer.visible = False
    viewer.layers.selection.active = viewer.layers["graphene_hrtem"]
    widget = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tune detector")
    widget._source.value = SIMULATIONS
    return work, viewer, widget


def adapt() -> None:
    """Adapt the HRTEM detector to the bundled graphene sample's imaging conditions."""
    work, viewer, widget = adapt_dock()
    # the sample's optics (defocus -60 Å, Cs -10 µm, 0.12 Å/px), stated 10 Å / 2 µm off
    for key, value in {"defocus": -50.0, "cs_um": -8.0, "pixel_size_angstrom": 0.12}.items():
        widget._conditions[key].value = value
    widget._name.value = "my-titan-60"  # the default run: from scratch, 3,000 steps
    train_and_save(widget, viewer, work, 1.5, "adapt_widget")


def adapt_match() -> None:
    """Match defocus and Cs to the bundled graphene sample (no conditions stated)."""
    _, viewer, widget = adapt_dock()
    widget._name.value = "my-titan"
    widget._match.native.click()
    wait(lambda: widget._worker is None and widget._matched_fields)
    zoom(viewer, 1.5, (0.5, 0.5))
    save(viewer, "adapt_match_widget")


def sequence() -> None:
    """Atoms in every frame of a drifting movie whose columns come and go (Sequence dock)."""
    import numpy as np

    from napari_atomnet._widgets._sequence import SequenceWidget
    from napari_atomnet.synth import render_gaussians

    rng = np.random.default_rng(7)
    n_frames, shape, spacing = 40, (256, 256), 18.0
    yy, xx = np.mgrid[0:13, 0:13] * spacing + 20.0
    sites = np.column_stack([yy.ravel(), xx.ravel()])
    present = (
        rng.random((len(sites), n_frames)) < np.where(rng.random(len(sites)) < 0.2, 0.5, 1)[:, None]
    )
    drift = np.cumsum(rng.normal((0.3, -0.2), 0.1, (n_frames, 2)), axis=0)
    frames = [
        rng.poisson(
            render_gaussians(shape, *(sites[present[:, t]] + drift[t]).T, 60.0, 2.5) + 10.0
        ).astype(np.float32)
        for t in range(n_frames)
    ]
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 950)
    viewer.add_image(np.stack(frames), name="movie")
    widget = SequenceWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Sequence")
    run(widget, viewer, "Sequence atoms (movie)")
    viewer.dims.set_point(0, n_frames // 2)
    zoom(viewer, 1.0)
    save(viewer, "sequence_widget")


SHOTS = {
    "detect": detect,
    "detect_hrtem": detect_hrtem,
    "lattice": lattice,
    "adapt_match": adapt_match,
    "strain": strain,
    "curate": curate,
    "segment": segment,
    "finetune": finetune,
    "adapt": adapt,
    "sequence": sequence,
}

if __name__ == "__main__":
    DOCS.mkdir(exist_ok=True)
    for name in sys.argv[1:] or list(SHOTS):
        SHOTS[name]()
