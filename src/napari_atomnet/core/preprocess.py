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
        # block sums in float64 (the variance below subtracts two large numbers), one image
        # row of each block at a time: no float64 copy of the whole image
        sums, squares = np.zeros((2, hb, padded.shape[1]))
        row = np.empty((hb, padded.shape[1]))
        for i in range(k):
            row[...] = padded[i::k]
            sums += row
            row *= row
            squares += row
        mean, sq = (
            ndimage.gaussian_filter(
                a.reshape(hb, wb, k).sum(axis=2) / k**2, self.sigma / k, mode="reflect"
            )
            for a in (sums, squares)
        )
        var = np.maximum(sq - mean**2, 0.0)
        if floor is None:
            floor = 1e-2 * float(var.mean())
        self.floor = max(float(floor), 1e-12)
        self._mean = mean.astype(np.float32)
        self._inv_std = (1.0 / np.sqrt(np.maximum(var, self.floor))).astype(np.float32)

    def apply(
        self, window: ArrayLike, offset: tuple[int, int] = (0, 0), *, scale: float = 1.0
    ) -> NDArray[np.float32]:
        """Normalise a window of the image whose first pixel is at ``offset`` (row, col).

        The window may extend beyond the image (reflection-padded tiles): the maps are
        extended with their edge values there.  ``scale`` multiplies the result (−1 turns
        dark atoms bright) at no extra pass over the window.
        """
        win = np.asarray(window, dtype=np.float32)
        if win.size == 0:
            return win.copy()
        r0, r1, fr = self._axis(offset[0], win.shape[0], self._mean.shape[0])
        c0, c1, fc = self._axis(offset[1], win.shape[1], self._mean.shape[1])
        # interpolate along x on the coarse rows first (hb × W); then, per output row, blend
        # two of those rows: the same arithmetic per pixel as blending four gathered (H, W)
        # corner maps, at a fraction of the memory traffic
        # (C order: the gathers along x leave them column-major, and their rows are read below)
        mean_x, inv_std_x = (
            np.ascontiguousarray(grid[:, c0] * (1 - fc) + grid[:, c1] * fc)
            for grid in (self._mean, self._inv_std)
        )
        if scale != 1.0:
            inv_std_x *= np.float32(scale)  # exact for ±1: the sign does not round
        gr, fr = (1 - fr)[:, None], fr[:, None]
        out = np.empty(win.shape, np.float32)
        # Output rows come in runs that blend the same two coarse rows (a block of ``k`` rows):
        # per run, broadcast those two rows (they stay in cache) rather than gather full-size
        # copies of them; at most _ROWS rows per step bounds the scratch memory.
        starts = np.union1d(np.flatnonzero(np.diff(r0)) + 1, np.arange(0, len(r0), _ROWS))
        stops = np.append(starts[1:], len(r0))
        scratch = np.empty((2, int((stops - starts).max()), win.shape[1]), np.float32)
        for s, e in zip(starts.tolist(), stops.tolist(), strict=True):
            o, t, u = out[s:e], scratch[0, : e - s], scratch[1, : e - s]
            np.multiply(mean_x[r0[s]], gr[s:e], out=o)
            np.multiply(mean_x[r1[s]], fr[s:e], out=t)
            o += t  # the local mean
            np.subtract(win[s:e], o, out=o)
            np.multiply(inv_std_x[r0[s]], gr[s:e], out=t)
            np.multiply(inv_std_x[r1[s]], fr[s:e], out=u)
            t += u  # 1 / the local standard deviation
            o *= t
        return out

    def _axis(self, start: int, n: int, n_coarse: int) -> tuple[np.ndarray, ...]:
        k = self.block
        pos = (np.arange(start, start + n, dtype=np.float64) - (k - 1) / 2.0) / k
        pos = np.clip(pos, 0.0, n_coarse - 1.0)
        i0 = np.minimum(np.floor(pos).astype(int), max(n_coarse - 2, 0))
        i1 = np.minimum(i0 + 1, n_coarse - 1)
        frac = (pos - i0).astype(np.float32)
        return i0, i1, frac


_ROWS = 64  # most rows per step of LocalNormalizer.apply


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
