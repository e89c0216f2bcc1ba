"""Image preprocessing: the local normalisation of seed 003 (Eq. 2–3)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage


class LocalNormalizer:
    """Subtractive then divisive local normalisation (seed 003, Eq. 2–3), tile by tile.

    ``I1 = I - G_sigma * I`` removes the local mean (background gradients, thickness changes) and
    ``I2 = I1 / sqrt(local variance)`` divides by the local contrast, so low-dose and high-dose
    images, HAADF counts and TEM intensities come out on one scale.  ``sigma`` must be clearly
    larger than the features to keep (a few atom spacings).

    The local mean and variance (``G*I`` and ``G*I² − (G*I)²``, which equals Eq. 3's
    ``G*(I − G*I)²`` where the background is smooth on the scale of ``sigma``) are computed once for
    the whole image on a coarse grid (blocks of about ``sigma / 4`` px) and interpolated bilinearly
    to every pixel.  This costs O(1) per pixel whatever ``sigma`` is, and any tile of the image is
    normalised exactly as the whole image would be.

    Parameters
    ----------
    image : array_like, shape (H, W)
        The whole image (any real dtype).
    sigma : float
        Standard deviation (px) of the Gaussian weighting window.
    floor : float, optional
        Lower bound of the local variance, so flat regions (vacuum) are not blown up into noise;
        by default 1 % of the image's mean local variance.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> img = rng.normal(100, 5, (64, 64))
    >>> norm = LocalNormalizer(img, sigma=8)
    >>> np.allclose(norm.apply(img[10:30, 20:50], (10, 20)), norm.apply(img)[10:30, 20:50])
    True
    """

    def __init__(self, image: ArrayLike, sigma: float, *, floor: float | None = None) -> None:
        img = np.asarray(image, dtype=np.float32)
        self.sigma = float(sigma)
        self.block = k = max(1, int(self.sigma // 4))
        h, w = img.shape
        ph, pw = (-h) % k, (-w) % k
        padded = np.pad(img, ((0, ph), (0, pw)), mode="symmetric") if ph or pw else img
        hb, wb = padded.shape[0] // k, padded.shape[1] // k
        blocks = padded.reshape(hb, k, wb, k).astype(np.float64)
        mean = ndimage.gaussian_filter(blocks.mean(axis=(1, 3)), self.sigma / k, mode="reflect")
        sq = ndimage.gaussian_filter((blocks**2).mean(axis=(1, 3)), self.sigma / k, mode="reflect")
        var = np.maximum(sq - mean**2, 0.0)
        if floor is None:
            floor = 1e-2 * float(var.mean())
        self.floor = max(float(floor), 1e-12)
        self._mean = mean.astype(np.float32)
        self._inv_std = (1.0 / np.sqrt(np.maximum(var, self.floor))).astype(np.float32)

    def apply(self, window: ArrayLike, offset: tuple[int, int] = (0, 0)) -> NDArray[np.float32]:
        """Normalise a window of the image whose first pixel is at ``offset`` (row, col).

        The window may extend beyond the image (reflection-padded tiles): the maps are
        extended with their edge values there.
        """
        win = np.asarray(window, dtype=np.float32)
        rows = self._axis(offset[0], win.shape[0], self._mean.shape[0])
        cols = self._axis(offset[1], win.shape[1], self._mean.shape[1])
        mean = _bilinear(self._mean, rows, cols)
        inv_std = _bilinear(self._inv_std, rows, cols)
        return ((win - mean) * inv_std).astype(np.float32, copy=False)

    def _axis(self, start: int, n: int, n_coarse: int) -> tuple[np.ndarray, ...]:
        k = self.block
        pos = (np.arange(start, start + n, dtype=np.float64) - (k - 1) / 2.0) / k
        pos = np.clip(pos, 0.0, n_coarse - 1.0)
        i0 = np.minimum(np.floor(pos).astype(int), max(n_coarse - 2, 0))
        i1 = np.minimum(i0 + 1, n_coarse - 1)
        frac = (pos - i0).astype(np.float32)
        return i0, i1, frac


def _bilinear(grid: np.ndarray, rows: tuple, cols: tuple) -> np.ndarray:
    r0, r1, fr = rows
    c0, c1, fc = cols
    # interpolate along x on the coarse rows first (hb × W), then pick and blend two of those
    # rows per output row: the same arithmetic per pixel as blending four gathered (H, W)
    # corner maps, at a fraction of the memory traffic
    along_x = grid[:, c0] * (1 - fc) + grid[:, c1] * fc
    return along_x[r0] * (1 - fr)[:, None] + along_x[r1] * fr[:, None]


def local_normalize(
    image: ArrayLike, sigma: float, *, floor: float | None = None
) -> NDArray[np.float32]:
    """Normalise a whole image locally (seed 003, Eq. 2–3); see :class:`LocalNormalizer`.

    Parameters
    ----------
    image : array_like, shape (H, W)
        Input image (any real dtype).
    sigma : float
        Standard deviation (px) of the Gaussian weighting window.
    floor : float, optional
        Lower bound of the local variance (default: 1 % of the mean local variance).

    Returns
    -------
    ndarray of float32
        Zero local mean, unit local standard deviation.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> out = local_normalize(rng.normal(100, 5, (64, 64)), sigma=8)
    >>> bool(abs(out.mean()) < 0.1 and abs(out.std() - 1) < 0.2)
    True
    """
    return LocalNormalizer(image, sigma, floor=floor).apply(image)


def normalization_sigma(
    image: ArrayLike,
    *,
    factor: float = 3.0,
    minimum: float = 16.0,
    maximum: float = 120.0,
    fallback: float = 48.0,
    max_crop: int = 1024,
    spacing: float | None = None,
) -> float:
    """Choose the local-normalisation window from the image's lattice spacing.

    The window must be clearly longer than the atom spacing (seed 003): ``factor`` × the spacing
    estimated from the autocorrelation of a central crop, clipped to [minimum, maximum]; images
    without a clear periodicity (amorphous, particles) get ``fallback``.

    Parameters
    ----------
    image : array_like, shape (H, W)
        The image.
    factor, minimum, maximum, fallback : float
        See above (px).
    max_crop : int
        Largest central crop used for the estimate (keeps it fast on huge images).
    spacing : float, optional
        The spacing (px) when the caller already has it (e.g. once per movie): then nothing is
        estimated here.  NaN means "no clear periodicity", as from the estimate.

    Returns
    -------
    float
        Gaussian sigma in pixels.
    """
    from .detect import estimate_spacing

    if spacing is None:
        spacing = estimate_spacing(image, max_crop=max_crop)
    if not np.isfinite(spacing):
        return float(fallback)
    return float(np.clip(factor * spacing, minimum, maximum))
