"""Graphene-like HRTEM (seed 003): structure, CTF, contrast, MTF and dose."""

import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt, map_coordinates
from scipy.spatial import cKDTree

from napari_atomnet.synth import ctf, graphene_hrtem, graphene_structure, mtf
from napari_atomnet.synth.hrtem import _table1, electron_wavelength


def test_wavelength_80kv():
    assert electron_wavelength(80.0) == pytest.approx(0.041757, rel=1e-4)
    assert electron_wavelength(300.0) == pytest.approx(0.019687, rel=1e-4)


def test_ctf_formula_and_envelope():
    shape, px = (64, 80), 0.1
    lam = electron_wavelength(80.0)
    df, cs, a1, phia, spread = 60.0, -12.0, 30.0, 0.7, 25.0
    h = ctf(shape, px, df, cs, a1, phia, spread)
    assert h.shape == shape and h.dtype == np.complex128
    assert h[0, 0] == pytest.approx(1.0)
    qy = np.fft.fftfreq(64, px)[:, None]
    qx = np.fft.fftfreq(80, px)[None, :]
    q2 = qy**2 + qx**2
    phi = np.arctan2(qy, qx)
    chi = np.pi * lam * q2 * (-df + a1 * np.cos(2 * (phi - phia)))
    chi = chi + 0.5 * np.pi * cs * 1e4 * lam**3 * q2**2
    env = np.exp(-0.5 * (np.pi * lam * spread) ** 2 * q2**2)
    np.testing.assert_allclose(np.abs(h), env, rtol=1e-10, atol=1e-300)
    mask = env > 1e-6
    np.testing.assert_allclose(h[mask], (np.exp(-1j * chi) * env)[mask], rtol=1e-8, atol=1e-12)
    # without Cs and astigmatism the opposite defocus gives the complex conjugate
    hp = ctf(shape, px, 80.0, 0.0, 0.0, 0.0, 30.0)
    hm = ctf(shape, px, -80.0, 0.0, 0.0, 0.0, 30.0)
    np.testing.assert_allclose(hm, np.conj(hp), atol=1e-12)
    # astigmatism: +A along phi_A and -A perpendicular to it
    ha = ctf((128, 128), px, 0.0, 0.0, 40.0, 0.0, 0.0)
    k = 3  # q along +x (phi = 0) and along +y (phi = 90°)
    q = k / (128 * px)
    assert np.angle(ha[0, k]) == pytest.approx(-np.pi * lam * q**2 * 40.0, abs=1e-9)
    assert np.angle(ha[k, 0]) == pytest.approx(np.pi * lam * q**2 * 40.0, abs=1e-9)


def test_table1_distributions():
    rng = np.random.default_rng(0)
    draws = [_table1(rng) for _ in range(3000)]
    for key, lo, hi in [
        ("defocus", -200, 200),
        ("cs_um", -20, 20),
        ("astig_angstrom", 0, 100),
        ("astig_angle", 0, 2 * np.pi),
        ("focal_spread", 20, 40),
        ("dose", 10, 1e4),
        ("c5_mm", 0, 5),
        ("atom_sigma_angstrom", 0.3, 0.4),
    ]:
        v = np.array([d[key] for d in draws])
        assert v.min() >= lo and v.max() <= hi
        assert v.min() < lo + 0.01 * (hi - lo) and v.max() > hi - 0.01 * (hi - lo)
    logd = np.log10([d["dose"] for d in draws])
    assert np.median(logd) == pytest.approx(2.5, abs=0.1)  # log-uniform
    assert np.mean(logd < 2) == pytest.approx(1 / 3, abs=0.04)
    c = np.array([d["mtf_params"] for d in draws])
    assert c[:, 0].min() >= 0 and c[:, 0].max() <= 0.1
    assert c[:, 1].min() >= 0.4 and c[:, 1].max() <= 0.6
    assert c[:, 2].min() >= 2 and c[:, 2].max() <= 3
    assert {d["n_holes"] for d in draws} == {0, 1, 2, 3, 4}


def test_reproducible_params_recorded_and_independent_draws():
    s1 = graphene_hrtem((64, 64), seed=5)
    s2 = graphene_hrtem((64, 64), seed=5)
    s3 = graphene_hrtem((64, 64), seed=6)
    np.testing.assert_array_equal(s1.image, s2.image)
    assert s1.atoms.equals(s2.atoms)
    assert not np.array_equal(s1.image, s3.image)
    keys = {
        "defocus",
        "cs_um",
        "c5_mm",
        "astig_angstrom",
        "astig_angle",
        "focal_spread",
        "dose",
        "mtf_params",
        "n_holes",
        "atom_sigma_angstrom",
        "seed",
        "pixel_size_angstrom",
    }
    assert keys <= set(s1.params)
    # fixing one parameter leaves the other draws unchanged
    s4 = graphene_hrtem((64, 64), seed=5, defocus=-30.0)
    assert s4.params["defocus"] == -30.0
    for k in keys - {"defocus"}:
        assert s4.params[k] == s1.params[k]
    assert s1.pixel_size_nm == pytest.approx(0.012)
    assert set(s1.atoms["class"]) <= {0} and set(s1.atoms["class_name"]) <= {"C"}


def _structure_stats(pts, bond, shape):
    tree = cKDTree(pts)
    nn = tree.query(pts, k=2)[0][:, 1]
    coord = np.array([len(n) - 1 for n in tree.query_ball_point(pts, 1.3 * bond)])
    inner = (
        (pts[:, 0] > 1.5 * bond)
        & (pts[:, 0] < shape[0] - 1.5 * bond)
        & (pts[:, 1] > 1.5 * bond)
        & (pts[:, 1] < shape[1] - 1.5 * bond)
    )
    return nn, coord, inner


def test_graphene_structure_bonds_and_coordination():
    shape, bond = (200, 240), 10.0
    pts = graphene_structure(shape, bond, np.random.default_rng(3), n_holes=0)
    assert pts.shape[1] == 2
    assert ((pts >= -0.5) & (pts < np.array(shape) - 0.5)).all()
    # two atoms per hexagon of area 3 sqrt(3) / 2 bond²
    assert len(pts) == pytest.approx(np.prod(shape) * 2 / (1.5 * np.sqrt(3) * bond**2), rel=0.1)
    nn, coord, inner = _structure_stats(pts, bond, shape)
    assert np.median(nn) == pytest.approx(bond, rel=0.02)
    assert np.mean(np.abs(nn / bond - 1) < 0.1) > 0.95
    assert nn.min() > 0.8 * bond
    assert np.mean(coord[inner] == 3) > 0.95
    # same generator state, same structure
    again = graphene_structure(shape, bond, np.random.default_rng(3), n_holes=0)
    np.testing.assert_array_equal(pts, again)


def test_graphene_structure_holes():
    shape, bond = (200, 200), 10.0
    full = graphene_structure(shape, bond, np.random.default_rng(4), n_holes=0)
    holed = graphene_structure(shape, bond, np.random.default_rng(4), n_holes=3)
    # holes only remove atoms (the sheet is drawn before the holes)
    d, _ = cKDTree(full).query(holed)
    assert d.max() < 1e-9
    assert len(holed) < len(full)
    # a hole is an empty region wider than the honeycomb's own hexagons
    occupied = np.zeros(shape, bool)
    iy, ix = np.round(holed).astype(int).T
    occupied[iy, ix] = True
    assert distance_transform_edt(~occupied).max() > 1.5 * bond
    _, coord, _ = _structure_stats(holed, bond, shape)
    inner = (
        (holed[:, 0] > 1.5 * bond)
        & (holed[:, 0] < 200 - 1.5 * bond)
        & (holed[:, 1] > 1.5 * bond)
        & (holed[:, 1] < 200 - 1.5 * bond)
    )
    assert coord[inner].min() >= 2  # no dangling atoms at hole edges


def test_contrast_flips_with_defocus():
    kw = dict(
        cs_um=-10.0,
        c5_mm=0.0,
        astig_angstrom=0.0,
        focal_spread=30.0,
        dose=1e4,
        mtf_params=(1.0, 0.5, 2.0),
        n_holes=0,
    )
    signs = []
    for df in (-50.0, 50.0):
        sim = graphene_hrtem((128, 128), defocus=df, seed=1, **kw)
        clean = sim.extras["clean"].astype(float)
        at_atoms = map_coordinates(clean, [sim.atoms.y, sim.atoms.x], order=1)
        z = (at_atoms.mean() - clean.mean()) / clean.std()
        signs.append(np.sign(z))
        assert abs(z) > 0.3
        assert sim.extras["polarity"] == np.sign(z)
        assert np.sign(sim.atoms["amplitude"].median()) == np.sign(z)
    assert signs == [1.0, -1.0]


def test_dose_and_mtf_shape_the_noise():
    c1, c2, c3 = 0.05, 0.45, 2.5
    dose, px = 2000.0, 0.12
    sim = graphene_hrtem(
        (256, 256),
        pixel_size_angstrom=px,
        defocus=40.0,
        cs_um=5.0,
        dose=dose,
        mtf_params=(c1, c2, c3),
        n_holes=0,
        seed=2,
    )
    clean = sim.extras["clean"].astype(float)
    # phase object: the mean intensity is ~1, i.e. dose x pixel area counts per pixel
    assert clean.mean() / (dose * px * px) == pytest.approx(1.0, abs=0.03)
    assert sim.image.mean() == pytest.approx(clean.mean(), rel=0.01)
    # noise power spectrum = mean counts x MTF(q)²
    resid = sim.image - clean
    power = np.abs(np.fft.fft2(resid)) ** 2 / resid.size
    fy, fx = np.fft.fftfreq(256)[:, None], np.fft.fftfreq(256)[None, :]
    q = np.hypot(fy, fx) / 0.5
    for lo, hi in ((0.05, 0.15), (0.4, 0.5), (0.8, 0.9)):
        band = (q >= lo) & (q < hi)
        expected = clean.mean() * mtf(q[band], c1, c2, c3) ** 2
        assert power[band].mean() / expected.mean() == pytest.approx(1.0, rel=0.08)


def test_low_dose_is_noisier():
    kw = dict(defocus=-50.0, cs_um=-10.0, n_holes=0, mtf_params=(1.0, 0.5, 2.0), seed=3)
    lo = graphene_hrtem((96, 96), dose=20.0, **kw)
    hi = graphene_hrtem((96, 96), dose=5000.0, **kw)
    snr = []
    for sim in (lo, hi):
        clean = sim.extras["clean"].astype(float)
        snr.append(clean.std() / (sim.image - clean).std())
    assert snr[1] / snr[0] == pytest.approx(np.sqrt(5000 / 20), rel=0.15)
