"""The ``atomnet`` command: success paths and bad input (one line on stderr, exit code 2)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from napari_atomnet._samples import sample_files
from napari_atomnet.cli import main
from napari_atomnet.io import write_tiff


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    from napari_atomnet import __version__

    assert capsys.readouterr().out.strip() == f"atomnet {__version__}"


def test_console_script_is_installed():
    exe = [sys.executable, "-m", "napari_atomnet.cli", "--version"]
    assert subprocess.run(exe, capture_output=True, text=True).stdout.startswith("atomnet ")


def test_demo_writes_results_that_match_the_truth(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out.resolve()) in printed
    atoms = pd.read_csv(out / "atoms.csv")
    assert {"y", "x", "score", "class", "fit_ok", "amplitude"} <= set(atoms.columns)
    provenance = json.loads((out / "atoms.json").read_text())
    check = provenance["ground_truth_check"]
    assert check["f1"] > 0.97 and check["rmse"] < 0.2
    assert "row" in provenance["coordinates"]
    png = (out / "overlay.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
    # a second run refuses to overwrite, and leaves the files alone
    before = (out / "atoms.csv").read_bytes()
    assert main(["demo", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert (out / "atoms.csv").read_bytes() == before


def test_detect_with_the_hrtem_model_by_name(tmp_path):
    from conftest import score_atoms

    files = sample_files("graphene_hrtem")
    out = tmp_path / "atoms.csv"
    args = ["detect", str(files["image"]), "--model", "atomnet-hrtem", "--polarity", "bright"]
    assert main([*args, "--out", str(out)]) == 0
    provenance = json.loads(out.with_suffix(".json").read_text())
    assert provenance["model"]["name"] == "atomnet-hrtem"
    atoms, truth = pd.read_csv(out), pd.read_csv(files["truth"])
    image_shape = (384, 384)  # the sample's size
    assert score_atoms(atoms, truth, image_shape)["f1"] >= 0.95
    # its card turns refinement off (phase contrast is not Gaussian); --refine turns it on,
    # and the fits, judged not Gaussian, keep the very same positions
    assert provenance["params"]["refine"] is False and "fit_ok" not in atoms
    refined = tmp_path / "refined.csv"
    assert main([*args, "--refine", "--out", str(refined)]) == 0
    fitted = pd.read_csv(refined)
    assert (fitted["fit_status"] == "not_gaussian").all()
    np.testing.assert_allclose(fitted[["y", "x"]], atoms[["y", "x"]], atol=1e-3)


def test_detect_then_refine_roundtrip(tmp_path, capsys):
    image = sample_files("perovskite_haadf")["image"]
    out = tmp_path / "atoms.csv"
    assert (
        main(["detect", str(image), "--model", "classical", "--no-refine", "--out", str(out)]) == 0
    )
    raw = pd.read_csv(out)
    assert {"y", "x", "score", "class", "y0", "x0", "y1", "x1"} <= set(raw.columns)
    assert "fit_ok" not in raw
    refined_path = tmp_path / "refined.csv"
    assert main(["refine", str(image), "--atoms", str(out), "--out", str(refined_path)]) == 0
    refined = pd.read_csv(refined_path)
    assert {"y", "x", "fit_ok", "sigma_y", "y_init", "score"} <= set(refined.columns)
    truth = pd.read_csv(sample_files("perovskite_haadf")["truth"])
    from napari_atomnet.core.metrics import localization_error

    before = localization_error(raw[["y", "x"]].to_numpy(), truth[["y", "x"]].to_numpy(), 4.0)
    after = localization_error(refined[["y", "x"]].to_numpy(), truth[["y", "x"]].to_numpy(), 4.0)
    assert after["rmse"] < 0.5 * before["rmse"]  # refinement makes positions sub-pixel


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["detect", "missing.tif"], "no such file"),
        (["detect", "{rgb}"], "RGB"),
        (["detect", "{stack}"], "stack"),
        (["detect", "{nan}"], "NaN"),
        (["detect", "{ok}", "--model", "no-such-model"], "unknown model"),
        (["detect", "{ok}", "--model", "{junk}"], "not a readable ONNX model"),
        (["refine", "{ok}", "--atoms", "{badcsv}"], "missing column"),
        (["demo", "--sample", "nope"], "unknown sample"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(tmp_path, capsys, args, message):
    rng = np.random.default_rng(0)
    files = {
        "rgb": tmp_path / "rgb.npy",
        "stack": tmp_path / "stack.tif",
        "nan": tmp_path / "nan.npy",
        "ok": tmp_path / "ok.tif",
        "junk": tmp_path / "junk.onnx",
        "badcsv": tmp_path / "bad.csv",
    }
    np.save(files["rgb"], rng.random((32, 32, 3)))
    write_tiff(files["stack"], rng.random((4, 32, 32)).astype(np.float32))
    nan = rng.random((32, 32))
    nan[0, 0] = np.nan
    np.save(files["nan"], nan)
    write_tiff(files["ok"], rng.random((32, 32)).astype(np.float32))
    files["junk"].write_bytes(b"not a model")
    files["badcsv"].write_text("a,b\n1,2\n")
    argv = [a.format(**{k: str(v) for k, v in files.items()}) for a in args]
    out = tmp_path / "result.csv"
    if argv[0] in ("detect", "refine"):
        argv += ["--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_a_movie_is_refused_from_its_shape_without_reading_frames(tmp_path, capsys, monkeypatch):
    import dask.array as da

    from napari_atomnet import io
    from napari_atomnet.io import ImageData

    def unreadable(block):
        raise AssertionError("a frame was read")

    lazy = da.zeros((500, 64, 64), chunks=(1, 64, 64), dtype=np.uint16).map_blocks(
        unreadable, dtype=np.uint16, meta=np.empty((0, 0, 0), np.uint16)
    )
    monkeypatch.setattr(io, "read_image", lambda *a, **k: ImageData(lazy, name="movie"))
    for command in (["detect"], ["cells", "--out", str(tmp_path / "c.csv")]):
        assert main([command[0], str(tmp_path / "movie.emd"), *command[1:]]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "stack of 500 frames" in err[0] and "atomnet batch" in err[0]


def test_help_lists_the_file_types_the_readers_read(capsys):
    from napari_atomnet.io import describe_formats, read_images

    assert callable(read_images)
    formats = describe_formats()
    for suffix in ("dm3", "dm4", "emd", "ser", "emi", "mrc", "hspy", "hdf5", "tif", "png", "npy"):
        assert suffix in formats
    for command in ("detect", "refine", "cells", "segment", "export", "batch"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "dm3/dm4 (Gatan DigitalMicrograph)" in text and "ser/emi" in text, command


def test_detect_hrtem_dark_atoms_with_the_default_contrast(tmp_path, capsys):
    """No --polarity: on a dark-atom HRTEM image the HRTEM model tells the contrast itself and
    says so; the atoms are those it finds when told."""
    from napari_atomnet import synth
    from napari_atomnet.io import write_tiff

    sim = synth.graphene_hrtem(
        (192, 192), defocus=60.0, cs_um=-10.0, dose=1e4, astig_angstrom=5.0, seed=3_400_000
    )
    image = tmp_path / "dark.tif"
    write_tiff(image, sim.image.astype(np.float32))
    args = ["detect", str(image), "--model", "atomnet-hrtem"]
    assert main([*args, "--out", str(tmp_path / "auto.csv")]) == 0
    said = capsys.readouterr().out
    assert " dark atoms " in said and "contrast told by the model" in said
    assert main([*args, "--polarity", "dark", "--out", str(tmp_path / "told.csv")]) == 0
    assert "contrast told by the model" not in capsys.readouterr().out
    auto, told = pd.read_csv(tmp_path / "auto.csv"), pd.read_csv(tmp_path / "told.csv")
    assert len(auto) > 100
    pd.testing.assert_frame_equal(auto, told)
    provenance = json.loads((tmp_path / "auto.json").read_text())
    assert provenance["params"]["polarity"] == "dark"


def test_cells_on_the_perovskite_sample(tmp_path, capsys):
    """``atomnet cells``: one row per cell with the issue's columns and their standard errors,
    displacements that follow the simulator's truth within their reported errors, a provenance
    record, the same cells from a given atoms CSV, and no silent overwrite."""
    from scipy.spatial import cKDTree

    files = sample_files("perovskite_haadf")
    out = tmp_path / "cells.csv"
    assert main(["cells", str(files["image"]), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert " cells (" in said and "displacements ± " in said and "pm per axis" in said
    cells = pd.read_csv(out)
    needed = {"y", "x", "a_y", "a_x", "b_y", "b_x", "bsite_y", "bsite_x", "disp_y", "disp_x"}
    needed |= {"fit_ok", "exx", "eyy", "exy", "rotation", "disp_y_err", "disp_x_err", "exx_err"}
    assert needed <= set(cells.columns)
    assert len(cells) > 350 and cells["fit_ok"].mean() > 0.95
    truth = pd.read_csv(files["truth"])
    b_true = truth[truth["class"] == 1]
    ok = cells[cells["fit_ok"]]
    d, i = cKDTree(b_true[["y", "x"]].to_numpy()).query(ok[["bsite_y", "bsite_x"]].to_numpy())
    assert (d < 1.0).mean() > 0.99
    z = (ok["disp_y"] - b_true["disp_y"].to_numpy()[i]) / ok["disp_y_err"]
    assert 0.7 < np.std(z) < 1.4  # the reported errors are the size of the actual ones
    provenance = json.loads(out.with_suffix(".json").read_text())
    assert provenance["n_cells"] == len(cells) and provenance["model"]["name"] == "atomnet-detect"
    assert provenance["source"].endswith("perovskite_haadf.tif")
    atoms = tmp_path / "atoms.csv"
    assert main(["detect", str(files["image"]), "--out", str(atoms)]) == 0
    assert "px per axis" in capsys.readouterr().out  # the positions' median standard error
    again = tmp_path / "again.csv"
    assert main(["cells", str(files["image"]), "--atoms", str(atoms), "--out", str(again)]) == 0
    # the atoms CSV holds positions to 1e-4 px: the same cells, to about that
    same = ["y", "x", "bsite_y", "bsite_x", "disp_y", "disp_x", "exx", "eyy", "exy", "fit_ok"]
    pd.testing.assert_frame_equal(
        pd.read_csv(again)[same], cells[same], check_exact=False, atol=1e-3
    )
    capsys.readouterr()
    assert main(["cells", str(files["image"]), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err


def test_cells_with_a_reference_box_and_a_given_basis(tmp_path, capsys):
    """``--reference-box``: strain against the median of the cells inside the box (recorded in
    the provenance); ``--basis``: the cells of the given vectors; bad values: exit 2, no file."""
    files = sample_files("perovskite_haadf")
    atoms = tmp_path / "atoms.csv"
    assert main(["detect", str(files["image"]), "--out", str(atoms)]) == 0
    common = ["cells", str(files["image"]), "--atoms", str(atoms)]
    out = tmp_path / "ref.csv"
    box = [40.0, 60.0, 200.0, 220.0]
    assert main([*common, "--reference-box", *map(str, box), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    cells = pd.read_csv(out)
    inside = cells["centre_y"].between(box[0], box[2]) & cells["centre_x"].between(box[1], box[3])
    chosen = cells[cells["reference_cell"]]
    assert chosen.index.equals(cells[inside & (cells["status"] == "ok")].index)
    assert len(chosen) >= 20
    assert f"strain against {len(chosen)} cells in the box" in said
    provenance = json.loads(out.with_suffix(".json").read_text())
    medians = [chosen[c].median() for c in ("a_y", "a_x", "b_y", "b_x")]
    # the CSV holds 4 decimals
    np.testing.assert_allclose(np.ravel(provenance["reference"]), medians, atol=2e-4)
    assert provenance["params"]["reference_region"] == [
        [[40.0, 60.0], [40.0, 220.0], [200.0, 220.0], [200.0, 60.0]]
    ]
    assert abs(chosen["exx"].median()) < 1e-3

    a = np.array([cells["a_y"].median(), cells["a_x"].median()])
    b = np.array([cells["b_y"].median(), cells["b_x"].median()])
    diagonal = tmp_path / "diagonal.csv"
    basis = [*(a + b), *b]
    assert main([*common, "--basis", *map(str, basis), "--out", str(diagonal)]) == 0
    edges = pd.read_csv(diagonal)
    assert np.hypot(edges["a_y"], edges["a_x"]).median() == pytest.approx(
        np.hypot(*(a + b)), rel=0.02
    )
    assert json.loads(diagonal.with_suffix(".json").read_text())["params"]["basis_given"]

    capsys.readouterr()
    for bad, message in (
        (["--reference-box", "10", "10", "5", "20"], "Y0 < Y1"),
        (["--reference-box", "-90", "-90", "-50", "-50"], "no complete cell"),
        (["--basis", *map(str, [*a, *(2 * a)])], "from parallel"),
    ):
        failed = tmp_path / "failed.csv"
        assert main([*common, *bad, "--out", str(failed)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
        assert not failed.exists() and not failed.with_suffix(".json").exists()
