"""perovskite_haadf: statistics of the image against its exact ground truth."""

import numpy as np
import pytest
from scipy.ndimage import shift as nd_shift
from scipy.spatial import cKDTree

from napari_atomnet.synth import perovskite_haadf, render_gaussians


# ---------------------------------------------------------------------------- helpers
def reciprocal_peak(img, g0, rel=0.08, n=33, rounds=3):
    """Position (cycles/px, (ky, kx)) of the Fourier peak nearest to ``g0``, refined finely."""
    img = np.asarray(img, float)
    h, w = img.shape
    f = (img - img.mean()) * np.hanning(h)[:, None] * np.hanning(w)[None, :]
    yy, xx = np.arange(h), np.arange(w)
    centre = np.asarray(g0, float)
    half = rel * np.hypot(*centre)
    for _ in range(rounds):
        ky = centre[0] + np.linspace(-half, half, n)
        kx = centre[1] + np.linspace(-half, half, n)
        ey = np.exp(-2j * np.pi * ky[:, None] * yy[None, :])
        ex = np.exp(-2j * np.pi * xx[:, None] * kx[None, :])
        amp = np.abs(ey @ f @ ex)
        iy, ix = np.unravel_index(np.argmax(amp), amp.shape)
        assert 0 < iy < n - 1 and 0 < ix < n - 1, "peak at the edge of the search window"
        centre = np.array([ky[iy], kx[ix]])
        half = 4 * half / (n - 1)
    return centre


def centroid(img, y, x, radius):
    """Intensity centroid in a disc of ``radius`` px around the pixel nearest (y, x)."""
    cy, cx = round(y), round(x)
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[cy - r : cy + r + 1, cx - r : cx + r + 1]
    w = img[yy, xx] * (((yy - cy) ** 2 + (xx - cx) ** 2) <= radius**2)
    return (w * yy).sum() / w.sum(), (w * xx).sum() / w.sum()


def lattice_vectors(spacing, rotation_deg):
    phi = np.deg2rad(rotation_deg)
    a = spacing * np.array([np.sin(phi), np.cos(phi)])
    b = spacing * np.array([np.cos(phi), -np.sin(phi)])
    return a, b


# ---------------------------------------------------------------------------- tests
def test_reproducible_and_seed_dependent():
    kw = dict(strain=0.01, vacancy_fraction=0.05, dislocation=True, scan_jitter=0.3)
    s1 = perovskite_haadf((128, 160), 20.0, seed=7, **kw)
    s2 = perovskite_haadf((128, 160), 20.0, seed=7, **kw)
    s3 = perovskite_haadf((128, 160), 20.0, seed=8, **kw)
    assert s1.image.dtype == np.float32 and s1.image.shape == (128, 160)
    np.testing.assert_array_equal(s1.image, s2.image)
    assert s1.atoms.equals(s2.atoms)
    assert not np.array_equal(s1.image, s3.image)
    assert s1.params["seed"] == 7


def test_table_columns_classes_and_inside():
    sim = perovskite_haadf((200, 150), 24.0, dose=300.0, b_ratio=0.4, seed=1)
    a = sim.atoms
    cols = ["y", "x", "class", "class_name", "amplitude", "sigma"]
    cols += ["disp_y", "disp_x", "exx", "eyy", "exy", "rotation"]
    assert set(cols) <= set(a.columns)
    assert set(a["class"]) == {0, 1}
    assert (a["class_name"] == np.where(a["class"] == 0, "A", "B")).all()
    np.testing.assert_allclose(a["amplitude"], np.where(a["class"] == 0, 300.0, 120.0))
    assert a["sigma"].iloc[0] == pytest.approx(0.12 * 24.0)
    assert ((a.y >= -0.5) & (a.y < 199.5) & (a.x >= -0.5) & (a.x < 149.5)).all()
    # about one A and one B per cell
    n_cells = 200 * 150 / 24.0**2
    assert (a["class"] == 0).sum() == pytest.approx(n_cells, rel=0.1)
    assert (a["class"] == 1).sum() == pytest.approx(n_cells, rel=0.1)
    assert (a.loc[a["class"] == 0, ["disp_y", "disp_x"]] == 0).all().all()
    assert (a[["exx", "eyy", "exy", "rotation"]] == 0).all().all()  # no strain requested


@pytest.mark.parametrize("rotation", [0.0, 27.0])
def test_fft_lattice_spacing(rotation):
    spacing = 21.3
    sim = perovskite_haadf((512, 512), spacing, rotation_deg=rotation, dose=50.0, seed=2)
    a, b = lattice_vectors(spacing, rotation)
    recip = np.linalg.inv(np.column_stack([a, b]))  # rows: reciprocal vectors (ky, kx)
    for g0 in recip:
        g = reciprocal_peak(sim.image, g0)
        assert 1.0 / np.hypot(*g) == pytest.approx(spacing, rel=0.01)
        ang = np.degrees(np.arctan2(g[0], g[1]) - np.arctan2(g0[0], g0[1]))
        assert abs((ang + 180) % 360 - 180) < 0.5


def test_poisson_noise_follows_the_dose():
    for dose in (20.0, 500.0):
        sim = perovskite_haadf((256, 256), 24.0, dose=dose, background=0.1, seed=3)
        clean = sim.extras["clean"].astype(float)
        resid = sim.image - clean
        assert np.all(sim.image == np.round(sim.image))
        assert abs(resid.mean()) < 4 * np.sqrt(clean.mean() / clean.size)
        assert resid.var() == pytest.approx(clean.mean(), rel=0.03)
        # normalised residuals have unit variance everywhere (var = mean pixel by pixel)
        z = resid / np.sqrt(clean)
        assert z.var() == pytest.approx(1.0, rel=0.03)
        # flat region between peaks is at the background level
        assert clean.min() == pytest.approx(0.1 * dose, rel=0.02)


def test_clean_image_is_exactly_the_truth_table():
    sim = perovskite_haadf(
        (160, 160),
        24.0,
        dose=100.0,
        background=0.2,
        strain=0.02,
        rotation_deg=11.0,
        vacancy_fraction=0.05,
        seed=4,
    )
    a = sim.atoms
    model = 0.2 * 100.0 + render_gaussians((160, 160), a.y, a.x, a.amplitude, a.sigma)
    border = int(6 * a.sigma.iloc[0])
    inner = (slice(border, -border),) * 2
    np.testing.assert_allclose(sim.extras["clean"][inner], model[inner], atol=1e-3)


def test_truth_positions_are_the_peak_centroids():
    sim = perovskite_haadf(
        (256, 256),
        32.0,
        sigma=2.0,
        rotation_deg=20.0,
        polarization=0.08,
        strain=0.02,
        drift=(4.0, -3.0),
        dose=100.0,
        background=0.0,
        seed=5,
    )
    clean = sim.extras["clean"].astype(float)
    a = sim.atoms
    a = a[(a.y > 12) & (a.y < 243) & (a.x > 12) & (a.x < 243)]
    errs = np.array(
        [np.subtract(centroid(clean, y, x, 10.0), (y, x)) for y, x in zip(a.y, a.x, strict=True)]
    )
    assert len(errs) > 80
    assert np.abs(errs).max() < 0.05


def test_b_displacements_seen_in_the_clean_image():
    sim = perovskite_haadf(
        (256, 256),
        32.0,
        sigma=2.2,
        rotation_deg=-8.0,
        polarization=0.07,
        strain=0.015,
        background=0.0,
        seed=6,
    )
    clean = sim.extras["clean"].astype(float)
    a = sim.atoms
    a_sites = {
        (i, j): (y, x)
        for i, j, y, x, c in zip(a.i, a.j, a.y, a.x, a["class"], strict=True)
        if c == 0
    }
    n_checked = 0
    for _, b in a[a["class"] == 1].iterrows():
        keys = [(b.i + di, b.j + dj) for di in (0, 1) for dj in (0, 1)]
        if not all(k in a_sites for k in keys):
            continue
        pts = [a_sites[k] for k in keys]
        if min(min(p) for p in pts) < 12 or max(max(p) for p in pts) > 243:
            continue
        corners = np.mean([centroid(clean, *p, 10.0) for p in pts], axis=0)
        measured = np.subtract(centroid(clean, b.y, b.x, 10.0), corners)
        np.testing.assert_allclose(measured, (b.disp_y, b.disp_x), atol=0.05)
        n_checked += 1
    assert n_checked > 30


@pytest.mark.parametrize("wall", [180, 90])
def test_polarization_domains(wall):
    spacing, pol = 24.0, 0.06
    sim = perovskite_haadf(
        (384, 384), spacing, polarization=pol, wall_angle=wall, rotation_deg=5.0, seed=9
    )
    info = sim.extras["polarization"]
    b = sim.atoms[sim.atoms["class"] == 1]
    d = (b.y - info["point"][0]) * info["normal"][0] + (b.x - info["point"][1]) * info["normal"][1]
    p0 = pol * spacing
    disp = b[["disp_y", "disp_x"]].to_numpy()
    far = 3 * info["width_px"]
    side1, side2 = disp[d < -far], disp[d > far]
    assert len(side1) > 10 and len(side2) > 10
    for vecs, p in ((side1, info["p1"]), (side2, info["p2"])):
        unit = np.asarray(p) / p0
        along = vecs @ unit
        across = vecs @ np.array([-unit[1], unit[0]])
        assert np.all(np.abs(along / p0 - 1) < 0.11)  # modulation is 10 %
        assert np.all(np.abs(across) < 0.02 * p0)
    cosang = np.dot(side1.mean(0), side2.mean(0)) / (
        np.linalg.norm(side1.mean(0)) * np.linalg.norm(side2.mean(0))
    )
    assert np.degrees(np.arccos(np.clip(cosang, -1, 1))) == pytest.approx(wall, abs=3)
    # inside the wall the magnitude (180°) or direction changes continuously
    mid = np.abs(d) < 0.3 * info["width_px"]
    if wall == 180:
        assert np.all(np.hypot(*disp[mid].T) < 0.35 * p0)


def test_strain_columns_match_finite_differences_of_positions():
    spacing, strain, rot = 16.0, 0.02, 15.0
    sim = perovskite_haadf((320, 320), spacing, rotation_deg=rot, strain=strain, seed=10)
    a = sim.atoms[sim.atoms["class"] == 0]
    pos = {(i, j): np.array([y, x]) for i, j, y, x in zip(a.i, a.j, a.y, a.x, strict=True)}
    av, bv = lattice_vectors(spacing, rot)
    inv = np.linalg.inv(np.column_stack([av, bv]))
    errs, peak = [], 0.0
    for _, row in a.iterrows():
        i, j = row.i, row.j
        nb = [(i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)]
        if not all(k in pos for k in nb):
            continue
        da = (pos[nb[0]] - pos[nb[1]]) / 2
        db = (pos[nb[2]] - pos[nb[3]]) / 2
        g = np.column_stack([da, db]) @ inv - np.eye(2)  # g[r, c] = d u_r / d x_c
        fd = [g[1, 1], g[0, 0], (g[0, 1] + g[1, 0]) / 2, (g[0, 1] - g[1, 0]) / 2]
        errs.append(np.subtract(fd, [row.exx, row.eyy, row.exy, row.rotation]))
        peak = max(peak, abs(row.exx), abs(row.eyy))
    errs = np.array(errs)
    assert len(errs) > 200
    assert np.abs(errs).max() < 0.1 * strain
    assert np.sqrt((errs**2).mean()) < 0.03 * strain
    assert 0.8 * strain < peak < 1.3 * strain
    # the field is non-trivial in every component
    for col in ("exx", "eyy", "exy", "rotation"):
        assert np.abs(a[col]).max() > 0.1 * strain


def test_vacancies():
    sim = perovskite_haadf(
        (256, 256), 24.0, vacancy_fraction=0.1, dose=200.0, background=0.1, seed=11
    )
    vac, a = sim.extras["vacancies"], sim.atoms
    clean = sim.extras["clean"]
    for c in (0, 1):
        n_vac = int((vac["class"] == c).sum())
        n_atoms = int((a["class"] == c).sum())
        assert n_vac == round(0.1 * (n_vac + n_atoms))
    assert set(vac.columns) >= {"y", "x", "class"}
    # nothing left at a vacant A site: the image there is background plus neighbour tails
    va = vac[vac["class"] == 0]
    vals = clean[np.round(va.y).astype(int).clip(0, 255), np.round(va.x).astype(int).clip(0, 255)]
    assert np.all(vals < 0.1 * 200.0 + 0.05 * 200.0)
    d, _ = cKDTree(a[["y", "x"]].to_numpy()).query(vac[["y", "x"]].to_numpy())
    assert d.min() > 10.0


def _burgers_circuit(tree, pts, start, steps, spacing):
    cur = pts[tree.query(start)[1]]
    first = cur.copy()
    for step in steps:
        dist, k = tree.query(cur + step)
        assert dist < 0.35 * spacing
        cur = pts[k]
    return cur - first


def test_edge_dislocation_burgers_circuit():
    spacing = 24.0
    sim = perovskite_haadf((384, 384), spacing, dislocation=True, polarization=0.0, seed=12)
    info = sim.extras["dislocation"]
    assert abs(info["y"] - 191.5) < 2 * spacing and abs(info["x"] - 191.5) < 2 * spacing
    allpos = sim.atoms[["y", "x"]].to_numpy()
    assert cKDTree(allpos).query(allpos, k=2)[0][:, 1].min() > 0.3 * spacing
    a = sim.atoms[sim.atoms["class"] == 0][["y", "x"]].to_numpy()
    tree = cKDTree(a)
    av, bv = lattice_vectors(spacing, 0.0)
    n = 6
    steps = [av] * n + [bv] * n + [-av] * n + [-bv] * n
    core = np.array([info["y"], info["x"]])
    closure = _burgers_circuit(tree, a, core - (n / 2) * (av + bv), steps, spacing)
    np.testing.assert_allclose(closure, info["burgers"], atol=0.15 * spacing)
    assert np.hypot(*info["burgers"]) == pytest.approx(spacing)
    # a circuit that does not enclose the core closes
    m = 3
    steps = [av] * m + [bv] * m + [-av] * m + [-bv] * m
    closure = _burgers_circuit(
        tree, a, core + np.array([-1.5 * spacing, -6.5 * spacing]), steps, spacing
    )
    assert np.hypot(*closure) < 0.15 * spacing


def test_scan_jitter_shifts_rows_and_truth_excludes_it():
    kw = dict(dose=100.0, background_gradient=0.2, seed=13)
    base = perovskite_haadf((128, 128), 24.0, **kw)
    jit = perovskite_haadf((128, 128), 24.0, scan_jitter=0.8, **kw)
    np.testing.assert_array_equal(
        jit.atoms[["y", "x"]].to_numpy(), base.atoms[["y", "x"]].to_numpy()
    )
    shifts = jit.extras["row_shift_x"]
    assert shifts.shape == (128,)
    assert shifts.std() == pytest.approx(0.8, rel=0.2)
    c0, c1 = base.extras["clean"].astype(float), jit.extras["clean"].astype(float)
    for r in range(0, 128, 7):
        expected = nd_shift(c0[r], shifts[r], order=3, mode="nearest")
        np.testing.assert_allclose(c1[r, 8:-8], expected[8:-8], atol=0.01 * 100.0)
    assert np.abs(c1 - c0).max() > 5.0  # the jitter is visible


def test_drift_moves_truth_positions():
    kw = dict(dose=50.0, seed=14)
    base = perovskite_haadf((256, 256), 24.0, **kw)
    drift = perovskite_haadf((256, 256), 24.0, drift=(6.0, -5.0), **kw)
    b = base.atoms.set_index(["i", "j", "class"])
    d = drift.atoms.set_index(["i", "j", "class"])
    common = b.index.intersection(d.index)
    assert len(common) > 100
    y0, x0 = b.loc[common, "y"].to_numpy(), b.loc[common, "x"].to_numpy()
    y1 = y0 / (1 - 6.0 / 512)
    np.testing.assert_allclose(d.loc[common, "y"], y1, atol=1e-9)
    np.testing.assert_allclose(d.loc[common, "x"], x0 - 5.0 * y1 / 512, atol=1e-9)
