"""``atomnet segment``: a real run with the built-in model, and bad input."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from napari_atomnet import synth
from napari_atomnet.cli_segment import register
from napari_atomnet.io import read_csv, read_image, write_tiff


def _run(argv):
    """Parse and run like ``atomnet`` does (the lead hooks ``register`` into cli.py)."""
    parser = argparse.ArgumentParser(prog="atomnet")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def particle_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seg")
    sim = synth.haadf_particles((256, 256), seed=901_234, pixel_size_nm=0.2)
    path = folder / "particles.tif"
    write_tiff(path, np.round(sim.image).astype(np.uint16), pixel_size_nm=0.2)
    return path, sim


def test_segment_writes_table_labels_and_provenance(particle_file, tmp_path, capsys):
    path, sim = particle_file
    out, labels = tmp_path / "p.csv", tmp_path / "p_labels.tif"
    assert _run(["segment", str(path), "--out", str(out), "--labels", str(labels)]) == 0
    table = read_csv(
        out,
        required=(
            "label",
            "area_px",
            "equivalent_diameter_px",
            "perimeter_px",
            "circularity",
            "touches_border",
        ),
    )
    # the pixel size comes from the file: nm columns are there and consistent
    np.testing.assert_allclose(
        table["equivalent_diameter_nm"], table["equivalent_diameter_px"] * 0.2, rtol=1e-3
    )
    assert out.with_suffix(".json").is_file()
    lab = read_image(labels)
    assert lab.data.shape == (256, 256) and lab.pixel_size_nm == pytest.approx(0.2)
    assert sorted(np.unique(lab.data[lab.data > 0]).tolist()) == table["label"].tolist()
    # most true particles are found
    assert abs(len(table) - len(sim.particles)) <= 0.15 * len(sim.particles)
    printed = capsys.readouterr()
    assert "particles" in printed.out and "warning" not in printed.err
    # an explicit pixel size wins over the file's
    out2 = tmp_path / "q.csv"
    _run(["segment", str(path), "--out", str(out2), "--pixel-size", "0.5"])
    np.testing.assert_allclose(read_csv(out2)["area_nm2"], table["area_px"] * 0.25, rtol=1e-3)


def test_atom_sized_particles_are_flagged(tmp_path, capsys):
    """An atomic-resolution image segmented by mistake: its columns come out as 'particles'."""
    sim = synth.perovskite_haadf((192, 192), spacing=20, dose=300, seed=901_235)
    path = tmp_path / "haadf.tif"
    write_tiff(path, np.round(sim.image).astype(np.uint16), pixel_size_nm=0.0165)
    assert _run(["segment", str(path), "--out", str(tmp_path / "a.csv")]) == 0
    err = capsys.readouterr().err
    assert "atomnet segment: warning:" in err and "the size of atoms" in err


def test_uncalibrated_image_has_no_nm_columns(tmp_path):
    img = synth.haadf_particles((128, 128), seed=905_001).image
    np.save(tmp_path / "img.npy", img)
    _run(["segment", str(tmp_path / "img.npy"), "--out", str(tmp_path / "t.csv")])
    assert not any(c.endswith("_nm") for c in read_csv(tmp_path / "t.csv").columns)


def test_bad_input(particle_file, tmp_path):
    path, _ = particle_file
    with pytest.raises(ValueError, match="no such file"):
        _run(["segment", str(tmp_path / "missing.tif"), "--out", str(tmp_path / "a.csv")])
    np.save(tmp_path / "rgb.npy", np.zeros((64, 64, 3)))
    with pytest.raises(ValueError, match="RGB"):
        _run(["segment", str(tmp_path / "rgb.npy"), "--out", str(tmp_path / "a.csv")])
    with pytest.raises(ValueError, match=r"\.csv"):
        _run(["segment", str(path), "--out", str(tmp_path / "a.txt")])
    with pytest.raises(ValueError, match="unknown model"):
        _run(["segment", str(path), "--out", str(tmp_path / "a.csv"), "--model", "nope"])
    (tmp_path / "exists.csv").write_text("x\n")
    with pytest.raises(OSError, match="exists"):
        _run(["segment", str(path), "--out", str(tmp_path / "exists.csv")])
    assert (tmp_path / "exists.csv").read_text() == "x\n"
    with pytest.raises(SystemExit):  # argparse rejects it (exit code 2)
        _run(["segment", str(path), "--out", str(tmp_path / "a.csv"), "--pixel-size", "-1"])
    assert not (tmp_path / "a.csv").exists()


def test_main_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    from napari_atomnet.cli import EXIT_BAD_INPUT, main

    code = main(["segment", str(tmp_path / "missing.tif"), "--out", str(tmp_path / "a.csv")])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_BAD_INPUT and len(err.splitlines()) == 1
    assert err.startswith("atomnet segment: error:") and "no such file" in err
