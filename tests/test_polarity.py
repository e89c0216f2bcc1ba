"""The atom-contrast ("polarity") option through pipeline, sequences, batch and the CLI.

Real built-in model on simulated images with an exact truth.  What is asserted holds for a
detector that sees both contrasts as for one that sees only bright atoms (the image negated for
dark ones): recall / F1 with the right contrast, the recorded contrast, the guess.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import score_atoms
from napari_atomnet import _samples, synth
from napari_atomnet.cli import main
from napari_atomnet.io import write_tiff
from napari_atomnet.pipeline import find_atoms, refine_atoms


@pytest.fixture(scope="module")
def abf_lattice():
    """An ABF-like image: dark Gaussian columns on a bright background, Poisson noise."""
    return synth.lattice_image(
        (192, 192),
        lattice="hexagonal",
        spacing=14.0,
        rotation_deg=17.0,
        sigma_frac=0.15,
        dose=100.0,
        polarity="dark",
        background=0.3,
        seed=5,
    )


@pytest.mark.parametrize("polarity", ["dark", "auto"])
def test_dark_columns_are_found_with_the_dark_contrast(abf_lattice, polarity):
    result = find_atoms(abf_lattice.image, polarity=polarity)
    params = result.provenance["params"]
    assert params["polarity"] == "dark"  # given, or guessed right on this STEM image
    assert params["polarity_requested"] == polarity
    scores = score_atoms(result.atoms, abf_lattice.atoms, abf_lattice.image.shape)
    assert scores["recall"] >= 0.98 and scores["f1"] >= 0.97, scores
    # refined on the negated image: the fits converge, amplitudes in image units (dips)
    assert result.atoms["fit_ok"].mean() > 0.9
    assert (result.atoms.loc[result.atoms["fit_ok"], "amplitude"] < 0).all()


def test_refine_with_the_known_contrast_equals_the_guess(abf_lattice):
    peaks = find_atoms(abf_lattice.image, polarity="dark", refine=False).atoms
    img = abf_lattice.image.astype(np.float32)
    told = refine_atoms(img, peaks, polarity="dark")
    guessed = refine_atoms(img, peaks)  # "auto": judged at the detected positions
    assert told.attrs["polarity"] == guessed.attrs["polarity"] == "dark"
    pd.testing.assert_frame_equal(told, guessed)


def test_bright_image_is_guessed_bright_and_classical_follows_the_option():
    sim = synth.perovskite_haadf((160, 160), spacing=20.0, dose=300.0, seed=2)
    result = find_atoms(sim.image)
    assert result.provenance["params"]["polarity"] == "bright"
    dark = synth.lattice_image((128, 128), spacing=12.0, polarity="dark", dose=300.0, seed=4)
    classical = find_atoms(dark.image, detector="classical", polarity="dark")
    assert classical.provenance["params"]["polarity"] == "dark"
    assert score_atoms(classical.atoms, dark.atoms, dark.image.shape)["f1"] >= 0.97


@pytest.mark.parametrize("polarity", ["auto", "dark"])
def test_interface_abf_sample(polarity):
    sample = _samples.load_sample("interface_abf")
    result = find_atoms(sample["image"], polarity=polarity)
    assert result.provenance["params"]["polarity"] == "dark"
    scores = score_atoms(result.atoms, sample["truth"], sample["image"].shape)
    assert scores["recall"] >= 0.98 and scores["f1"] >= 0.95, scores


def test_invalid_polarity_is_refused():
    img = np.random.default_rng(0).poisson(20.0, (32, 32)).astype(np.float32)
    for call in (
        lambda: find_atoms(img, polarity="negative"),
        lambda: find_atoms(img, detector="classical", polarity="Dark"),
    ):
        with pytest.raises(ValueError, match="polarity"):
            call()


def test_movie_contrast_and_spacing_resolved_once(abf_lattice, monkeypatch):
    from napari_atomnet import sequences
    from napari_atomnet.core import detect
    from napari_atomnet.models import detector

    stack = np.stack([abf_lattice.image, np.roll(abf_lattice.image, 2, axis=1)])
    calls = []
    real = detect.estimate_spacing

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(detect, "estimate_spacing", counting)
    monkeypatch.setattr(detector, "estimate_spacing", counting)
    atoms, _, prov = sequences.find_atoms_stack(stack)
    assert len(calls) == 1  # once for the movie, not once (or twice) per frame
    assert prov["params"]["polarity"] == "dark" and prov["params"]["polarity_requested"] == "auto"
    spacing = prov["params"]["lattice_spacing"]
    assert 10 < spacing < 18
    # every frame is what find_atoms gives with that contrast and spacing
    one = find_atoms(stack[1], polarity="dark", spacing=spacing).atoms
    np.testing.assert_array_equal(
        atoms.loc[atoms["frame"] == 1, ["y", "x"]].to_numpy(), one[["y", "x"]].to_numpy()
    )


def test_hrtem_movie_contrast_told_by_the_model_from_the_central_crop(monkeypatch):
    """A frame larger than the crop is decided on its central crop, as detection decides."""
    from napari_atomnet import sequences
    from napari_atomnet.core.detect import SPACING_CROP
    from napari_atomnet.models import detector
    from napari_atomnet.models.detector import CONTRAST_CROP
    from napari_atomnet.models.registry import load_model

    card = load_model("atomnet-hrtem", task="detection")
    frame = synth.graphene_hrtem(
        (SPACING_CROP + 96, SPACING_CROP + 64), defocus=60, cs_um=-10, dose=1e4, seed=11
    ).image  # dark atoms
    shapes = []
    real = detector.detect_atoms

    def recording(image, *args, **kwargs):
        shapes.append(np.shape(image))
        return real(image, *args, **kwargs)

    monkeypatch.setattr(detector, "detect_atoms", recording)
    # calibrated (0.12 Å/px, the simulation's), so no search for the sampling either
    constants = sequences.movie_constants(
        frame, polarity="auto", detector=card, pixel_size_nm=0.012
    )
    polarity = constants.polarity
    assert constants.pixel_size_nm == 0.012 and not constants.pixel_size_estimated
    assert polarity == "dark"
    # both ways on the central crop, and the whole frame not once (find_atoms_stack runs it)
    assert shapes and all(s == (CONTRAST_CROP, CONTRAST_CROP) for s in shapes)
    guess = real(frame, card, polarity="auto", pixel_size_nm=0.012).params["polarity"]
    assert guess == polarity


def test_batch_records_the_resolved_contrast(abf_lattice, tmp_path, monkeypatch):
    import os

    from napari_atomnet.batch import run_batch

    monkeypatch.delenv("NAPARI_ATOMNET_THREADS", raising=False)

    folder = tmp_path / "in"
    folder.mkdir()
    write_tiff(folder / "single.tif", abf_lattice.image.astype(np.float32))
    write_tiff(folder / "movie.tif", np.stack([abf_lattice.image] * 2).astype(np.float32))
    result = run_batch([folder], tmp_path / "out", polarity="auto", n_workers=0)
    assert result.n_failed == 0
    assert "NAPARI_ATOMNET_THREADS" not in os.environ  # in-process: the caller's threads kept
    assert set(result.summary["polarity"]) == {"dark"}
    movie = json.loads((tmp_path / "out" / "movie" / "provenance.json").read_text())
    single = json.loads((tmp_path / "out" / "single_provenance.json").read_text())
    for record in (movie, single):
        assert record["params"]["polarity"] == "dark", record["params"]
        assert record["params"]["polarity_requested"] == "auto"
    assert 10 < movie["params"]["lattice_spacing"] < 18
    for record in (movie, single):  # decided once for the movie, by the worker for the image
        assert record["params"]["gaussian_model"] in ("isotropic", "elliptical")
    with pytest.raises(ValueError, match="polarity"):
        run_batch([folder], tmp_path / "out2", polarity="abf", n_workers=0)


def test_cli_polarity_flag_is_recorded(abf_lattice, tmp_path, capsys):
    image = tmp_path / "abf.tif"
    write_tiff(image, abf_lattice.image.astype(np.float32))
    out = tmp_path / "atoms.csv"
    assert main(["detect", str(image), "--polarity", "dark", "--out", str(out)]) == 0
    assert "dark atoms" in capsys.readouterr().out
    params = json.loads(out.with_suffix(".json").read_text())["params"]
    assert params["polarity"] == "dark" and params["polarity_requested"] == "dark"
    # refine of given positions with a given contrast
    refined = tmp_path / "refined.csv"
    argv = ["refine", str(image), "--atoms", str(out), "--polarity", "dark", "--out", str(refined)]
    assert main(argv) == 0
    assert json.loads(refined.with_suffix(".json").read_text())["params"]["polarity"] == "dark"


@pytest.mark.parametrize("command", ["detect", "demo", "cells", "refine", "batch"])
def test_cli_invalid_polarity_is_one_line_and_exit_2(command, tmp_path, capsys):
    argv = {
        "detect": ["detect", "x.tif"],
        "demo": ["demo"],
        "cells": ["cells", "x.tif", "--out", "c.csv"],
        "refine": ["refine", "x.tif", "--atoms", "a.csv"],
        "batch": ["batch", "x.tif", "--out", str(tmp_path)],
    }[command]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--polarity", "negative"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"atomnet {command}: error:" in err and "--polarity" in err and "dark" in err


def test_cli_help_explains_polarity(capsys):
    with pytest.raises(SystemExit):
        main(["detect", "--help"])
    text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")  # argparse wraps
    assert "dark for ABF/bright-field" in text
    assert "atomnet-hrtem guesses it itself" in text and "needs to be told" in text


def test_hrtem_movie_takes_its_contrast_from_the_hrtem_model(tmp_path):
    """A dark-atom HRTEM movie left on "auto": its contrast, decided once from the first frame,
    is the HRTEM model's guess (dark), not the image's look (which says bright here), in the
    library and in a batch run."""
    from napari_atomnet.batch import run_batch
    from napari_atomnet.core.detect import resolve_polarity
    from napari_atomnet.sequences import find_atoms_stack

    sim = synth.graphene_hrtem(
        (192, 192), defocus=60.0, cs_um=-10.0, dose=1e4, astig_angstrom=5.0, seed=3_200_000
    )
    assert sim.extras["polarity"] < 0 and resolve_polarity(sim.image, "auto") == "bright"
    stack = np.stack([sim.image, np.roll(sim.image, 3, axis=0)]).astype(np.float32)
    atoms, _, prov = find_atoms_stack(stack, detector="atomnet-hrtem")
    assert prov["params"]["polarity"] == "dark"
    one = find_atoms(stack[1], detector="atomnet-hrtem", polarity="dark").atoms
    np.testing.assert_array_equal(
        atoms.loc[atoms["frame"] == 1, ["y", "x"]].to_numpy(), one[["y", "x"]].to_numpy()
    )
    folder = tmp_path / "in"
    folder.mkdir()
    write_tiff(folder / "movie.tif", stack)
    result = run_batch(
        [folder], tmp_path / "out", detector="atomnet-hrtem", polarity="auto", n_workers=0
    )
    assert result.n_failed == 0
    record = json.loads((tmp_path / "out" / "movie" / "provenance.json").read_text())
    assert record["params"]["polarity"] == "dark"
