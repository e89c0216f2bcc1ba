"""Empty sites of a column arrangement and the look-elsewhere test of detections there.

Real simulations with their ground truth, refined by the real pipeline; seeds never used in
training (training seeds are drawn from ``SeedSequence(0)``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

from napari_atomnet import synth
from napari_atomnet.core.gaussians import render_gaussians
from napari_atomnet.core.holes import amplitude_z, empty_site_pvalues, hole_sites
from napari_atomnet.pipeline import find_atoms


def _grid(n: int, spacing: float) -> np.ndarray:
    yy, xx = np.mgrid[0:n, 0:n] * spacing
    return np.column_stack([yy.ravel(), xx.ravel()]).astype(float)


def test_hole_sites_are_cell_centres_once_each():
    centres, nearest = hole_sites(_grid(6, 10.0), 2.0)
    # 5 x 5 cells, each centre once although two Delaunay triangles share it
    assert len(centres) == 25
    assert np.allclose(centres % 10.0, 5.0)
    assert len(nearest) == 25
    unmerged, _ = hole_sites(_grid(6, 10.0), 2.0, merge=False)
    assert len(unmerged) == 50


def test_hole_sites_of_a_honeycomb_are_hexagon_centres_and_a_vacancy_is_one():
    sim = synth.lattice_image((256, 256), lattice="honeycomb", spacing=12, dose=1e6, seed=1)
    atoms = sim.atoms[["y", "x"]].to_numpy()
    bond = float(np.median(cKDTree(atoms).query(atoms, k=2)[0][:, 1]))
    centres, _ = hole_sites(atoms, 2.0)
    dist = cKDTree(atoms).query(centres)[0]
    assert np.allclose(dist, bond, rtol=0.02)  # a hexagon's centre is one bond from its atoms
    gone = int(np.argmin(np.hypot(*(atoms - 128.0).T)))
    with_vacancy, _ = hole_sites(np.delete(atoms, gone, axis=0), 2.0)
    assert cKDTree(with_vacancy).query(atoms[gone])[0] < 0.1 * bond


def test_amplitude_z_is_a_standard_score_in_noise_and_large_on_a_column():
    rng = np.random.default_rng(7)
    noise = rng.normal(10.0, 3.0, (400, 400))
    positions = rng.uniform(10, 390, (2000, 2))
    z = amplitude_z(noise, positions, 2.0)
    assert abs(np.mean(z)) < 0.1 and 0.9 < np.std(z) < 1.15
    column = noise + render_gaussians(noise.shape, [200.3], [150.6], [12.0], [2.0])
    assert amplitude_z(column, [[200.3, 150.6]], 2.0)[0] > 6.0
    # windows beyond the image are not measured
    assert np.isnan(amplitude_z(noise, [[1.0, 200.0]], 2.0)).all()


@pytest.fixture(scope="module")
def rocksalt_refined():
    """ABF-like rock salt at 20 counts (every column alike, cell centres empty), refined."""
    sim = synth.lattice_image(
        (384, 384), lattice="rocksalt", spacing=13, polarity="dark", dose=20, seed=4_242_011
    )
    atoms = find_atoms(sim.image, polarity="dark", fit_check=False).atoms
    strong = atoms[atoms["class"] == 0].reset_index(drop=True)
    return sim, strong


def _with_candidates(atoms: pd.DataFrame, positions: np.ndarray) -> pd.DataFrame:
    extra = pd.DataFrame({"y": positions[:, 0], "x": positions[:, 1], "class": 1})
    return pd.concat([atoms, extra], ignore_index=True)


def test_candidates_at_empty_centres_are_chance_and_a_real_column_there_is_not(rocksalt_refined):
    sim, strong = rocksalt_refined
    sites, _ = hole_sites(strong[["y", "x"]].to_numpy(), 4.0)
    # where the model called a real column "weak", the strong columns have a hole on it
    truth = sim.atoms[["y", "x"]].to_numpy()
    sites = sites[cKDTree(truth).query(sites)[0] > 0.3 * 13]
    table = _with_candidates(strong, sites)
    reference = np.arange(len(table)) < len(strong)
    p = empty_site_pvalues(sim.image, table, reference, ~reference, polarity="dark")
    tested = p[~reference][np.isfinite(p[~reference])]
    # nearly every site is tested (all but the edge's), and none looks like a column:
    # the family-wise chance of the noisiest empty centre is not small
    assert len(tested) > 0.8 * len(sites)
    assert tested.min() > 0.05
    # an extra column as dark as the lattice's own, at one empty centre
    middle = sites[np.argmin(np.hypot(*(sites - 192.0).T))]
    amplitude = float(np.median(strong["amplitude"]))
    sigma = float(np.median(strong["sigma_y"]))
    image = sim.image + render_gaussians(
        sim.image.shape, [middle[0]], [middle[1]], [amplitude], [sigma]
    )
    one = _with_candidates(strong, middle[None])
    reference = np.arange(len(one)) < len(strong)
    p_real = empty_site_pvalues(image, one, reference, ~reference, polarity="dark")
    assert p_real[-1] < 1e-6


def test_occupied_sites_are_not_tested():
    # perovskite: the A squares' centres hold the B columns
    sim = synth.perovskite_haadf((384, 384), spacing=22, dose=50, seed=4_242_012)
    atoms = find_atoms(sim.image, polarity="bright", fit_check=False).atoms
    strong = (atoms["class"] == 0).to_numpy()
    assert (~strong).sum() > 100
    p = empty_site_pvalues(sim.image, atoms, strong, ~strong, polarity="bright")
    assert np.isnan(p).all()


def test_too_few_columns_or_no_candidates_test_nothing(rocksalt_refined):
    sim, strong = rocksalt_refined
    none = np.zeros(len(strong), bool)
    assert np.isnan(empty_site_pvalues(sim.image, strong, ~none, none, polarity="dark")).all()
    few = strong.iloc[:10]
    cand = np.arange(10) >= 8
    assert np.isnan(empty_site_pvalues(sim.image, few, ~cand, cand, polarity="dark")).all()


def test_columns_are_taken_out_of_the_windows_as_render_gaussians_draws_them():
    rng = np.random.default_rng(3)
    n = 60
    columns = pd.DataFrame(
        {
            "y": rng.uniform(5, 123, n),
            "x": rng.uniform(5, 123, n),
            "amplitude": rng.uniform(-5, 5, n),
            "sigma_y": rng.uniform(1.0, 2.5, n),
            "sigma_x": rng.uniform(1.0, 2.5, n),
            # half unrotated (the separable path), half tilted
            "theta": np.where(np.arange(n) % 2 == 0, 0.0, rng.uniform(0, np.pi, n)),
        }
    )
    image = rng.normal(0, 1, (128, 128))
    model = render_gaussians(
        image.shape,
        columns["y"],
        columns["x"],
        columns["amplitude"],
        columns["sigma_y"],
        columns["sigma_x"],
        columns["theta"],
        radius=3.0,
    )
    sites = rng.uniform(8, 120, (300, 2))
    for sign in (1.0, -1.0):
        windowed = amplitude_z(image, sites, 1.7, sign=sign, subtract=columns)
        whole = amplitude_z(sign * (image - model), sites, 1.7)
        assert np.allclose(windowed, whole, rtol=1e-9, atol=1e-9)
