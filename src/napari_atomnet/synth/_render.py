"""Rendering and detector primitives shared by the simulators.

All positions are napari (row, col) = (y, x) pixel coordinates with the pixel-centre convention:
a Gaussian centred on the centre of pixel (10, 20) has y=10.0, x=20.0.  Gaussians are sampled at
pixel centres (not integrated over the pixel), which is the same model the refinement fits.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..core.gaussians import render_gaussians

__all__ = ["apply_mtf", "frequency_grid", "mtf", "poisson_counts", "render_gaussians"]


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
