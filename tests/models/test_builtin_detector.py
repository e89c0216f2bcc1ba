"""The shipped built-in detector: intact, and accurate on held-out simulated images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial import cKDTree

from napari_atomnet import synth
from napari_atomnet.core.metrics import detection_scores
from napari_atomnet.models.detector import DEFAULT_DETECTOR, detect_atoms
from napari_atomnet.models.registry import builtin_dir, file_sha256, load_model


def _f1(table, truth, shape) -> float:
    # the evaluation protocol of the benchmark: match radius 0.25 × spacing, a band of half a
    # spacing along the edge left out (truth lists only column centres inside the image)
    truth = truth[["y", "x"]].to_numpy()
    spacing = np.median(cKDTree(truth).query(truth, k=2)[0][:, 1])
    return detection_scores(table[["y", "x"]].to_numpy(), truth, 0.25 * spacing, shape=shape,
                            border=0.5 * spacing)["f1"]


def test_builtin_card_matches_its_file():
    path = builtin_dir() / f"{DEFAULT_DETECTOR}.onnx"
    card_json = json.loads(path.with_suffix(".json").read_text())
    assert card_json["sha256"] == file_sha256(path)
    assert path.stat().st_size < 5 * 1024 * 1024
    card = load_model(DEFAULT_DETECTOR, task="detection")
    assert card.builtin and card.sha256 == card_json["sha256"]
    info = card.info
    assert info["classes"] == ["strong", "weak"]
    assert info["margin"] * 2 >= info["architecture"]["receptive_field_px"]
    assert info["training"]["wall_time_seconds"] < 3600


def test_builtin_detects_perovskite_haadf():
    # seed never used in training (training seeds come from SeedSequence(0) draws)
    sim = synth.perovskite_haadf((256, 256), 24.0, dose=200.0, rotation_deg=8.0, seed=987_654)
    result = detect_atoms(sim.image)
    assert _f1(result.table, sim.atoms, sim.image.shape) >= 0.99
    # B columns (b_ratio 0.35) come out as the weak class, A columns as strong
    truth = sim.atoms[["y", "x"]].to_numpy()
    _, idx = cKDTree(truth).query(result.table[["y", "x"]].to_numpy())
    agree = (result.table["class"].to_numpy() == sim.atoms["class"].to_numpy()[idx]).mean()
    assert agree >= 0.95


def test_builtin_detects_dark_columns():
    sim = synth.lattice_image(
        (256, 256),
        lattice="hexagonal",
        spacing=14.0,
        rotation_deg=17.0,
        sigma_frac=0.15,
        dose=100.0,
        polarity="dark",
        background=0.3,
        vacancy_fraction=0.02,
        seed=876_543,
    )
    result = detect_atoms(sim.image)
    assert _f1(result.table, sim.atoms, sim.image.shape) >= 0.99


@pytest.mark.parametrize("seed", [1])
def test_builtin_finds_nothing_in_pure_noise(seed):
    img = np.random.default_rng(seed).poisson(50.0, (128, 128)).astype(np.float32)
    assert len(detect_atoms(img).table) < 10
