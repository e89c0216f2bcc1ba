"""Classical peak finding and lattice-spacing estimation.

The classical detector (Gaussian filter + :func:`skimage.feature.peak_local_max`) is the baseline
the learned detector is compared with, and the fallback when no model is available.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import ndimage
from skimage.feature import peak_local_max

Polarity = Literal["bright", "dark", "auto"]


def estimate_spacing(image: ArrayLike, *, min_spacing: float = 3.0) -> float:
    """Estimate the nearest-neighbour distance of the brightest columns from the autocorrelation.

    The autocorrelation of a lattice image has peaks at every lattice vector; the nearest strong
    one (excluding the central peak) gives the spacing of the dominant sublattice.

    Parameters
    ----------
    image : array_like, shape (H, W)
        Image of a (roughly) periodic structure.
    min_spacing : float
        Distances below this (px) are not considered (the central peak's shoulder).

    Returns
    -------
    float
        Spacing in pixels; ``nan`` if no periodicity is found.
    """
    img = np.asarray(image, dtype=np.float64)
    img = img - ndimage.gaussian_filter(img, max(img.shape) / 16)  # remove slow background
    img -= img.mean()
    h, w = img.shape
    win = np.outer(np.hanning(h), np.hanning(w))
    f = np.fft.rfft2(img * win, s=(2 * h, 2 * w))  # zero-padded: linear, not circular
    ac = np.fft.fftshift(np.fft.irfft2(np.abs(f) ** 2, s=(2 * h, 2 * w)))
    cy, cx = h, w
    r_max = min(h, w) // 3
    sub = ac[cy - r_max : cy + r_max + 1, cx - r_max : cx + r_max + 1]
    yy, xx = np.mgrid[-r_max : r_max + 1, -r_max : r_max + 1]
    rr = np.hypot(yy, xx)
    sub = np.where(rr >= min_spacing, sub, -np.inf)
    peaks = peak_local_max(
        np.where(np.isfinite(sub), sub, sub[np.isfinite(sub)].min()),
        min_distance=2,
        exclude_border=False,
        num_peaks=40,
    )
    if len(peaks) == 0:
        return float("nan")
    vals = sub[peaks[:, 0], peaks[:, 1]]
    dist = rr[peaks[:, 0], peaks[:, 1]]
    strong = vals >= 0.5 * vals.max()  # the dominant sublattice, not weak basis atoms
    return float(np.min(dist[strong]))


def detect_peaks_classical(
    image: ArrayLike,
    *,
    sigma: float = 1.0,
    min_distance: int | None = None,
    threshold_rel: float = 0.1,
    polarity: Polarity = "bright",
    background_sigma: float | None = None,
) -> pd.DataFrame:
    """Find intensity peaks by Gaussian smoothing and local-maximum search.

    Parameters
    ----------
    image : array_like, shape (H, W)
        Image.
    sigma : float
        Gaussian smoothing (px) before the search.
    min_distance : int, optional
        Minimum peak separation (px); defaults to ~0.35 × the estimated spacing.
    threshold_rel : float
        Minimum peak height relative to the highest peak, after background removal.
    polarity : {"bright", "dark", "auto"}
        Atoms brighter (HAADF) or darker (ABF, some HRTEM) than their surroundings; "auto" picks
        the one whose peaks stand out more.
    background_sigma : float, optional
        Width of the Gaussian background removed before the search; defaults to 2 × spacing.

    Returns
    -------
    pandas.DataFrame
        Columns ``y, x, score`` (score = smoothed peak height above background divided by the
        highest one), one row per peak.
    """
    img = np.asarray(image, dtype=np.float32)
    spacing = estimate_spacing(img)
    if not np.isfinite(spacing):
        spacing = 8.0
    if min_distance is None:
        min_distance = max(1, round(0.35 * spacing))
    bg_sigma = background_sigma or 2.0 * spacing
    if polarity == "auto":
        polarity = _guess_polarity(img, sigma)
    signal = img if polarity == "bright" else -img
    smooth = ndimage.gaussian_filter(signal, sigma) - ndimage.gaussian_filter(signal, bg_sigma)
    peaks = peak_local_max(
        smooth, min_distance=min_distance, threshold_rel=threshold_rel, exclude_border=False
    )
    top = float(smooth.max()) or 1.0
    score = smooth[peaks[:, 0], peaks[:, 1]] / top if len(peaks) else np.empty(0)
    return pd.DataFrame(
        {"y": peaks[:, 0].astype(float), "x": peaks[:, 1].astype(float), "score": score}
    )


def _guess_polarity(img: np.ndarray, sigma: float) -> Literal["bright", "dark"]:
    smooth = ndimage.gaussian_filter(img, sigma)
    dev = smooth - np.median(smooth)
    # Atoms are sparse sharp extremes: the side with the heavier tail is the atoms' side.
    hi = np.percentile(dev, 99.5)
    lo = -np.percentile(dev, 0.5)
    return "bright" if hi >= lo else "dark"
