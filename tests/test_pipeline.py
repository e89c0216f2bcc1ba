"""pipeline.find_atoms / refine_atoms: what a caller may pass instead of having it estimated."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_atomnet import synth
from napari_atomnet.core.detect import SPACING_CROP, estimate_spacing
from napari_atomnet.pipeline import find_atoms, refine_atoms


@pytest.fixture(scope="module")
def haadf():
    return synth.perovskite_haadf((256, 256), spacing=20.0, dose=300.0, seed=11).image


@pytest.mark.parametrize("detector", [None, "classical"])
def test_spacing_passed_equals_spacing_estimated(haadf, detector):
    found = find_atoms(haadf, detector=detector)
    crop = None if detector == "classical" else SPACING_CROP
    spacing = estimate_spacing(haadf, max_crop=crop)
    given = find_atoms(haadf, detector=detector, spacing=spacing)
    pd.testing.assert_frame_equal(found.atoms, given.atoms)
    assert found.provenance["params"] == given.provenance["params"]
    assert given.provenance["params"]["lattice_spacing"] == pytest.approx(spacing, abs=1e-4)


def test_gaussian_model_given_equals_the_one_decided(haadf):
    auto = find_atoms(haadf)
    decided = auto.provenance["params"]["gaussian_model"]
    assert decided in ("isotropic", "elliptical")
    given = find_atoms(haadf, gaussian=decided)
    pd.testing.assert_frame_equal(auto.atoms, given.atoms)
    with pytest.raises(ValueError, match="model"):
        refine_atoms(haadf.astype(np.float32), auto.atoms, model="round")


def test_refining_a_refined_table_replaces_the_fit(haadf):
    atoms = find_atoms(haadf).atoms
    again = refine_atoms(haadf.astype(np.float32), atoms)
    assert list(again.columns) == list(atoms.columns)
    np.testing.assert_allclose(again[["y", "x"]], atoms[["y", "x"]], atol=0.05)


def test_estimate_spacing_crop():
    img = synth.perovskite_haadf((300, 200), spacing=16.0, dose=500.0, seed=1).image
    assert estimate_spacing(img, max_crop=1024) == estimate_spacing(img)
    assert estimate_spacing(img, max_crop=128) == estimate_spacing(img[86:214, 36:164])


def test_the_model_card_decides_whether_to_refine(haadf):
    """Refinement follows the card unless told: the HRTEM model's is off, the others on."""
    from napari_atomnet.pipeline import refines_by_default

    assert refines_by_default("classical") and refines_by_default(None)
    assert refines_by_default("atomnet-detect") and not refines_by_default("atomnet-hrtem")
    found = find_atoms(haadf, detector="atomnet-hrtem", polarity="bright")
    assert found.provenance["params"]["refine"] is False and "fit_ok" not in found.atoms
    found = find_atoms(haadf, polarity="bright")
    assert found.provenance["params"]["refine"] is True and found.atoms["fit_ok"].mean() > 0.9
