"""Movies: atoms per frame, drift, site occupancy and events against an exact synthetic truth."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest

from napari_atomnet.sequences import (
    analyze_sequence,
    correct_drift,
    estimate_drift,
    find_atoms_stack,
    site_occupancy,
)
from napari_atomnet.synth import render_gaussians


def blinking_movie(n_frames=20, shape=(112, 112), spacing=14.0, seed=3):
    """Square lattice whose columns blink with known probabilities, drifting by a known amount."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:6, 0:6] * spacing + 20.0
    sites = np.column_stack([yy.ravel(), xx.ravel()]) + rng.uniform(-0.4, 0.4, (36, 2))
    prob = np.array([1.0, 0.8, 0.5])[np.arange(36) % 3]
    present = rng.random((36, n_frames)) < prob[:, None]
    present[:, 0] |= prob == 1.0
    steps = np.column_stack([np.full(n_frames, 0.37), np.full(n_frames, -0.23)])
    steps += rng.normal(0, 0.1, (n_frames, 2))
    steps[0] = 0
    drift = np.cumsum(steps, axis=0)
    frames = []
    for t in range(n_frames):
        on = present[:, t]
        clean = render_gaussians(
            shape, sites[on, 0] + drift[t, 0], sites[on, 1] + drift[t, 1], 400.0, 2.0
        )
        frames.append(rng.poisson(clean + 20.0).astype(np.float32))
    return np.stack(frames), sites, present, drift


@pytest.fixture(scope="module")
def movie():
    return blinking_movie()


@pytest.fixture(scope="module")
def result(movie):
    stack, *_ = movie
    lazy = da.from_array(stack, chunks=(1, *stack.shape[1:]))
    calls = []
    res = analyze_sequence(
        lazy, detector="classical", drift="atoms", progress=lambda d, t: calls.append((d, t))
    )
    assert calls[-1] == (len(stack), len(stack))
    return res


def _truth_events(present):
    step = np.diff(present.astype(int), axis=1)
    return (step == 1).sum(axis=1) + (step == -1).sum(axis=1)


def test_atoms_per_frame_are_exact(movie, result):
    stack, _, present, _ = movie
    atoms = result.atoms
    counts = atoms.groupby("frame").size().reindex(range(len(stack)), fill_value=0).to_numpy()
    np.testing.assert_array_equal(counts, present.sum(axis=0))
    np.testing.assert_array_equal(result.frames["n_atoms"].to_numpy(), present.sum(axis=0))
    assert {"frame", "y", "x", "amplitude", "fit_ok", "y_corr", "x_corr"} <= set(atoms.columns)


def test_drift_from_atoms_and_images(movie, result):
    stack, _, _, drift = movie
    assert np.abs(result.drift - drift).max() < 0.05
    from_images = estimate_drift(stack)
    assert np.abs(from_images - drift).max() < 0.1


def test_sites_occupancy_and_events_match_truth(movie, result):
    _, sites, present, _ = movie
    seen = present.any(axis=1)
    found = result.sites
    assert len(found) == seen.sum()
    d = np.hypot(
        found["y"].to_numpy()[:, None] - sites[None, :, 0],
        found["x"].to_numpy()[:, None] - sites[None, :, 1],
    )
    match = d.argmin(axis=1)
    assert d.min(axis=1).max() < 0.2  # frame-0 site positions to 0.2 px
    assert len(set(match)) == len(found)
    n = present.shape[1]
    np.testing.assert_array_equal(found["n_present"], present[match].sum(axis=1))
    np.testing.assert_array_equal(found["n_observed"], n)
    np.testing.assert_allclose(found["occupancy"], present[match].mean(axis=1))
    np.testing.assert_array_equal(found["events"], _truth_events(present[match]))
    np.testing.assert_allclose(found["event_rate"], _truth_events(present[match]) / (n - 1))
    # per-atom features carry their site's values
    atoms = result.atoms
    per_site = found.set_index("site")
    np.testing.assert_allclose(atoms["occupancy"], per_site.loc[atoms["site"], "occupancy"])
    assert atoms.groupby(["site", "frame"]).size().max() == 1


def test_sites_drifting_out_of_view_are_not_counted_empty():
    # one site, present in every frame, walks out of a 40 px frame after frame 4
    drift = np.column_stack([np.arange(8) * 3.0, np.zeros(8)])
    atoms = pd.DataFrame({"frame": range(5), "y": 25.0 + drift[:5, 0], "x": 20.0})
    _, sites = site_occupancy(atoms, drift=drift, shape=(40, 40), radius=2.0)
    assert sites.loc[0, "n_observed"] == 5 and sites.loc[0, "occupancy"] == 1.0
    assert sites.loc[0, "events"] == 0
    _, blind = site_occupancy(atoms, drift=drift, radius=2.0)  # without the frame shape
    assert blind.loc[0, "occupancy"] == 5 / 8 and blind.loc[0, "disappear"] == 1


def test_one_atom_per_site_and_frame():
    atoms = pd.DataFrame(
        {"frame": [0, 0, 1, 1], "y": [10.0, 10.5, 10.1, 30.0], "x": [10.0, 10.2, 9.9, 30.0]}
    )
    out, sites = site_occupancy(atoms, radius=2.0)
    assert out.groupby(["site", "frame"]).size().max() == 1
    assert len(sites) == 3


def test_correct_drift_and_errors():
    t = pd.DataFrame({"frame": [0, 2], "y": [1.0, 4.0], "x": [1.0, 0.0]})
    out = correct_drift(t, [[0, 0], [1, 1], [3, -1]])
    np.testing.assert_allclose(out[["y_corr", "x_corr"]], [[1, 1], [1, 1]])
    with pytest.raises(ValueError, match="drift has 2 frames"):
        correct_drift(t, [[0, 0], [1, 1]])
    with pytest.raises(ValueError, match="out of range"):
        find_atoms_stack(np.zeros((2, 16, 16)), detector="classical", frames=[3])
    with pytest.raises(ValueError, match="drift must be"):
        analyze_sequence(np.zeros((2, 16, 16)), drift="magic")


def test_cancel_between_frames(movie):
    stack, *_ = movie
    with pytest.raises(InterruptedError):
        find_atoms_stack(stack[:3], detector="classical", cancelled=lambda: True)


def test_gaussian_model_decided_once_per_movie(movie, monkeypatch):
    from napari_atomnet.core import refine

    stack = movie[0][:4]
    calls = []
    real = refine.columns_are_elliptical

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(refine, "columns_are_elliptical", counting)
    atoms, _, prov = find_atoms_stack(stack, detector="classical")
    assert len(calls) == 1  # on the first frame; the others use its model
    model = prov["params"]["gaussian_model"]
    assert model in ("isotropic", "elliptical") and set(atoms["model"]) == {model}
    assert prov["params"]["polarity"] == "bright" and prov["params"]["lattice_spacing"] > 0
