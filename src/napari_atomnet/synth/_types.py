"""Result containers shared by every simulator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray


@dataclass
class AtomImage:
    """A simulated atomic-resolution image and its exact ground truth.

    Attributes
    ----------
    image : ndarray of float32, shape (H, W)
        The simulated image (detector counts for STEM, normalised intensity times dose for TEM).
    atoms : pandas.DataFrame
        One row per atom column. Columns: ``y``, ``x`` (row, col in pixels, pixel-centre
        convention), ``class`` (int), ``class_name`` (str), ``amplitude`` (peak height above the
        background, in image units, before noise), ``sigma`` (Gaussian width in px).
        Simulators may add more columns (e.g. ``disp_y``, ``disp_x`` for B sites).
    params : dict
        Every parameter that made the image, including the seed, so the call can be repeated.
    pixel_size_nm : float or None
        Calibration of the image, where the simulator defines one.
    extras : dict
        Simulator-specific truth (e.g. polarization or strain fields, the noise-free image).
    """

    image: NDArray[np.float32]
    atoms: pd.DataFrame
    params: dict[str, Any]
    pixel_size_nm: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class ParticleImage:
    """A simulated nanoparticle image with its instance mask.

    Attributes
    ----------
    image : ndarray of float32, shape (H, W)
        The simulated image.
    labels : ndarray of int32, shape (H, W)
        Instance mask: 0 is background, particle ``k`` has label ``k``.
    particles : pandas.DataFrame
        One row per particle: ``label``, ``y``, ``x`` (centre, px), ``radius_px`` (outer
        radius of the whole particle), ``core_radius_px`` (0 where there is no core),
        ``area_px`` (pixels in the mask), ``touches_border`` (bool).
    params : dict
        Every parameter that made the image, including the seed.
    pixel_size_nm : float or None
        Calibration of the image.
    extras : dict
        Simulator-specific truth (e.g. the noise-free image).
    """

    image: NDArray[np.float32]
    labels: NDArray[np.int32]
    particles: pd.DataFrame
    params: dict[str, Any]
    pixel_size_nm: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)
