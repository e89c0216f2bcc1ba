"""Image preprocessing: the local normalisation of seed 003 (Eq. 2–3)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage


def local_normalize(image: ArrayLike, sigma: float, *, eps: float = 1e-6) -> NDArray[np.float32]:
    """Subtractive then divisive local normalisation (seed 003, Eq. 2–3).

    ``I1 = I - G_sigma * I`` removes the local mean (background gradients, thickness changes);
    ``I2 = I1 / sqrt(G_sigma * I1**2)`` divides by the local contrast, so low-dose and high-dose
    images, and HAADF counts and TEM intensities, come out on one scale.  ``sigma`` must be
    clearly larger than the features to keep (a few atom spacings).

    Parameters
    ----------
    image : array_like, shape (H, W)
        Input image (any real dtype).
    sigma : float
        Standard deviation (px) of the Gaussian weighting window.
    eps : float
        Floor of the local contrast, relative to the image's global contrast, so flat regions
        (vacuum) are not blown up into noise.

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
    img = np.asarray(image, dtype=np.float32)
    centred = img - ndimage.gaussian_filter(img, sigma, mode="reflect")
    local_var = ndimage.gaussian_filter(centred * centred, sigma, mode="reflect")
    floor = max(float(np.mean(local_var)) * 1e-2, eps)
    return (centred / np.sqrt(np.maximum(local_var, floor))).astype(np.float32)
