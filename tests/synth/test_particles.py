import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from napari_atomnet.synth import ParticleImage
from napari_atomnet.synth.particles import core_shell_particles, haadf_particles

ROUND = dict(ellipticity=0.0, roughness=0.0)


def _adjacent_pairs(labels):
    """Set of label pairs that share a 4-connected pixel edge."""
    pairs = set()
    for a, b in ((labels[1:], labels[:-1]), (labels[:, 1:], labels[:, :-1])):
        m = (a != b) & (a > 0) & (b > 0)
        pairs |= {tuple(sorted(p)) for p in zip(a[m].tolist(), b[m].tolist(), strict=True)}
    return pairs


def _disc(shape, y, x, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - y) ** 2 + (xx - x) ** 2 < r**2


# ------------------------------------------------------------------------------------------
# structure and reproducibility
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sim", [core_shell_particles, haadf_particles])
def test_reproducible_and_well_formed(sim):
    a = sim((160, 200), n_particles=12, seed=5)
    b = sim((160, 200), n_particles=12, seed=5)
    c = sim((160, 200), n_particles=12, seed=6)
    assert isinstance(a, ParticleImage)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    pd.testing.assert_frame_equal(a.particles, b.particles)
    assert not np.array_equal(a.image, c.image)
    assert a.image.dtype == np.float32 and a.image.shape == (160, 200)
    assert a.labels.dtype == np.int32 and a.labels.shape == (160, 200)
    n = len(a.particles)
    assert n == a.params["n_particles_placed"] == 12
    assert a.particles["label"].tolist() == list(range(1, n + 1))
    assert set(np.unique(a.labels)) == set(range(n + 1))
    assert a.params["seed"] == 5 and a.params["shape"] == [160, 200]
    assert a.extras["clean"].shape == a.image.shape
    # every label is one connected piece, and its area is its pixel count
    for lab in range(1, n + 1):
        _, ncomp = ndimage.label(a.labels == lab)
        assert ncomp == 1
    np.testing.assert_array_equal(
        a.particles["area_px"], np.bincount(a.labels.ravel(), minlength=n + 1)[1:]
    )
    d = a.particles
    np.testing.assert_allclose(d["equivalent_diameter_px"], 2 * np.sqrt(d["area_px"] / np.pi))
    px_nm = 0.5 if sim is core_shell_particles else 0.2
    np.testing.assert_allclose(d["equivalent_diameter_nm"], d["equivalent_diameter_px"] * px_nm)


def test_default_count_and_calibration():
    sim = core_shell_particles((256, 256), seed=0, pixel_size_nm=None)
    # coverage 0.25 of 256^2 with outer radii uniform in [8, 30]
    assert 8 <= len(sim.particles) <= 14
    assert "equivalent_diameter_nm" not in sim.particles
    assert sim.pixel_size_nm is None


# ------------------------------------------------------------------------------------------
# geometry of the mask
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["core", "particle"])
def test_round_masks_are_exact_discs(target):
    shape = (256, 256)
    sim = core_shell_particles(
        shape, n_particles=14, touching_fraction=0.0, target=target, seed=3, **ROUND
    )
    d = sim.particles
    assert (d["n_touching"] == 0).all()
    for row in d.itertuples():
        if target == "core":
            y, x, r = row.core_y, row.core_x, row.core_radius_px
            assert (row.y, row.x) == (row.core_y, row.core_x)
        else:
            y, x, r = row.shell_y, row.shell_x, row.radius_px
        assert row.mask_radius_px == r
        np.testing.assert_array_equal(sim.labels == row.label, _disc(shape, y, x, r))
        if not row.touches_border:
            assert row.area_px == pytest.approx(np.pi * r**2, rel=0.04)
            assert row.equivalent_diameter_px == pytest.approx(2 * r, rel=0.02)
    # cores lie inside their shells, with the requested shell fractions
    frac = 1 - d["core_radius_px"] / d["radius_px"]
    assert frac.between(0.15, 0.4).all()
    assert d["radius_px"].between(8, 30).all()
    inside = sim.extras["particle_labels"][sim.extras["core_labels"] > 0]
    assert np.all(inside > 0)


def test_elliptical_rough_areas_keep_radius():
    sim = core_shell_particles(
        (300, 300),
        n_particles=16,
        touching_fraction=0.0,
        ellipticity=0.3,
        roughness=0.03,
        seed=8,
    )
    d = sim.particles[~sim.particles["touches_border"]]
    assert len(d) >= 8
    assert (d["axis_ratio"] < 1).all() and (d["axis_ratio"] >= 0.7).all()
    np.testing.assert_allclose(d["area_px"], np.pi * d["mask_radius_px"] ** 2, rtol=0.06)


def test_haadf_round_masks():
    shape = (200, 200)
    sim = haadf_particles(shape, n_particles=15, touching_fraction=0.0, seed=4, **ROUND)
    assert (sim.particles["core_radius_px"] == 0).all()
    for row in sim.particles.itertuples():
        np.testing.assert_array_equal(
            sim.labels == row.label, _disc(shape, row.y, row.x, row.radius_px)
        )


# ------------------------------------------------------------------------------------------
# touching particles
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sim", "kw"),
    [
        (core_shell_particles, {"target": "core"}),
        (core_shell_particles, {"target": "particle"}),
        (haadf_particles, {}),
    ],
)
def test_touching_pairs_split_and_adjacent(sim, kw):
    out = sim((256, 256), n_particles=16, touching_fraction=0.7, seed=2, **kw)
    pairs = {tuple(sorted(p)) for p in out.extras["touching_pairs"].tolist()}
    assert len(pairs) >= 4
    assert all(a != b for a, b in pairs)
    # touching pairs are exactly the labels that share an edge in the mask
    assert _adjacent_pairs(out.labels) == pairs
    d = out.particles.set_index("label")
    for a, b in pairs:
        assert b in d.loc[a, "touching"] and a in d.loc[b, "touching"]
    assert d["n_touching"].sum() == 2 * len(pairs)


def test_touching_split_follows_the_thicker_object():
    shape = (256, 256)
    sim = core_shell_particles(
        shape, n_particles=16, touching_fraction=0.8, target="core", seed=9, **ROUND
    )
    d = sim.particles.set_index("label")
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    checked = 0
    for a, b in sim.extras["touching_pairs"].tolist():
        va = d.loc[a, "core_radius_px"] ** 2 - (yy - d.loc[a, "y"]) ** 2 - (xx - d.loc[a, "x"]) ** 2
        vb = d.loc[b, "core_radius_px"] ** 2 - (yy - d.loc[b, "y"]) ** 2 - (xx - d.loc[b, "x"]) ** 2
        shared = (va > 0) & (vb > 0)
        assert shared.sum() >= 1
        np.testing.assert_array_equal(sim.labels[shared & (va > vb)], a)
        np.testing.assert_array_equal(sim.labels[shared & (vb > va)], b)
        # the split area of each is its disc minus what the other one took
        checked += 1
    assert checked >= 3
    # touching cores share one silica envelope: their particle labels are adjacent too
    assert {tuple(sorted(p)) for p in sim.extras["touching_pairs"].tolist()} <= _adjacent_pairs(
        sim.extras["particle_labels"]
    )


def test_no_touching_means_no_contacts():
    sim = core_shell_particles((256, 256), n_particles=14, touching_fraction=0.0, seed=1)
    assert sim.extras["touching_pairs"].shape == (0, 2)
    assert _adjacent_pairs(sim.labels) == set()
    assert _adjacent_pairs(sim.extras["particle_labels"]) == set()


# ------------------------------------------------------------------------------------------
# border flag
# ------------------------------------------------------------------------------------------


def test_touches_border_flag():
    shape = (120, 150)
    h, w = shape
    flags = []
    for seed in range(3):
        sim = haadf_particles(
            shape,
            n_particles=10,
            touching_fraction=0.0,
            radius_range=(6, 15),
            seed=seed,
            **ROUND,
        )
        for row in sim.particles.itertuples():
            cy = np.clip(np.round(row.y), 0, h - 1)
            cx = np.clip(np.round(row.x), 0, w - 1)
            r2 = row.radius_px**2
            # is a pixel centre of the first/last row/column inside the disc?
            expect = (
                (row.y**2 + (cx - row.x) ** 2 < r2)
                or ((h - 1 - row.y) ** 2 + (cx - row.x) ** 2 < r2)
                or (row.x**2 + (cy - row.y) ** 2 < r2)
                or ((w - 1 - row.x) ** 2 + (cy - row.y) ** 2 < r2)
            )
            assert row.touches_border == expect
            flags.append(expect)
    assert any(flags) and not all(flags)


# ------------------------------------------------------------------------------------------
# contrast and noise
# ------------------------------------------------------------------------------------------


def test_core_shell_contrast_order():
    sim = core_shell_particles((256, 256), n_particles=14, seed=4)
    core = sim.extras["core_labels"] > 0
    shell = (sim.extras["particle_labels"] > 0) & ~core
    bg = ~ndimage.binary_dilation(sim.extras["particle_labels"] > 0, iterations=3)
    for img in (sim.extras["clean"], sim.image):
        assert img[core].mean() < img[shell].mean() < img[bg].mean()
    # per particle: the core is darker than the background everywhere
    clean = sim.extras["clean"]
    means = ndimage.mean(clean, sim.extras["core_labels"], index=sim.particles["label"])
    assert np.all(np.asarray(means) < clean[bg].min())


def test_haadf_particles_brighter_than_support():
    sim = haadf_particles((256, 256), n_particles=20, seed=4)
    clean = sim.extras["clean"]
    bg = ~ndimage.binary_dilation(sim.labels > 0, iterations=3)
    means = np.asarray(ndimage.mean(clean, sim.labels, index=sim.particles["label"]))
    assert np.all(means > clean[bg].mean())
    assert sim.image[sim.labels > 0].mean() > 2 * sim.image[bg].mean()
    # intensity follows thickness: the larger half of the particles is brighter on average
    big = sim.particles["radius_px"] > sim.particles["radius_px"].median()
    assert means[big.to_numpy()].mean() > means[~big.to_numpy()].mean()


@pytest.mark.parametrize("sim", [core_shell_particles, haadf_particles])
def test_noise_follows_dose(sim):
    rel = []
    for dose in (20.0, 500.0):
        out = sim((192, 192), n_particles=8, dose=dose, seed=7)
        clean = out.extras["clean"].astype(np.float64)
        resid = out.image - clean
        # Poisson: variance equals the mean, in every intensity range
        z = resid / np.sqrt(clean)
        assert z.var() == pytest.approx(1.0, abs=0.04)
        assert abs(z.mean()) < 0.02
        rel.append(np.std(resid / clean))
        # the clean image scales with the dose
        ref = sim((192, 192), n_particles=8, dose=None, seed=7)
        np.testing.assert_allclose(clean, ref.extras["clean"] * dose, rtol=1e-5)
    assert rel[0] / rel[1] == pytest.approx(np.sqrt(500.0 / 20.0), rel=0.05)


def test_no_noise_and_read_noise():
    ref = core_shell_particles((128, 128), n_particles=5, dose=None, seed=3)
    np.testing.assert_array_equal(ref.image, ref.extras["clean"])
    assert ref.image.max() <= 1.2  # transmission units
    rn = core_shell_particles((128, 128), n_particles=5, dose=None, read_noise=0.05, seed=3)
    assert np.std(rn.image - rn.extras["clean"]) == pytest.approx(0.05, rel=0.05)
    both = core_shell_particles((128, 128), n_particles=5, dose=100.0, read_noise=3.0, seed=3)
    clean = both.extras["clean"].astype(np.float64)
    assert np.var(both.image - clean) == pytest.approx(clean.mean() + 9.0, rel=0.06)


def test_bad_arguments():
    with pytest.raises(ValueError):
        core_shell_particles((64, 64), target="shell")
    with pytest.raises(ValueError):
        core_shell_particles((64, 64), radius_range=(10, 5))
    with pytest.raises(ValueError):
        haadf_particles((64, 64), dose=0.0)
