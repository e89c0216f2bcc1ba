"""Whole analyses, shared by the CLI, the batch tools and the dock widgets.

Nothing here imports napari or Qt: the widgets call these functions from a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from ._provenance import make_provenance
from .core.detect import detect_peaks_classical, estimate_spacing
from .core.image import as_analysis_image

ProgressCallback = Callable[[int, int], None]


@dataclass
class AtomsResult:
    """Atoms found in an image.

    Attributes
    ----------
    atoms : pandas.DataFrame
        One row per atom: ``y, x`` (px, row/col, pixel-centre convention), ``score``, ``class``
        and, after refinement, the fitted Gaussian values and ``fit_ok``.
    provenance : dict
        What made the table (see :func:`napari_atomnet._provenance.make_provenance`).
    spacing : float
        Estimated nearest-neighbour spacing of the dominant sublattice (px).
    """

    atoms: pd.DataFrame
    provenance: dict[str, Any] = field(default_factory=dict)
    spacing: float = float("nan")


def find_atoms(
    image: ArrayLike,
    *,
    refine: bool = True,
    polarity: str = "auto",
    source: str | None = None,
    progress: ProgressCallback | None = None,
) -> AtomsResult:
    """Detect atom columns in an image and refine each by a 2D Gaussian fit.

    Parameters
    ----------
    image : array_like, shape (H, W)
        Grey image; validated by :func:`napari_atomnet.core.image.as_analysis_image`.
    refine : bool
        Refine every peak by a 2D Gaussian fit.
    polarity : {"auto", "bright", "dark"}
        Contrast of the atoms.
    source : str, optional
        Name of the image, recorded in the provenance.
    progress : callable, optional
        ``progress(done, total)`` as steps complete.

    Returns
    -------
    AtomsResult
    """
    img = as_analysis_image(image)
    total = 2 if refine else 1
    spacing = estimate_spacing(img)
    peaks = detect_peaks_classical(img, polarity=polarity)  # type: ignore[arg-type]
    peaks["class"] = 0
    if progress:
        progress(1, total)
    params: dict[str, Any] = {"detector": "classical", "polarity": polarity, "refine": refine}
    atoms = peaks
    if refine and len(peaks):
        from .core.refine import fit_gaussians

        signal = img if _is_bright(img, polarity) else -img
        fit = fit_gaussians(signal, peaks[["y", "x"]].to_numpy())
        atoms = peaks.loc[fit.index].drop(columns=["y", "x"]).join(fit)
        atoms = atoms.reset_index(drop=True)
        if progress:
            progress(2, total)
    provenance = make_provenance("find_atoms", params, source=source)
    provenance["spacing_px"] = spacing
    return AtomsResult(atoms=atoms, provenance=provenance, spacing=spacing)


def _is_bright(img: np.ndarray, polarity: str) -> bool:
    if polarity == "auto":
        from .core.detect import _guess_polarity

        return _guess_polarity(img, 1.0) == "bright"
    return polarity == "bright"
