"""Checking that an array is an image the analysis can work on."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray


class InvalidImageError(ValueError):
    """The input is not a 2D grey image that can be analysed; the message says why."""


def as_analysis_image(data: ArrayLike, *, rgb: bool | None = None) -> NDArray[np.float32]:
    """Validate a 2D grey image and return it as float32.

    Parameters
    ----------
    data : array_like
        The image. Any real dtype.
    rgb : bool, optional
        Whether the source says the data is RGB(A) (napari's ``layer.rgb``); when None, a
        trailing axis of length 3 or 4 on a 3D array is taken as colour.

    Returns
    -------
    ndarray of float32, shape (H, W)

    Raises
    ------
    InvalidImageError
        For RGB, stacks, non-2D arrays, empty or tiny images, complex or non-numeric data,
        NaN or inf values, and constant images.

    Examples
    --------
    >>> as_analysis_image(np.arange(64, dtype=np.uint16).reshape(8, 8)).dtype
    dtype('float32')
    """
    arr = np.asarray(data)
    if rgb or (rgb is None and arr.ndim == 3 and arr.shape[-1] in (3, 4)):
        raise InvalidImageError(
            f"the image is RGB(A) (shape {arr.shape}); convert it to a single grey channel first"
        )
    if arr.ndim == 3:
        raise InvalidImageError(
            f"the image is a stack of {arr.shape[0]} frames; analyse one frame (the current one) "
            "or use the batch tools for the whole stack"
        )
    if arr.ndim != 2:
        raise InvalidImageError(f"expected a 2D image, got an array of shape {arr.shape}")
    if arr.size == 0 or min(arr.shape) < 8:
        raise InvalidImageError(f"the image is empty or too small ({arr.shape[0]}×{arr.shape[1]})")
    if np.iscomplexobj(arr) or (not np.issubdtype(arr.dtype, np.number) and arr.dtype != bool):
        raise InvalidImageError(f"the image has a non-real dtype ({arr.dtype})")
    img = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(img)):
        n_bad = int(np.size(img) - np.count_nonzero(np.isfinite(img)))
        raise InvalidImageError(f"the image contains {n_bad} NaN or infinite pixel(s)")
    if float(img.max()) == float(img.min()):
        raise InvalidImageError("the image is constant (no contrast to analyse)")
    return img
