"""Shared fixtures: synthetic lattices with exact ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from napari_atomnet.synth import render_gaussians


@pytest.fixture
def square_lattice():
    """A noisy square lattice (spacing 17 px, sigma 2.5 px, 300 counts peak), with its truth."""
    rng = np.random.default_rng(42)
    yy, xx = np.mgrid[0:14, 0:14] * 17.0 + 8.0
    truth = np.column_stack([yy.ravel(), xx.ravel()]) + rng.uniform(-0.5, 0.5, (196, 2))
    clean = render_gaussians((240, 240), truth[:, 0], truth[:, 1], 300.0, 2.5) + 20.0
    image = rng.poisson(clean).astype(np.float32)
    return image, truth
