"""Overlay figures: detected atoms drawn on the image, as a PNG."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from ._atomic import atomic_path


def save_overlay_png(
    image: ArrayLike,
    atoms: pd.DataFrame,
    path: str | os.PathLike,
    *,
    title: str | None = None,
    overwrite: bool = False,
    dpi: int = 150,
) -> Path:
    """Draw atoms on the image and save a PNG (atomically).

    Refined atoms (``fit_ok`` True) are drawn red and fallbacks to the detection centre green, as in
    seed 000; without a ``fit_ok`` column every atom is drawn red.

    Parameters
    ----------
    image : array_like, shape (H, W)
        Image shown in grey, with 0.5–99.5 percentile contrast limits.
    atoms : pandas.DataFrame
        Table with ``y, x`` (px) and optionally ``fit_ok``.
    path : path-like
        PNG destination.
    title : str, optional
        Figure title.
    overwrite : bool
        Replace an existing file.
    dpi : int
        Resolution.

    Returns
    -------
    pathlib.Path
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    img = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(img, [0.5, 99.5])
    h, w = img.shape
    fig = Figure(figsize=(6.0, 6.0 * h / w + (0.4 if title else 0.0)))
    ax = fig.add_axes((0, 0, 1, 1 if not title else 1 - 0.4 / (6.0 * h / w + 0.4)))
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    ok = atoms["fit_ok"].to_numpy(bool) if "fit_ok" in atoms else np.ones(len(atoms), bool)
    size = max(2.0, 1500.0 / max(h, w))
    ax.scatter(atoms["x"][ok], atoms["y"][ok], s=size, c="#ff3030", linewidths=0, label="fitted")
    if (~ok).any():
        ax.scatter(
            atoms["x"][~ok], atoms["y"][~ok], s=size, c="#30ff30", linewidths=0, label="fallback"
        )
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return Path(path)
