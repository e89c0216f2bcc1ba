"""Matching HRTEM imaging conditions to an image (core.optics)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_atomnet import synth
from napari_atomnet.core.optics import fit_imaging_conditions
from napari_atomnet.pipeline import match_imaging_conditions


@pytest.mark.parametrize(
    ("defocus", "cs", "seed"),
    [(60.0, -10.0, 7_000_001), (-60.0, -10.0, 7_000_002), (70.0, 15.0, 7_000_003)],
)
def test_the_truth_is_among_the_consistent_conditions(defocus, cs, seed):
    """On held-out graphene (seeds never used in training) the atoms the HRTEM model finds,
    imaged at the truth or a grid neighbour of it, correlate with the image within ``delta`` of
    the best (the adaptation draws one grid step around each consistent point), and the
    conditions the image allows are a small part of all."""
    sim = synth.graphene_hrtem(
        (320, 320), defocus=defocus, cs_um=cs, dose=1e4, astig_angstrom=5.0, seed=seed
    )
    fit = match_imaging_conditions(sim.image, 0.12)
    i = int(np.argmin(abs(fit.defocus - defocus)))
    j = int(np.argmin(abs(fit.cs_um - cs)))
    assert np.nanmax(fit.score[i - 1 : i + 2, j - 1 : j + 2]) >= fit.best[2] - fit.delta
    # the consistent conditions share the truth's sign of defocus and are few
    assert (np.sign(fit.consistent[:, 0]) == np.sign(defocus)).mean() > 0.9
    assert len(fit.consistent) < 0.06 * fit.score.size
    assert str(len(fit.consistent)) in fit.summary()


def test_other_conditions_score_worse_than_the_truth():
    """The score tells conditions apart: the truth beats the opposite defocus by a margin."""
    sim = synth.graphene_hrtem(
        (320, 320), defocus=60.0, cs_um=-10.0, dose=1e4, astig_angstrom=5.0, seed=7_000_001
    )
    truth = sim.atoms[["y", "x"]].to_numpy()
    fit = fit_imaging_conditions(
        sim.image, truth, 0.12, defocus_range=(-60.0, 60.0), cs_range=(-10.0, -10.0)
    )
    assert fit.score[-1, 0] > fit.score[0, 0] + 0.2  # +60 Å against -60 Å


def test_bad_input_is_refused():
    sim = synth.graphene_hrtem((160, 160), defocus=60.0, cs_um=-10.0, seed=1)
    truth = sim.atoms[["y", "x"]].to_numpy()
    with pytest.raises(ValueError, match="pixel size"):
        fit_imaging_conditions(sim.image, truth, 1.0)
    with pytest.raises(ValueError, match="at least 30 are needed"):
        fit_imaging_conditions(sim.image, truth[:10], 0.12)
    with pytest.raises(ValueError, match="NaN"):
        fit_imaging_conditions(np.where(sim.image > 0, np.nan, 0.0), truth, 0.12)
    with pytest.raises(ValueError, match="2D"):
        fit_imaging_conditions(sim.image[:40], truth, 0.12)
    with pytest.raises(ValueError, match="voltage"):
        fit_imaging_conditions(sim.image, truth, 0.12, voltage_kv=5.0)
    # atoms that are not graphene's at this sampling (the pixel size off by a factor 2)
    with pytest.raises(ValueError, match="matched on graphene only"):
        fit_imaging_conditions(sim.image, truth, 0.24)
