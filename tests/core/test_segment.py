"""Particle segmentation post-processing and measurements against exact ground truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_atomnet import synth
from napari_atomnet.core.segment import (
    border_labels,
    label_particles,
    match_instances,
    otsu_watershed,
    particle_table,
    relabel_sequential,
    remove_small_objects,
    segmentation_scores,
    size_statistics,
    split_touching,
)


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _rim(labels, width=2.0):
    """Inner rim of every label (what the network's boundary channel learns)."""
    from scipy import ndimage

    r = int(width)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    fp = yy**2 + xx**2 <= width**2
    hi = ndimage.maximum_filter(labels, footprint=fp, mode="nearest")
    lo = ndimage.minimum_filter(labels, footprint=fp, mode="nearest")
    return (labels > 0) & ((hi != labels) | (lo != labels))


@pytest.fixture(scope="module")
def haadf():
    return synth.haadf_particles((384, 384), seed=123, touching_fraction=0.5)


@pytest.fixture(scope="module")
def core_shell():
    return synth.core_shell_particles((384, 384), seed=321, touching_fraction=0.5)


# -- measurements ---------------------------------------------------------------------------------
def test_table_of_known_discs_and_square():
    labels = np.zeros((100, 120), np.int32)
    labels[_disc(labels.shape, 30.3, 40.6, 15)] = 1  # inside
    labels[_disc(labels.shape, 70.2, 94.7, 6)] = 2  # inside
    labels[80:100, 10:30] = 5  # a 20 x 20 square on the bottom border
    t = particle_table(labels, pixel_size_nm=0.25)
    assert t["label"].tolist() == [1, 2, 5]
    area = [int((labels == k).sum()) for k in (1, 2, 5)]
    assert t["area_px"].tolist() == area and area[2] == 400
    np.testing.assert_allclose(t["equivalent_diameter_px"], 2 * np.sqrt(np.array(area) / np.pi))
    np.testing.assert_allclose(t[["y", "x"]].to_numpy()[:2], [[30.3, 40.6], [70.2, 94.7]], atol=0.1)
    np.testing.assert_allclose(t[["y", "x"]].to_numpy()[2], [89.5, 19.5])
    # Crofton perimeter: within 3 % (r = 15) and 5 % (r = 6) of 2 pi r; an axis-aligned square
    # is its worst case (4 directions: 74.7 px for 4 a = 80; 80.2 when rotated by 30 degrees)
    np.testing.assert_allclose(t["perimeter_px"][0], 2 * np.pi * 15, rtol=0.03)
    np.testing.assert_allclose(t["perimeter_px"][1], 2 * np.pi * 6, rtol=0.05)
    assert t["perimeter_px"][2] == pytest.approx(80, rel=0.07)
    np.testing.assert_allclose(t["circularity"][:2], 1.0, atol=0.04)
    assert np.pi / 4 < t["circularity"][2] < 0.92
    assert t["touches_border"].tolist() == [False, False, True]
    # a 4 px disc between pixels: its estimate, 4 pi S / P^2 = 1.064, is capped at a disc's 1
    small = np.zeros((20, 20), np.int32)
    small[_disc(small.shape, 10.5, 10.5, 4)] = 1
    perimeter = particle_table(small)["perimeter_px"][0]
    assert 4 * np.pi * (small == 1).sum() / perimeter**2 > 1.05
    assert particle_table(small)["circularity"][0] == 1.0
    # calibrated columns
    np.testing.assert_allclose(t["equivalent_diameter_nm"], t["equivalent_diameter_px"] * 0.25)
    np.testing.assert_allclose(t["area_nm2"], t["area_px"] * 0.0625)
    np.testing.assert_allclose(t["perimeter_nm"], t["perimeter_px"] * 0.25)
    np.testing.assert_allclose(t["x_nm"], t["x"] * 0.25)
    assert "area_nm2" not in particle_table(labels).columns


def test_table_empty_and_bad_input():
    t = particle_table(np.zeros((20, 20), int), pixel_size_nm=1.0)
    assert len(t) == 0 and {"label", "circularity", "equivalent_diameter_nm"} <= set(t.columns)
    with pytest.raises(ValueError, match="2D"):
        particle_table(np.zeros((2, 5, 5), int))
    with pytest.raises(ValueError, match="non-negative"):
        particle_table(-np.ones((5, 5), int))
    with pytest.raises(ValueError, match="pixel_size"):
        particle_table(np.ones((5, 5), int), pixel_size_nm=0)


def test_size_statistics_leave_out_border_particles():
    t = pd.DataFrame(
        {
            "equivalent_diameter_px": [10.0, 12.0, 14.0, 90.0],
            "perimeter_px": [30.0, 36.0, 42.0, 100.0],
            "circularity": [1.0, 0.9, 0.8, 0.1],
            "touches_border": [False, False, False, True],
        }
    )
    s = size_statistics(t)
    row = s.loc["equivalent_diameter_px"]
    assert row["n"] == 3 and row["mean"] == 12.0 and row["std"] == pytest.approx(2.0)
    assert row["median"] == 12.0 and row["min"] == 10.0 and row["max"] == 14.0
    assert s.attrs["n_border"] == 1
    assert s.loc["circularity", "mean"] == pytest.approx(0.9)
    assert size_statistics(t, include_border=True).loc["equivalent_diameter_px", "n"] == 4


def test_vectorised_perimeters_equal_skimage(core_shell):
    from skimage.measure import regionprops_table

    lab = core_shell.labels  # touching particles: windows with two labels
    props = regionprops_table(lab, properties=("label", "perimeter_crofton", "centroid", "area"))
    t = particle_table(lab)
    np.testing.assert_array_equal(t["label"], props["label"])
    np.testing.assert_allclose(t["perimeter_px"], props["perimeter_crofton"], rtol=1e-12)
    np.testing.assert_allclose(t["y"], props["centroid-0"], rtol=1e-12)
    np.testing.assert_allclose(t["x"], props["centroid-1"], rtol=1e-12)
    np.testing.assert_array_equal(t["area_px"], props["area"])


def test_border_flags_match_the_simulator(haadf):
    t = particle_table(haadf.labels)
    truth = haadf.particles.set_index("label")
    present = t["label"].to_numpy()
    assert t["touches_border"].tolist() == truth.loc[present, "touches_border"].tolist()
    assert truth["touches_border"].sum() > 0
    np.testing.assert_allclose(
        t["equivalent_diameter_px"], truth.loc[present, "equivalent_diameter_px"], rtol=1e-12
    )
    assert set(border_labels(haadf.labels)) == set(truth.index[truth["touches_border"]])


# -- label utilities ---------------------------------------------------------------------------
def test_relabel_and_remove_small():
    lab = np.array([[0, 9, 9, 0], [4, 0, 0, 7], [4, 0, 0, 0]])
    np.testing.assert_array_equal(
        relabel_sequential(lab), [[0, 3, 3, 0], [1, 0, 0, 2], [1, 0, 0, 0]]
    )
    np.testing.assert_array_equal(
        remove_small_objects(lab, 2), [[0, 9, 9, 0], [4, 0, 0, 0], [4, 0, 0, 0]]
    )


def test_match_instances_by_iou():
    truth = np.zeros((10, 10), int)
    truth[1:5, 1:5] = 1  # 16 px
    truth[6:10, 6:10] = 2  # on the border
    pred = np.zeros_like(truth)
    pred[1:5, 1:4] = 5  # 12 px inside truth 1: IoU 0.75
    pred[6:8, 6:8] = 3  # 4 px inside truth 2: IoU 0.25, unmatched
    m = match_instances(pred, truth)
    assert m[["pred", "truth"]].values.tolist() == [[5, 1]]
    assert m["iou"][0] == pytest.approx(0.75)
    s = segmentation_scores(pred, truth, [[1, 2]])
    assert s["n_matched"] == 1 and s["pairs_split"] == 0 and s["pairs"] == 1
    assert s["median_d_rel_error"] == pytest.approx(1 - np.sqrt(12 / 16))


# -- splitting touching particles -----------------------------------------------------------------
def test_two_touching_discs_are_split_at_the_neck():
    mask = _disc((60, 90), 30, 28, 15) | _disc((60, 90), 30, 56, 14)
    lab = split_touching(mask)
    assert lab.max() == 2
    t = particle_table(lab)
    # each half holds (almost) its own disc: the split line lies in the neck
    np.testing.assert_allclose(t["x"], [28, 56], atol=1.0)
    np.testing.assert_allclose(
        t["area_px"],
        [_disc((60, 90), 30, 28, 15).sum(), _disc((60, 90), 30, 56, 14).sum()],
        rtol=0.04,
    )
    # no split where there is no neck: an ellipse of axis ratio 0.7 stays whole
    yy, xx = np.mgrid[0:60, 0:90]
    ellipse = ((yy - 30) / 14) ** 2 + ((xx - 45) / 20) ** 2 <= 1
    assert split_touching(ellipse).max() == 1


@pytest.mark.parametrize("which", ["haadf", "core_shell"])
def test_simulated_touching_pairs_are_split(which, request):
    sim = request.getfixturevalue(which)
    pairs = sim.extras["touching_pairs"]
    assert len(pairs) >= 10
    mask = sim.labels > 0
    for labels in (
        label_particles(mask.astype(np.float32), split="distance"),
        label_particles(mask.astype(np.float32), _rim(sim.labels).astype(np.float32)),
    ):
        s = segmentation_scores(labels, sim.labels, pairs)
        assert s["pairs_split"] >= 0.9 * s["pairs"]
        assert s["recall"] >= 0.95
        assert s["median_d_rel_error"] < 0.01
    # the learned-boundary route is exact on exact maps
    exact = label_particles(mask.astype(np.float32), _rim(sim.labels).astype(np.float32))
    s = segmentation_scores(exact, sim.labels, pairs)
    assert s["pairs_split"] == s["pairs"] and s["n_pred"] == s["n_truth"]
    # without splitting, touching particles merge
    merged = segmentation_scores(
        label_particles(mask.astype(np.float32), split="none"), sim.labels, pairs
    )
    assert merged["pairs_split"] < 0.5 * merged["pairs"]


def test_label_particles_thresholds_and_small_objects():
    prob = np.zeros((50, 50), np.float32)
    prob[_disc(prob.shape, 20, 20, 8)] = 0.9
    prob[_disc(prob.shape, 40, 40, 6)] = 0.4  # below the threshold
    prob[5, 45] = 0.9  # a one-pixel speck
    lab = label_particles(prob, threshold=0.5, min_area=8, split="none")
    assert lab.max() == 1 and (lab > 0).sum() == _disc(prob.shape, 20, 20, 8).sum()
    assert label_particles(prob, threshold=0.3, split="none").max() == 2
    with pytest.raises(ValueError, match="boundary"):
        label_particles(prob, split="boundary")
    with pytest.raises(ValueError, match="unknown split"):
        label_particles(prob, split="magic")


# -- classical baseline ---------------------------------------------------------------------------
def test_otsu_watershed_baseline(haadf, core_shell):
    s = segmentation_scores(otsu_watershed(haadf.image, "bright"), haadf.labels)
    assert s["dice"] > 0.8
    wrong = segmentation_scores(otsu_watershed(haadf.image, "dark"), haadf.labels)
    assert wrong["dice"] < 0.5
    for classes in (2, 3):  # multi-Otsu keeps the darkest of three classes
        s = segmentation_scores(
            otsu_watershed(core_shell.image, "dark", classes=classes), core_shell.labels
        )
        assert s["dice"] > 0.8
    with pytest.raises(ValueError, match="polarity"):
        otsu_watershed(haadf.image, "auto")
