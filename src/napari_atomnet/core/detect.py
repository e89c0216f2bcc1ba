"""Classical peak finding and lattice-spacing estimation.

The classical detector (Gaussian filter + :func:`skimage.feature.peak_local_max`) is the baseline
the learned detector is compared with, and the fallback when no model is available.
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy import fft, ndimage
from skimage.feature import peak_local_max

Polarity = Literal["bright", "dark", "auto"]

#: Accepted values of every ``polarity`` option (detection, refinement, CLI, widgets).
POLARITIES = ("auto", "bright", "dark")

#: Central crop (px) from which detection estimates the lattice spacing of an image (the
#: normalisation window and the polarity guess come from it).
SPACING_CROP = 1024


def central_crop(image: NDArray, size: int) -> NDArray:
    """Return the central ``size`` × ``size`` part of an image (all of a smaller side).

    Examples
    --------
    >>> central_crop(np.zeros((10, 3)), 4).shape
    (4, 3)
    """
    r0 = max(0, (image.shape[0] - size) // 2)
    c0 = max(0, (image.shape[1] - size) // 2)
    return image[r0 : r0 + size, c0 : c0 + size]


def estimate_spacing(
    image: ArrayLike, *, strength: float = 0.3, max_crop: int | None = None
) -> float:
    """Estimate the nearest-neighbour distance of the columns from the autocorrelation.

    The autocorrelation of a lattice image has peaks at every interatomic vector; the nearest
    local maximum (other than the central one) whose height is at least ``strength`` times the
    highest off-centre peak gives the spacing.  Peak positions are refined to sub-pixel precision
    by a parabola along each axis.

    Parameters
    ----------
    image : array_like, shape (H, W)
        Image of a (roughly) periodic structure.
    strength : float
        Relative height below which off-centre peaks are ignored (noise, weak basis columns).
    max_crop : int, optional
        Use only the central ``max_crop`` × ``max_crop`` crop (keeps it fast on huge images;
        the autocorrelation costs O(N log N) in the pixel count).

    Returns
    -------
    float
        Spacing in pixels; ``nan`` if no periodicity is found.

    Examples
    --------
    >>> from napari_atomnet.synth import render_gaussians
    >>> yy, xx = np.mgrid[0:20, 0:20] * 12.5 + 6.0
    >>> img = render_gaussians((256, 256), yy.ravel(), xx.ravel(), 1.0, 2.0)
    >>> round(estimate_spacing(img), 1)
    12.5
    """
    img = np.asarray(image)
    if max_crop is not None:
        img = central_crop(img, max_crop)
    img = np.asarray(img, dtype=np.float64)
    h, w = img.shape
    img = img - img.mean()
    win = np.outer(np.hanning(h), np.hanning(w))
    # scipy's FFTs use every core (numpy's one): half the time of this estimate on 1024²
    f = fft.rfft2(img * win, s=(2 * h, 2 * w), workers=-1)  # zero-padded: linear, not circular
    power = np.abs(f) ** 2 * _highpass(h, w)
    # the autocorrelation at lags up to r_max only: the inverse transform as irfft2 does it
    # (along y, then along x), but the x transforms only for the rows of those lags
    r_max = min(h, w) // 3
    lags = np.arange(-r_max, r_max + 1)
    rows = fft.ifft(power, 2 * h, axis=0, workers=-1)[lags % (2 * h)]
    sub = fft.irfft(rows, 2 * w, axis=1, workers=-1)[:, lags % (2 * w)]
    is_max = (sub == ndimage.maximum_filter(sub, size=3)) & (sub > 0)
    is_max[r_max, r_max] = False  # the central peak
    iy, ix = np.nonzero(is_max)
    keep = (iy > 0) & (ix > 0) & (iy < sub.shape[0] - 1) & (ix < sub.shape[1] - 1)
    iy, ix = iy[keep], ix[keep]
    if len(iy) == 0:
        return float("nan")
    vals = sub[iy, ix]
    strong = vals >= strength * vals.max()
    iy, ix = iy[strong], ix[strong]
    dy = _parabola_offset(sub, iy, ix, axis=0, log=False)
    dx = _parabola_offset(sub, iy, ix, axis=1, log=False)
    dist = np.hypot(iy + dy - r_max, ix + dx - r_max)
    return float(dist.min())


@functools.lru_cache(maxsize=2)
def _highpass(h: int, w: int) -> NDArray[np.float64]:
    """High-pass filter of the (2h × 2w, real-FFT) spectrum of :func:`estimate_spacing`.

    It removes slow backgrounds (periods above ~1/8 of the image) at no cost, where a
    real-space Gaussian of that width would cost O(sigma) per pixel.  Cached: every frame of
    a movie has the same shape.
    """
    qy = np.fft.fftfreq(2 * h)[:, None]
    qx = np.fft.rfftfreq(2 * w)[None, :]
    q0 = 8.0 / max(h, w)
    out = 1.0 - np.exp(-0.5 * (qy**2 + qx**2) / q0**2)
    out.flags.writeable = False
    return out


def detect_peaks_classical(
    image: ArrayLike,
    *,
    sigma: float = 1.0,
    min_distance: int | None = None,
    threshold_rel: float = 0.1,
    polarity: Polarity = "bright",
    background_sigma: float | None = None,
    spacing: float | None = None,
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
        Atoms brighter (HAADF) or darker (ABF, bright-field, some HRTEM) than their
        surroundings; "auto" guesses (:func:`resolve_polarity`).
    background_sigma : float, optional
        Width of the Gaussian background removed before the search; defaults to 2 × spacing.
    spacing : float, optional
        The lattice spacing (px) when the caller knows it (e.g. estimated once for a whole
        movie); estimated by :func:`estimate_spacing` otherwise.

    Returns
    -------
    pandas.DataFrame
        Columns ``y, x, score`` (score = smoothed peak height above background divided by the
        highest one), one row per peak.
    """
    img = np.asarray(image, dtype=np.float32)
    if spacing is None:
        spacing = estimate_spacing(img)
    contrast = resolve_polarity(img, polarity, spacing=spacing)
    if not np.isfinite(spacing):
        spacing = 8.0
    if min_distance is None:
        min_distance = max(1, round(0.35 * spacing))
    bg_sigma = background_sigma or 2.0 * spacing
    signal = img if contrast == "bright" else -img
    smooth = ndimage.gaussian_filter(signal, sigma) - ndimage.gaussian_filter(signal, bg_sigma)
    peaks = peak_local_max(
        smooth, min_distance=min_distance, threshold_rel=threshold_rel, exclude_border=False
    )
    top = float(smooth.max()) or 1.0
    score = smooth[peaks[:, 0], peaks[:, 1]] / top if len(peaks) else np.empty(0)
    return pd.DataFrame(
        {"y": peaks[:, 0].astype(float), "x": peaks[:, 1].astype(float), "score": score}
    )


def resolve_polarity(
    image: ArrayLike, polarity: str = "auto", *, spacing: float | None = None
) -> Literal["bright", "dark"]:
    """Return ``polarity`` checked, or the image's guessed atom contrast when it is "auto".

    The guess (the heavier tail of the lightly smoothed image: atoms are sparse sharp extremes)
    is right for HAADF and ABF images, bright or dark, down to a few counts per column; it is
    unreliable for HRTEM, where the CTF can make the empty hexagon centres the extremes (there
    a model made for phase contrast guesses it itself:
    :func:`~napari_atomnet.models.detector.detect_atoms`).

    Parameters
    ----------
    image : array_like, shape (H, W)
        Image.
    polarity : {"auto", "bright", "dark"}
        What the caller knows.
    spacing : float, optional
        The lattice spacing (px), if already known (it sets the smoothing of the guess);
        estimated from the image otherwise.

    Returns
    -------
    str
        ``"bright"`` or ``"dark"``.

    Raises
    ------
    ValueError
        ``polarity`` is none of the three.
    """
    if polarity in ("bright", "dark"):
        return polarity  # type: ignore[return-value]
    if polarity != "auto":
        raise ValueError(f"polarity must be 'auto', 'bright' or 'dark', got {polarity!r}")
    img = np.asarray(image, dtype=np.float32)
    if spacing is None:
        spacing = estimate_spacing(img)
    sigma = max(0.7, 0.15 * spacing) if np.isfinite(spacing) else 1.0
    return _guess_polarity(img, sigma)


def _guess_polarity(img: np.ndarray, sigma: float) -> Literal["bright", "dark"]:
    smooth = ndimage.gaussian_filter(img, sigma)
    dev = smooth - np.median(smooth)
    # Atoms are sparse sharp extremes: the side with the heavier tail is the atoms' side.
    hi = np.percentile(dev, 99.5)
    lo = -np.percentile(dev, 0.5)
    return "bright" if hi >= lo else "dark"


def decode_heatmap(
    heatmap: ArrayLike,
    *,
    threshold: float,
    size: ArrayLike | None = None,
    stride: int = 1,
    min_distance: float = 1.0,
) -> pd.DataFrame:
    """Turn a detector's centre heatmap into peak positions with sub-pixel precision.

    A peak is a pixel that is the maximum of its 3×3 neighbourhood in the class-maximum map and
    exceeds ``threshold``.  Its class is the arg-max channel there, and its position is refined by
    fitting a parabola to the log-heatmap along each axis (exact for a Gaussian blob).

    Parameters
    ----------
    heatmap : array_like, shape (C, h, w)
        Per-class centre probabilities in [0, 1].
    threshold : float
        Minimum probability of a peak.
    size : array_like, shape (1 or 2, h, w), optional
        Predicted box size (height, width) in input pixels; one channel means square boxes.
    stride : int
        Output stride: map pixel (i, j) is input position (i·s + (s−1)/2, j·s + (s−1)/2).
    min_distance : float
        Peaks closer than this (input px) are merged, keeping the higher score (plateaus).

    Returns
    -------
    pandas.DataFrame
        Columns ``y, x, score, class, box_h, box_w`` in input pixels (``box_*`` NaN without
        ``size``).
    """
    hm = np.asarray(heatmap, dtype=np.float32)
    if hm.ndim == 2:
        hm = hm[None]
    best = hm.max(axis=0)
    local_max = _max3x3(best)
    iy, ix = np.nonzero((best == local_max) & (best >= threshold))
    score = best[iy, ix]
    cls = hm[:, iy, ix].argmax(axis=0) if len(iy) else np.empty(0, int)
    dy = _parabola_offset(best, iy, ix, axis=0)
    dx = _parabola_offset(best, iy, ix, axis=1)
    half = (stride - 1) / 2.0
    y = (iy + dy) * stride + half
    x = (ix + dx) * stride + half
    if size is not None and len(iy):
        sz = np.asarray(size, dtype=np.float32)
        box_h = sz[0, iy, ix]
        box_w = sz[-1, iy, ix]
    else:
        box_h = box_w = np.full(len(iy), np.nan, dtype=np.float32)
    table = pd.DataFrame(
        {"y": y, "x": x, "score": score, "class": cls.astype(int), "box_h": box_h, "box_w": box_w}
    )
    return merge_close_peaks(table, min_distance)


def _max3x3(a: NDArray) -> NDArray:
    """``ndimage.maximum_filter(a, size=3, mode="nearest")`` of a 2D array, as slices (faster)."""
    p = np.pad(a, 1, mode="edge")
    rows = np.maximum(np.maximum(p[:-2], p[1:-1]), p[2:])
    return np.maximum(np.maximum(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])


def merge_close_peaks(table: pd.DataFrame, min_distance: float) -> pd.DataFrame:
    """Drop peaks closer than ``min_distance`` to a higher-scoring one (greedy by score).

    Parameters
    ----------
    table : pandas.DataFrame
        Peaks with ``y, x, score``.
    min_distance : float
        Merge distance (px).

    Returns
    -------
    pandas.DataFrame
        The kept rows, in descending score order, with a fresh index.
    """
    from scipy.spatial import cKDTree

    if len(table) < 2 or min_distance <= 0:
        return table.reset_index(drop=True)
    table = table.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    pts = table[["y", "x"]].to_numpy()
    pairs = cKDTree(pts).query_pairs(min_distance, output_type="ndarray")
    if len(pairs) == 0:
        return table
    keep = np.ones(len(table), bool)
    # pairs (i, j) with i < j: j has the lower score; process in order so chains resolve greedily
    for i, j in pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]:
        if keep[i] and keep[j]:
            keep[j] = False
    return table[keep].reset_index(drop=True)


def _parabola_offset(
    values: np.ndarray, iy: np.ndarray, ix: np.ndarray, axis: int, *, log: bool = True
) -> np.ndarray:
    if len(iy) == 0:
        return np.empty(0)
    n = values.shape[axis]
    centre = iy if axis == 0 else ix
    lo = np.clip(centre - 1, 0, n - 1)
    hi = np.clip(centre + 1, 0, n - 1)
    if axis == 0:
        a, b, c = values[lo, ix], values[iy, ix], values[hi, ix]
    else:
        a, b, c = values[iy, lo], values[iy, ix], values[iy, hi]
    if log:  # a parabola in log space is exact for Gaussian peaks
        la, lb, lc = (np.log(np.maximum(v, 1e-6)) for v in (a, b, c))
    else:
        la, lb, lc = a, b, c
    denom = la - 2 * lb + lc
    with np.errstate(divide="ignore", invalid="ignore"):
        off = np.where(denom < -1e-9, 0.5 * (la - lc) / denom, 0.0)
    off[(lo == centre) | (hi == centre)] = 0.0  # at the border, no parabola
    return np.clip(off, -0.5, 0.5)


def atom_polarity(image: ArrayLike, coords: ArrayLike, *, sigma: float = 1.0) -> str:
    """Tell whether detected atoms are brighter or darker than their surroundings.

    Compares the smoothed intensity at each detected position with the local mean around it
    (a window of about twice the spacing); the sign of the median difference decides.

    Parameters
    ----------
    image : array_like, shape (H, W)
        Image.
    coords : array_like, shape (N, 2)
        Detected (y, x) positions.
    sigma : float
        Smoothing before sampling (px).

    Returns
    -------
    str
        ``"bright"`` or ``"dark"``.
    """
    img = np.asarray(image, dtype=np.float32)
    pts = np.asarray(coords, dtype=float).reshape(-1, 2)
    if len(pts) == 0:
        return "bright"
    if len(pts) > 1:
        from scipy.spatial import cKDTree

        spacing = float(np.median(cKDTree(pts).query(pts, k=2)[0][:, 1]))
    else:
        spacing = 8.0
    smooth = ndimage.gaussian_filter(img, sigma)
    local = ndimage.uniform_filter(img, size=max(3, int(2 * spacing) | 1))
    iy = np.clip(np.round(pts[:, 0]).astype(int), 0, img.shape[0] - 1)
    ix = np.clip(np.round(pts[:, 1]).astype(int), 0, img.shape[1] - 1)
    return "bright" if np.median(smooth[iy, ix] - local[iy, ix]) >= 0 else "dark"
