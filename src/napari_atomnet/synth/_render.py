"""Rendering and detector primitives shared by the simulators.

All positions are napari (row, col) = (y, x) pixel coordinates with the pixel-centre convention:
a Gaussian centred on the centre of pixel (10, 20) has y=10.0, x=20.0.  Gaussians are sampled at
pixel centres (not integrated over the pixel), which is the same model the refinement fits.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray


def render_gaussians(
    shape: tuple[int, int],
    y: ArrayLike,
    x: ArrayLike,
    amplitude: ArrayLike,
    sigma_y: ArrayLike,
    sigma_x: ArrayLike | None = None,
    theta: ArrayLike | float = 0.0,
    *,
    radius: float = 5.0,
    out: NDArray[np.float64] | None = None,
) -> NDArray[np.float64]:
    """Sum elliptical 2D Gaussians into an image, sampled at pixel centres.

    Parameters
    ----------
    shape : tuple of int
        (H, W) of the image.
    y, x : array_like
        Centres in pixels, (row, col).
    amplitude : array_like
        Peak heights.
    sigma_y, sigma_x : array_like
        Standard deviations along the Gaussian's own axes; ``sigma_x`` defaults to ``sigma_y``.
    theta : array_like or float
        Rotation (radians) of the Gaussian's y axis towards +x.
    radius : float
        Each Gaussian is evaluated within ``radius`` times its largest sigma (5 keeps the
        truncation error below 4e-6 of the amplitude).
    out : ndarray, optional
        Image to add into (float64); a new zero image when omitted.

    Returns
    -------
    ndarray of float64, shape ``shape``

    Examples
    --------
    >>> img = render_gaussians((32, 32), [10.0], [20.0], [1.0], [2.0])
    >>> float(img[10, 20])
    1.0
    """
    y = np.atleast_1d(np.asarray(y, dtype=np.float64))
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    n = y.size
    amplitude = np.broadcast_to(np.asarray(amplitude, dtype=np.float64), (n,))
    sy = np.broadcast_to(np.asarray(sigma_y, dtype=np.float64), (n,))
    sx = sy if sigma_x is None else np.broadcast_to(np.asarray(sigma_x, dtype=np.float64), (n,))
    th = np.broadcast_to(np.asarray(theta, dtype=np.float64), (n,))
    image = np.zeros(shape, dtype=np.float64) if out is None else out
    if n == 0:
        return image
    h, w = shape
    # Group atoms by window size so each group is one vectorised evaluation.
    half = np.ceil(radius * np.maximum(sy, sx)).astype(int)
    cos, sin = np.cos(th), np.sin(th)
    for r in np.unique(half):
        idx = np.nonzero(half == r)[0]
        for start in range(0, idx.size, 4096):  # bounded memory for huge atom counts
            sel = idx[start : start + 4096]
            cy = np.round(y[sel]).astype(int)
            cx = np.round(x[sel]).astype(int)
            offs = np.arange(-r, r + 1)
            rows = cy[:, None, None] + offs[None, :, None]  # (k, 2r+1, 1)
            cols = cx[:, None, None] + offs[None, None, :]  # (k, 1, 2r+1)
            dy = rows - y[sel, None, None]
            dx = cols - x[sel, None, None]
            # coordinates in the Gaussian's own frame
            u = dy * cos[sel, None, None] + dx * sin[sel, None, None]
            v = -dy * sin[sel, None, None] + dx * cos[sel, None, None]
            vals = amplitude[sel, None, None] * np.exp(
                -0.5 * ((u / sy[sel, None, None]) ** 2 + (v / sx[sel, None, None]) ** 2)
            )
            rows_b = np.broadcast_to(rows, vals.shape)
            cols_b = np.broadcast_to(cols, vals.shape)
            inside = (rows_b >= 0) & (rows_b < h) & (cols_b >= 0) & (cols_b < w)
            np.add.at(image, (rows_b[inside], cols_b[inside]), vals[inside])
    return image


def mtf(q: ArrayLike, c1: float, c2: float, c3: float) -> NDArray[np.float64]:
    """Detector modulation transfer function of seed 003, Eq. 5.

    ``MTF(q) = (1 - c1) / (1 + (q / (2 c2 q_N))**c3) + c1`` with ``q`` in units of the Nyquist
    frequency ``q_N`` (so ``q = 1`` is Nyquist).

    Parameters
    ----------
    q : array_like
        Spatial frequency in units of the Nyquist frequency.
    c1, c2, c3 : float
        MTF parameters (seed 003, Table 1: c1 in [0, 0.1], c2 in [0.4, 0.6], c3 in [2, 3]).

    Returns
    -------
    ndarray of float64

    Examples
    --------
    >>> float(mtf(0.0, 0.05, 0.5, 2.5))
    1.0
    """
    q = np.asarray(q, dtype=np.float64)
    return (1.0 - c1) / (1.0 + (q / (2.0 * c2)) ** c3) + c1


def frequency_grid(shape: tuple[int, int]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Spatial frequencies (cycles per pixel) of an FFT of ``shape``: (fy, fx), broadcastable."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    return fy, fx


def apply_mtf(image: NDArray, c1: float, c2: float, c3: float) -> NDArray[np.float64]:
    """Blur an image by the detector MTF (seed 003, Eq. 5), applied in Fourier space.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Image to blur.
    c1, c2, c3 : float
        MTF parameters, see :func:`mtf`.

    Returns
    -------
    ndarray of float64
        The blurred image; its mean is unchanged (MTF(0) = 1).
    """
    fy, fx = frequency_grid(image.shape)
    q = np.hypot(fy, fx) / 0.5  # in units of Nyquist (0.5 cycles / px)
    return np.real(np.fft.ifft2(np.fft.fft2(image) * mtf(q, c1, c2, c3)))


def poisson_counts(
    expected: NDArray, rng: np.random.Generator, *, dose_scale: float = 1.0
) -> NDArray[np.float64]:
    """Draw detector counts with Poisson statistics.

    Parameters
    ----------
    expected : ndarray
        Expected image (non-negative) in units such that ``expected * dose_scale`` is the mean
        count per pixel.
    rng : numpy.random.Generator
        Random generator (seeded by the caller).
    dose_scale : float
        Counts per unit of ``expected``.

    Returns
    -------
    ndarray of float64
        Counts, ``rng.poisson(expected * dose_scale)``.
    """
    lam = np.clip(np.asarray(expected, dtype=np.float64) * dose_scale, 0.0, None)
    return rng.poisson(lam).astype(np.float64)
