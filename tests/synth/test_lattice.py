"""lattice_image and random_lattice_params: geometry, contrast, regions, noise."""

import numpy as np
import pytest
from scipy.spatial import cKDTree

from napari_atomnet.synth import dumbbell_image, lattice_image, render_gaussians
from napari_atomnet.synth.lattice import LATTICE_TYPES, random_lattice_params


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


# lattice constant |a| and |b| / |a|, angle(a, b) as a function of the nearest-neighbour spacing
GEOMETRY = {
    "square": (1.0, 1.0, 90.0),
    "hexagonal": (1.0, 1.0, 60.0),
    "honeycomb": (np.sqrt(3.0), 1.0, 60.0),
    "perovskite": (np.sqrt(2.0), 1.0, 90.0),
    "rocksalt": (np.sqrt(2.0), 1.0, 90.0),
}


def expected_vectors(lattice, spacing, rotation_deg, aspect=1.0):
    if lattice == "rectangular":
        alen, ratio, gamma = spacing / min(1.0, aspect), aspect, 90.0
    else:
        f, ratio, gamma = GEOMETRY[lattice]
        alen = f * spacing
    phi, g = np.deg2rad(rotation_deg), np.deg2rad(gamma)
    a = alen * np.array([np.sin(phi), np.cos(phi)])
    b = alen * ratio * np.array([np.sin(phi + g), np.cos(phi + g)])
    return a, b


def test_reproducible_and_seed_dependent():
    kw = dict(
        lattice="honeycomb",
        spacing=9.0,
        vacancy_fraction=0.05,
        position_jitter=0.02,
        amplitude_spread=0.1,
        mtf=(0.05, 0.5, 2.5),
        interface={"lattice": "square", "normal_deg": 30.0},
        surface={"kind": "wavy", "point_frac": (0.8, 0.5), "normal_deg": 90.0},
    )
    s1 = lattice_image((96, 112), seed=3, **kw)
    s2 = lattice_image((96, 112), seed=3, **kw)
    s3 = lattice_image((96, 112), seed=4, **kw)
    np.testing.assert_array_equal(s1.image, s2.image)
    assert s1.atoms.equals(s2.atoms)
    assert not np.array_equal(s1.image, s3.image)
    assert s1.image.dtype == np.float32 and s1.image.shape == (96, 112)


@pytest.mark.parametrize(
    ("lattice", "spacing", "rotation", "aspect"),
    [
        ("square", 10.0, 33.0, 1.0),
        ("hexagonal", 9.0, 10.0, 1.0),
        ("honeycomb", 7.0, 0.0, 1.0),
        ("perovskite", 8.0, 45.0, 1.0),
        ("rectangular", 9.0, -5.0, 1.6),
    ],
)
def test_fft_spacing_and_orientation(lattice, spacing, rotation, aspect):
    sim = lattice_image(
        (256, 256),
        lattice=lattice,
        spacing=spacing,
        rotation_deg=rotation,
        aspect=aspect,
        sigma_frac=0.15,
        dose=100.0,
        seed=1,
    )
    a, b = expected_vectors(lattice, spacing, rotation, aspect)
    for g0 in np.linalg.inv(np.column_stack([a, b])):
        g = reciprocal_peak(sim.image, g0)
        assert np.hypot(*g) == pytest.approx(np.hypot(*g0), rel=0.01)
        ang = np.degrees(np.arctan2(g[0], g[1]) - np.arctan2(g0[0], g0[1]))
        assert abs((ang + 180) % 360 - 180) < 0.5


@pytest.mark.parametrize("lattice", LATTICE_TYPES)
def test_nearest_neighbour_distance_is_the_spacing(lattice):
    sim = lattice_image(
        (128, 128),
        lattice=lattice,
        spacing=11.0,
        aspect=1.3,
        angle_deg=75.0,
        rotation_deg=17.0,
        seed=2,
    )
    pts = sim.atoms[["y", "x"]].to_numpy()
    nn = cKDTree(pts).query(pts, k=2)[0][:, 1]
    assert nn.min() == pytest.approx(11.0, rel=1e-9)
    assert np.median(nn) == pytest.approx(11.0, rel=1e-9)


def test_clean_image_is_exactly_the_truth_table_and_dose():
    sim = lattice_image(
        (128, 128),
        lattice="perovskite",
        spacing=12.0,
        sigma_frac=0.2,
        dose=300.0,
        background=0.1,
        rotation_deg=8.0,
        seed=5,
    )
    a = sim.atoms
    assert set(a["class_name"]) == {"A", "B"}
    np.testing.assert_allclose(a.loc[a["class"] == 0, "amplitude"], 300.0)
    np.testing.assert_allclose(a.loc[a["class"] == 1, "amplitude"], 0.35 * 300.0)
    np.testing.assert_allclose(a["sigma"], 0.2 * 12.0)
    model = 0.1 * 300.0 + render_gaussians((128, 128), a.y, a.x, a.amplitude, a.sigma)
    inner = (slice(13, -13),) * 2
    np.testing.assert_allclose(sim.extras["clean"][inner], model[inner], atol=1e-3)


def test_dark_polarity_gives_dark_atoms():
    kw = dict(lattice="hexagonal", spacing=12.0, sigma_frac=0.2, dose=200.0, background=0.2, seed=6)
    bright = lattice_image((128, 128), polarity="bright", **kw)
    dark = lattice_image((128, 128), polarity="dark", **kw)
    cb, cd = bright.extras["clean"].astype(float), dark.extras["clean"].astype(float)
    # dark = background + level - atoms, bright = background + atoms
    total = cb + cd
    assert total.std() < 1e-3
    a = dark.atoms
    assert (a["amplitude"] < 0).all()
    iy, ix = np.round(a.y).astype(int), np.round(a.x).astype(int)
    at_atoms = cd[iy.clip(0, 127), ix.clip(0, 127)]
    assert at_atoms.max() < np.median(cd)
    # every atom is a local minimum: darker than the ring half a spacing away
    for y, x, v in zip(iy, ix, at_atoms, strict=True):
        if 8 <= y < 120 and 8 <= x < 120:
            ring = [cd[y + dy, x + dx] for dy, dx in ((6, 0), (-6, 0), (0, 6), (0, -6))]
            assert v < min(ring)
    # the darkest pixels sit at the background level
    assert cd.min() == pytest.approx(0.2 * 200.0, rel=0.02)
    assert dark.image[iy.clip(0, 127), ix.clip(0, 127)].mean() < dark.image.mean()


def test_interface_splits_two_lattices():
    iface = {
        "lattice": "hexagonal",
        "spacing": 14.0,
        "rotation_deg": 20.0,
        "point_frac": (0.5, 0.4),
        "normal_deg": 30.0,
    }
    sim = lattice_image((160, 160), lattice="square", spacing=10.0, interface=iface, seed=7)
    a = sim.atoms
    p = np.array([0.5 * 159, 0.4 * 159])
    t = np.deg2rad(30.0)
    side = (a.y - p[0]) * np.sin(t) + (a.x - p[1]) * np.cos(t)
    d0, d1 = a[a.domain == 0], a[a.domain == 1]
    assert len(d0) > 50 and len(d1) > 50
    assert (side[a.domain == 0] < 0).all() and (side[a.domain == 1] >= 0).all()
    assert set(d0["class_name"]) == {"atom"} and set(d1["class_name"]) == {"atom_2"}
    assert set(d0["class"]) == {0} and set(d1["class"]) == {1}
    for dom, spacing in ((d0, 10.0), (d1, 14.0)):
        pts = dom[["y", "x"]].to_numpy()
        nn = cKDTree(pts).query(pts, k=2)[0][:, 1]
        assert np.median(nn) == pytest.approx(spacing, rel=1e-9)
    # columns across the interface keep apart
    dist, _ = cKDTree(d0[["y", "x"]].to_numpy()).query(d1[["y", "x"]].to_numpy())
    assert dist.min() >= 0.6 * 10.0


@pytest.mark.parametrize(
    "surface",
    [
        {"kind": "line", "point_frac": (0.5, 0.5), "normal_deg": 200.0},
        {"kind": "wavy", "point_frac": (0.4, 0.5), "normal_deg": -90.0, "amplitude_px": 12.0},
        {"kind": "circle", "center_frac": (0.5, 0.5), "radius_frac": 0.3},
        {"kind": "circle", "center_frac": (0.4, 0.6), "radius_frac": 0.2, "vacuum_inside": True},
    ],
)
def test_surface_leaves_vacuum_without_atoms(surface):
    h = w = 160
    sim = lattice_image(
        (h, w),
        lattice="hexagonal",
        spacing=8.0,
        surface=surface,
        background=0.3,
        dose=100.0,
        seed=8,
    )
    a = sim.atoms
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    if surface["kind"] == "circle":
        c = np.array(surface["center_frac"]) * (h - 1)
        r = surface["radius_frac"] * h
        sign = -1 if surface.get("vacuum_inside") else 1
        f_atoms = sign * (np.hypot(a.y - c[0], a.x - c[1]) - r)
        f_img = sign * (np.hypot(yy - c[0], xx - c[1]) - r)
    else:
        spec = sim.extras["surface"]
        t = np.deg2rad(spec["normal_deg"])
        p = np.array(spec["point_frac"]) * (h - 1)

        def f(y, x):
            d = (y - p[0]) * np.sin(t) + (x - p[1]) * np.cos(t)
            along = -(y - p[0]) * np.cos(t) + (x - p[1]) * np.sin(t)
            wave = spec["amplitude_px"] * np.sin(
                2 * np.pi * along / spec["wavelength_px"] + spec["phase"]
            )
            return d - wave

        f_atoms, f_img = f(a.y, a.x), f(yy, xx)
    assert (f_atoms <= 0).all()
    # the crystal side is fully populated: hexagonal density 2 / (sqrt(3) s^2)
    crystal_area = (f_img < -8.0).sum()
    n_deep = (f_atoms < -8.0).sum()
    assert n_deep == pytest.approx(crystal_area * 2 / (np.sqrt(3) * 64.0), rel=0.08)
    # vacuum far from the crystal is at the vacuum background level
    vac = sim.extras["clean"][f_img > 12.0]
    assert vac.size > 100
    np.testing.assert_allclose(vac, 0.3 * 0.3 * 100.0, rtol=0.02)


def test_vacancies_statistics():
    sim = lattice_image(
        (192, 192),
        lattice="square",
        spacing=8.0,
        vacancy_fraction=0.15,
        dose=100.0,
        background=0.0,
        sigma_frac=0.12,
        seed=9,
    )
    vac, a = sim.extras["vacancies"], sim.atoms
    n = len(vac) + len(a)
    frac = len(vac) / n
    assert frac == pytest.approx(0.15, abs=4 * np.sqrt(0.15 * 0.85 / n))
    clean = sim.extras["clean"]
    iy, ix = np.round(vac.y).astype(int).clip(0, 191), np.round(vac.x).astype(int).clip(0, 191)
    assert clean[iy, ix].max() < 0.05 * 100.0
    d, _ = cKDTree(a[["y", "x"]].to_numpy()).query(vac[["y", "x"]].to_numpy())
    assert d.min() > 7.0


def test_poisson_noise_and_mtf_keep_the_mean():
    sim = lattice_image((192, 192), spacing=9.0, dose=40.0, background=0.3, seed=10)
    clean = sim.extras["clean"].astype(float)
    resid = sim.image - clean
    assert resid.var() == pytest.approx(clean.mean(), rel=0.04)
    assert np.all(sim.image == np.round(sim.image))
    blurred = lattice_image(
        (192, 192), spacing=9.0, dose=40.0, background=0.3, seed=10, mtf=(0.02, 0.45, 2.5)
    )
    resid_b = blurred.image - blurred.extras["clean"]
    assert blurred.image.mean() == pytest.approx(sim.image.mean(), rel=1e-6)
    assert resid_b.var() < 0.7 * resid.var()  # the MTF smooths the noise


def test_random_params_span_the_space():
    rng = np.random.default_rng(0)
    ps = [random_lattice_params(rng) for _ in range(400)]
    assert {p["lattice"] for p in ps} == set(LATTICE_TYPES)
    spacing = np.array([p["spacing"] for p in ps])
    dose = np.array([p["dose"] for p in ps])
    sig = np.array([p["sigma_frac"] for p in ps])
    assert spacing.min() >= 6.0 and spacing.max() <= 40.0
    assert spacing.min() < 7.0 and spacing.max() > 35.0
    assert dose.min() >= 8.0 and dose.max() <= 5000.0
    assert dose.min() < 12.0 and dose.max() > 3000.0
    assert sig.max() > 0.4 and sig.min() < 0.1
    pol = [p["polarity"] for p in ps]
    assert 0.2 < pol.count("dark") / len(pol) < 0.5
    assert 0.1 < np.mean([p["interface"] is not None for p in ps]) < 0.3
    assert 0.1 < np.mean([p["surface"] is not None for p in ps]) < 0.3
    assert 0.3 < np.mean([p["mtf"] is not None for p in ps]) < 0.7
    assert {p["surface"]["kind"] for p in ps if p["surface"]} == {"line", "wavy", "circle"}


def test_random_params_render():
    rng = np.random.default_rng(1)
    n_checked = 0
    for _ in range(12):
        p = random_lattice_params(rng)
        sim = lattice_image((96, 96), **p)
        assert sim.image.shape == (96, 96) and np.isfinite(sim.image).all()
        assert sim.image.min() >= -1e-3 * max(p["dose"], 1.0) * 10
        a = sim.atoms
        names = sim.params["class_names"]
        assert all(names[c] == n for c, n in zip(a["class"], a["class_name"], strict=True))
        primary = a[a.domain == 0][["y", "x"]].to_numpy()
        if len(primary) > 10 and p["position_jitter"] < 0.02:
            nn = cKDTree(primary).query(primary, k=2)[0][:, 1]
            assert np.median(nn) == pytest.approx(p["spacing"], rel=0.15)
            n_checked += 1
    assert n_checked >= 2


def test_dumbbells_are_pairs_at_the_given_separation():
    sim = dumbbell_image((160, 160), separation=8.0, seed=2)
    pos = sim.atoms[["y", "x"]].to_numpy()
    dist, idx = cKDTree(pos).query(pos, k=2)
    np.testing.assert_allclose(dist[:, 1][dist[:, 1] < 9.0], 8.0, atol=1e-6)
    names = sim.atoms["class_name"].to_numpy()
    paired = dist[:, 1] < 9.0
    assert paired.mean() > 0.8  # all but columns whose partner lies outside the image
    assert (names[paired] != names[idx[paired, 1]]).all()  # a Ga next to an As
    assert sim.atoms["sigma"].iloc[0] == 4.0
