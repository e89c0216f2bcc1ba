import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

from napari_atomnet import synth
from napari_atomnet.core.lattice import (
    analyze_lattice,
    build_cells,
    cell_strain,
    find_basis,
    split_sublattices,
)
from napari_atomnet.core.refine import fit_gaussians


def grid(a, b, n=12):
    i, j = np.mgrid[0:n, 0:n]
    return i.ravel()[:, None] * np.asarray(b) + j.ravel()[:, None] * np.asarray(a) + 100.0


@pytest.mark.parametrize("angle", [0.0, 13.0, 45.0, 77.0, 135.0])
@pytest.mark.parametrize("aspect", [1.0, 1.4])
def test_find_basis_any_rotation_and_aspect(angle, aspect):
    t = np.deg2rad(angle)
    a_true = 14.0 * np.array([np.sin(t), np.cos(t)])  # (y, x)
    b_true = 14.0 * aspect * np.array([np.cos(t), -np.sin(t)])
    rng = np.random.default_rng(0)
    pts = grid(a_true, b_true) + rng.normal(0, 0.3, (144, 2))
    a, b = find_basis(pts)
    assert a[1] > 0 and b[0] > 0  # seed 000: a to the right, b downwards
    found = {tuple(np.round(v, 0)) for v in (a, -a, b, -b)}
    for v in (a_true, b_true):
        assert any(np.hypot(*(np.array(f) - v)) < 1.0 for f in found), (v, a, b)


def test_find_basis_hexagonal_ignores_defects():
    a_true, b_true = np.array([0.0, 10.0]), np.array([10 * np.sin(np.pi / 3), 5.0])
    pts = grid(a_true, b_true, 15)
    rng = np.random.default_rng(1)
    pts = np.concatenate(
        [np.delete(pts, rng.choice(len(pts), 20, False), axis=0), rng.uniform(100, 250, (10, 2))]
    )  # vacancies + junk detections
    a, b = find_basis(pts)
    assert np.hypot(*a) == pytest.approx(10.0, abs=0.2)
    assert np.hypot(*b) == pytest.approx(10.0, abs=0.2)
    assert abs(np.dot(a, b)) / 100 == pytest.approx(0.5, abs=0.05)  # 60° between them


def test_cells_skip_missing_corners_and_flag_distortion():
    a, b = np.array([0.0, 20.0]), np.array([20.0, 0.0])
    pts = grid(a, b, 6)  # 5×5 complete cells
    full = build_cells(pts, a, b)
    assert len(full) == 25 and (full["status"] == "ok").all()
    vacancy = np.delete(pts, 14, axis=0)  # an interior corner: 4 cells lose it
    assert len(build_cells(vacancy, a, b)) == 21
    bent = pts.copy()
    bent[14] += [0.0, 4.5]  # within the search radius, but the cells no longer close
    cells = build_cells(bent, a, b, tolerance=0.3)
    assert len(cells) == 25
    assert (cells["status"] == "distorted").sum() >= 2


def test_strain_of_a_uniformly_deformed_lattice():
    a_ref, b_ref = np.array([0.0, 20.0]), np.array([20.0, 0.0])
    f = np.array([[1.01, 0.004], [-0.002, 0.995]])  # (x, y) deformation gradient

    def deform(v):
        xy = f @ np.array([v[1], v[0]])
        return np.array([xy[1], xy[0]])

    cells = pd.DataFrame(
        {
            "a_y": [deform(a_ref)[0]],
            "a_x": [deform(a_ref)[1]],
            "b_y": [deform(b_ref)[0]],
            "b_x": [deform(b_ref)[1]],
        }
    )
    s = cell_strain(cells, np.stack([a_ref, b_ref])).iloc[0]
    assert s["exx"] == pytest.approx(0.01)
    assert s["eyy"] == pytest.approx(-0.005)
    assert s["exy"] == pytest.approx(0.001)
    assert s["rotation"] == pytest.approx(-0.003)


def test_split_sublattices_by_brightness_when_single_class():
    rng = np.random.default_rng(2)
    amp = np.concatenate([rng.normal(500, 20, 60), rng.normal(170, 10, 60)])
    atoms = pd.DataFrame({"y": rng.random(120), "x": rng.random(120), "amplitude": amp})
    assert split_sublattices(atoms).tolist() == [True] * 60 + [False] * 60
    flat = atoms.assign(amplitude=rng.normal(500, 20, 120))
    assert split_sublattices(flat).all()


@pytest.fixture(scope="module")
def perovskite():
    return synth.perovskite_haadf(
        (512, 512),
        spacing=24,
        rotation_deg=21,
        dose=500,
        strain=0.01,
        vacancy_fraction=0.01,
        seed=4,
    )


def test_exact_positions_give_exact_displacements_and_strain(perovskite):
    sim = perovskite
    lat = analyze_lattice(sim.extras["clean"], sim.atoms)  # truth positions, detected B
    cells = lat.cells[lat.cells["fit_ok"]]
    b = sim.atoms[sim.atoms["class"] == 1]
    d, i = cKDTree(b[["y", "x"]].to_numpy()).query(cells[["bsite_y", "bsite_x"]].to_numpy())
    assert d.max() < 1e-9
    np.testing.assert_allclose(cells["disp_y"], b["disp_y"].to_numpy()[i], atol=1e-6)
    np.testing.assert_allclose(cells["disp_x"], b["disp_x"].to_numpy()[i], atol=1e-6)
    a_sites = sim.atoms[sim.atoms["class"] == 0]
    _, j = cKDTree(a_sites[["y", "x"]].to_numpy()).query(cells[["y", "x"]].to_numpy())
    for k in ("exx", "eyy", "exy", "rotation"):
        # per-cell finite differences vs the continuum field: within a tenth of the strain
        err = cells[k].to_numpy() - a_sites[k].to_numpy()[j]
        assert np.sqrt(np.mean(err**2)) < 1.5e-3, k


def test_cells_built_wherever_four_corners_exist(perovskite):
    sim = perovskite
    lat = analyze_lattice(sim.extras["clean"], sim.atoms)
    a_sites = sim.atoms[sim.atoms["class"] == 0]
    present = {(int(r.i), int(r.j)) for r in a_sites.itertuples()}
    expected = sum(
        all((i + di, j + dj) in present for di, dj in ((0, 0), (0, 1), (1, 0), (1, 1)))
        for i, j in present
    )
    assert len(lat.cells) == expected


def test_undetected_b_sites_are_fitted_from_the_residual(perovskite):
    sim = perovskite
    fit = fit_gaussians(sim.image, sim.atoms[["y", "x"]].to_numpy())
    refined = sim.atoms[["class"]].loc[fit.index].join(fit)
    only_a = refined[refined["class"] == 0]
    lat = analyze_lattice(sim.image, only_a, pixel_size_nm=sim.pixel_size_nm)
    cells = lat.cells
    assert (cells["bsite_source"] == "fitted").all()
    assert cells["fit_ok"].mean() > 0.97
    b = sim.atoms[sim.atoms["class"] == 1]
    ok = cells[cells["fit_ok"]]
    _, i = cKDTree(b[["y", "x"]].to_numpy()).query(ok[["bsite_y", "bsite_x"]].to_numpy())
    err = np.hypot(
        ok["disp_y"] - b["disp_y"].to_numpy()[i], ok["disp_x"] - b["disp_x"].to_numpy()[i]
    )
    assert np.sqrt(np.mean(err**2)) < 0.12  # dose 500: close to the B sites' Cramér–Rao limit
    np.testing.assert_allclose(
        ok["disp_magnitude_pm"], ok["disp_magnitude"] * sim.pixel_size_nm * 1000
    )


def test_reference_region_and_errors(perovskite):
    sim = perovskite
    lat = analyze_lattice(None, sim.atoms, bsites=False)
    region = (lat.cells["x"] < 200).to_numpy()
    lat2 = analyze_lattice(None, sim.atoms, bsites=False, reference=region)
    assert abs(lat2.cells.loc[region, "exx"].median()) < 2e-4
    with pytest.raises(ValueError, match="at least 4 atoms"):
        analyze_lattice(None, sim.atoms.iloc[:3], bsites=False)
    with pytest.raises(ValueError, match="image is needed"):
        analyze_lattice(None, sim.atoms)


def test_displacement_standard_errors_match_the_actual_errors(perovskite):
    """Each cell's disp_y_err / disp_x_err (the fits' errors of B and its four corners) says how
    far its displacement is from the truth: the errors in units of them have SD near 1."""
    sim = perovskite
    fit = fit_gaussians(sim.image, sim.atoms[["y", "x"]].to_numpy(), isotropic=True)
    refined = sim.atoms[["class"]].loc[fit.index].join(fit)
    lat = analyze_lattice(sim.image, refined[refined["fit_ok"]], pixel_size_nm=sim.pixel_size_nm)
    ok = lat.cells[lat.cells["fit_ok"]]
    b = sim.atoms[sim.atoms["class"] == 1]
    _, i = cKDTree(b[["y", "x"]].to_numpy()).query(ok[["bsite_y", "bsite_x"]].to_numpy())
    z = np.concatenate(
        [
            (ok["disp_y"] - b["disp_y"].to_numpy()[i]) / ok["disp_y_err"],
            (ok["disp_x"] - b["disp_x"].to_numpy()[i]) / ok["disp_x_err"],
        ]
    )
    assert len(z) > 600 and np.isfinite(z).all()
    assert 0.85 < np.std(z) < 1.2
    np.testing.assert_allclose(ok["disp_y_err_pm"], ok["disp_y_err"] * sim.pixel_size_nm * 1000)


def test_strain_standard_errors_match_the_actual_errors(perovskite):
    """Each cell's exx_err ... rotation_err (its corners' errors carried through exactly) says
    how far its strain is from the same cell's strain on the true positions."""
    sim = perovskite
    fit = fit_gaussians(sim.image, sim.atoms[["y", "x"]].to_numpy(), isotropic=True)
    refined = sim.atoms[["class"]].loc[fit.index].join(fit)
    measured = analyze_lattice(sim.image, refined[refined["fit_ok"]], bsites=False)
    exact = analyze_lattice(None, sim.atoms, bsites=False, reference=measured.reference)
    m, e = measured.cells, exact.cells
    d, i = cKDTree(e[["y", "x"]].to_numpy()).query(m[["y", "x"]].to_numpy())
    same = (d < 1.0) & (m["status"] == "ok").to_numpy()
    assert same.sum() > 300
    for c in ("exx", "eyy", "exy", "rotation"):
        err = m[c].to_numpy()[same] - e[c].to_numpy()[i[same]]
        z = err / m[f"{c}_err"].to_numpy()[same]
        assert 0.85 < np.std(z) < 1.2, (c, np.std(z))
    assert exact.cells["exx_err"].isna().all()  # truth positions carry no errors


def _truth_at_cells(sim, cells, key):
    a_sites = sim.atoms[sim.atoms["class"] == 0]
    _, j = cKDTree(a_sites[["y", "x"]].to_numpy()).query(cells[["y", "x"]].to_numpy())
    return a_sites[key].to_numpy()[j]


def test_strain_against_a_drawn_region(perovskite):
    """Strain is relative to the cells inside the region: zero there, shifted elsewhere."""
    sim = perovskite
    bump = next(b for b in sim.extras["strain_field"] if b["kind"] == "expansion")
    cy, cx = bump["centre"]
    on_bump = [[cy - 30, cx - 30], [cy - 30, cx + 30], [cy + 30, cx + 30], [cy + 30, cx - 30]]
    lat = analyze_lattice(None, sim.atoms, bsites=False, reference_region=[on_bump])
    cells = lat.cells
    inside = (abs(cells["centre_y"] - cy) < 30) & (abs(cells["centre_x"] - cx) < 30)
    assert cells["reference_cell"].tolist() == (inside & (cells["status"] == "ok")).tolist()
    assert lat.info["reference_cells"] == int(cells["reference_cell"].sum()) >= 4
    assert abs(cells.loc[cells["reference_cell"], "exx"].median()) < 2e-4
    # the reference cells are expanded by the bump; far from it the lattice reads compressed
    e_ref = float(np.median(_truth_at_cells(sim, cells[cells["reference_cell"]], "exx")))
    assert e_ref > 0.006
    far = np.hypot(cells["centre_y"] - cy, cells["centre_x"] - cx) > 3 * bump["length"]
    assert far.sum() > 20
    measured = cells.loc[far, "exx"].to_numpy()
    expected = (1 + _truth_at_cells(sim, cells[far], "exx")) / (1 + e_ref) - 1
    assert np.sqrt(np.mean((measured - expected) ** 2)) < 1.5e-3
    # the same region as a boolean mask over the cells gives the same strain
    masked = analyze_lattice(None, sim.atoms, bsites=False, reference=inside.to_numpy())
    np.testing.assert_allclose(masked.cells["exx"], cells["exx"])


def test_strain_reference_region_errors(perovskite):
    sim = perovskite
    nowhere = [[-90, -90], [-90, -50], [-50, -50], [-50, -90]]
    with pytest.raises(ValueError, match="contains no complete cell"):
        analyze_lattice(None, sim.atoms, bsites=False, reference_region=[nowhere])
    with pytest.raises(ValueError, match="at least 3 vertices"):
        analyze_lattice(None, sim.atoms, bsites=False, reference_region=[[[0, 0], [10, 10]]])
    with pytest.raises(ValueError, match="not two"):
        analyze_lattice(
            None, sim.atoms, bsites=False, reference=np.eye(2), reference_region=[nowhere]
        )
    with pytest.raises(ValueError, match="one value per cell"):
        analyze_lattice(None, sim.atoms, bsites=False, reference=np.ones(3, bool))


def test_given_basis_overrides_the_found_one(perovskite):
    sim = perovskite
    auto = analyze_lattice(None, sim.atoms, bsites=False)
    a, b = auto.a, auto.b
    # the same lattice given in another order and sign: the same cells
    same = analyze_lattice(None, sim.atoms, bsites=False, basis=(-b, a + 0.3))
    assert len(same.cells) == len(auto.cells)
    np.testing.assert_allclose(same.cells[["y", "x"]], auto.cells[["y", "x"]])
    # a cell of the diagonal (a + b) and b: the cells are those of that basis
    diagonal = analyze_lattice(None, sim.atoms, bsites=False, basis=(a + b, b))
    edge = np.hypot(diagonal.cells["a_y"], diagonal.cells["a_x"]).median()
    assert edge == pytest.approx(np.hypot(*(a + b)), rel=0.02)
    for bad, match in (
        ((a, 2 * a), "from parallel"),
        ((a, [0.5, 0.5]), "at least 2 px"),
        ((a, [np.nan, 1.0]), "finite"),
        ((a,), "two"),
    ):
        with pytest.raises(ValueError, match=match):
            analyze_lattice(None, sim.atoms, bsites=False, basis=bad)
