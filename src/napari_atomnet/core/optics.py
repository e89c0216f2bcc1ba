"""Which HRTEM imaging conditions an image of graphene is consistent with.

In phase contrast an atom's look is set by the microscope's defocus and spherical aberration
(seed 003), and a detector adapted to the conditions of an image finds its atoms far better than
one trained over all conditions (``atomnet adapt``).  Users often do not know the defocus to
better than a few nanometres.  The image itself tells a good part of it: the atoms the built-in
detector finds (most of them, at roughly the right places) are a structure model; imaged through
the CTF of a candidate (defocus, Cs) it gives an image that correlates with the recorded one
best near the true conditions.

The match is not unique.  Graphene transfers its information through a few spatial frequencies,
and different (defocus, Cs) pairs that give those frequencies nearly the same phase image the
sheet nearly alike: the scores form a ridge, not a peak.  :func:`fit_imaging_conditions` returns
every grid point whose score is within ``delta`` of the best (:attr:`ConditionsFit.consistent`),
and the adaptation simulates at all of them: a detector for every condition the image allows,
which is still a small part of all conditions.

The model: a phase object of Gaussian atoms (:func:`~napari_atomnet.synth.hrtem.projected_phase`),
its intensity through the CTF (:func:`~napari_atomnet.synth.hrtem.ctf`, no astigmatism, focal
spread 30 Å), compared with the image by the normalised correlation of both after removing what
varies more slowly than a bond length, inside a margin that leaves out the atoms beyond the
image's edge.  Everything here is numpy / scipy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import fft as sfft
from scipy.ndimage import binary_dilation, gaussian_filter
from scipy.spatial import cKDTree

__all__ = ["ConditionsFit", "fit_imaging_conditions"]

#: Side of the central crop that is matched (px): enough atoms, and about 10 s for the grid.
CROP = 256
#: Pixels left out along the crop's edge: the atoms beyond it are not in the structure model.
MARGIN = 32
#: Grid points whose score is within this of the best are consistent with the image.  On the
#: detection benchmark's 10⁴ e/Å² graphene images the truth lies within 0.003 of the best.
DELTA = 0.005
#: Graphene's C-C bond, Å: the scale below which the match looks.
BOND_ANGSTROM = 1.42
#: Largest relative difference between the detected atoms' spacing and graphene's bond accepted
#: by :func:`fit_imaging_conditions` (a pixel size off by that much, or another material).
BOND_TOLERANCE = 0.3


@dataclass
class ConditionsFit:
    """The match of an image against imaging conditions on a (defocus, Cs) grid.

    Attributes
    ----------
    defocus : ndarray, shape (D,)
        Defocus values of the grid, Å (positive: underfocus).
    cs_um : ndarray, shape (C,)
        Cs values of the grid, µm.
    score : ndarray, shape (D, C)
        Normalised correlation of the image with the structure model imaged there; NaN where
        the coarse pass showed the point could not be near the best.
    delta : float
        Points within this of the best score are consistent with the image.
    n_atoms : int
        Atoms in the structure model.
    """

    defocus: NDArray[np.float64]
    cs_um: NDArray[np.float64]
    score: NDArray[np.float64]
    delta: float
    n_atoms: int

    @property
    def best(self) -> tuple[float, float, float]:
        """(defocus Å, Cs µm, score) of the best grid point."""
        i, j = np.unravel_index(np.nanargmax(self.score), self.score.shape)
        return float(self.defocus[i]), float(self.cs_um[j]), float(self.score[i, j])

    def _consistent_mask(self) -> NDArray[np.bool_]:
        return np.nan_to_num(self.score, nan=-np.inf) >= self.best[2] - self.delta

    @property
    def consistent(self) -> NDArray[np.float64]:
        """(K, 2) grid points (defocus Å, Cs µm) within ``delta`` of the best score."""
        i, j = np.nonzero(self._consistent_mask())
        return np.stack([self.defocus[i], self.cs_um[j]], axis=1)

    @property
    def consistent_scores(self) -> NDArray[np.float64]:
        """(K,) scores of :attr:`consistent`, in its order."""
        return self.score[self._consistent_mask()]

    @property
    def steps(self) -> tuple[float, float]:
        """Grid steps (defocus Å, Cs µm); 0 along an axis of one value."""
        return tuple(float(a[1] - a[0]) if len(a) > 1 else 0.0 for a in (self.defocus, self.cs_um))

    def summary(self) -> str:
        """One line: the range of the consistent conditions and the best point."""
        pts = self.consistent
        d, c, s = self.best
        return (
            f"defocus {pts[:, 0].min():g} to {pts[:, 0].max():g} Å, Cs {pts[:, 1].min():g} to "
            f"{pts[:, 1].max():g} µm ({len(pts)} grid points within {self.delta:g} of the best "
            f"match, {d:g} Å, {c:g} µm, correlation {s:.3f}; {self.n_atoms} atoms)"
        )


def fit_imaging_conditions(
    image: ArrayLike,
    atoms: ArrayLike,
    pixel_size_angstrom: float,
    *,
    voltage_kv: float = 80.0,
    defocus_range: tuple[float, float] = (-200.0, 200.0),
    cs_range: tuple[float, float] = (-25.0, 25.0),
    defocus_step: float = 5.0,
    cs_step: float = 1.0,
    delta: float = DELTA,
    focal_spread: float = 30.0,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> ConditionsFit:
    """Score (defocus, Cs) on a grid by how well they image the detected atoms like the image.

    A coarse pass (twice the steps) finds the region of good scores; the fine grid is scored
    only near it.

    Parameters
    ----------
    image : array_like, shape (H, W)
        An HRTEM image of graphene in counts (either contrast; it is not negated).
    atoms : array_like, shape (N, 2)
        The detected atoms (y, x), px (e.g. ``atomnet-hrtem``'s).
    pixel_size_angstrom : float
        Sampling, Å per pixel.
    voltage_kv : float
        Acceleration voltage, kV.
    defocus_range, cs_range : tuple of float
        Grid limits: defocus, Å; Cs, µm.
    defocus_step, cs_step : float
        Grid steps.
    delta : float
        Score margin of the consistent points (see :attr:`ConditionsFit.consistent`).
    focal_spread : float
        RMS focal spread assumed, Å.
    progress : callable, optional
        ``progress(done, total)`` over the grid points scored (the total grows once, after the
        coarse pass).
    cancelled : callable, optional
        Polled between grid points; True raises :class:`InterruptedError`.

    Returns
    -------
    ConditionsFit

    Raises
    ------
    ValueError
        Not a 2D finite image of at least 96 px a side, a pixel size outside 0.03-0.5 Å, or
        fewer than 30 atoms in the matched part.
    """
    from ..synth.hrtem import ctf, image_intensity, projected_phase

    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2 or min(img.shape) < 3 * MARGIN:
        raise ValueError(f"the image must be 2D and at least {3 * MARGIN} px a side")
    if not np.isfinite(img).all():
        raise ValueError("the image has NaN or infinite pixels")
    px = float(pixel_size_angstrom)
    if not 0.03 <= px <= 0.5:
        raise ValueError(f"pixel size must lie in 0.03-0.5 Å, got {px}")
    if not 20.0 <= voltage_kv <= 1000.0:
        raise ValueError(f"voltage must lie in 20-1000 kV, got {voltage_kv}")
    if defocus_step <= 0 or cs_step <= 0:
        raise ValueError("the grid steps must be > 0")
    if not delta >= 0:
        raise ValueError(f"delta must be >= 0, got {delta}")
    yx = np.asarray(atoms, dtype=np.float64).reshape(-1, 2)

    # the central crop, padded so the CTF's spread of the modelled atoms stays inside the grid
    side = min(CROP, *img.shape)
    y0, x0 = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2
    crop = img[y0 : y0 + side, x0 : x0 + side]
    pad = MARGIN + 16
    grid = (sfft.next_fast_len(side + 2 * pad),) * 2
    local = yx - (y0 - pad, x0 - pad)
    inside = np.all((local > -8) & (local < np.array(grid) + 8), axis=1)
    lo, hi = np.array([y0, x0]) + MARGIN, np.array([y0, x0]) + side - MARGIN
    core = np.all((yx >= lo) & (yx < hi), axis=1)
    if int(core.sum()) < 30:
        raise ValueError(
            f"{int(core.sum())} atoms in the matched centre of the image; at least 30 are needed"
        )
    # the candidate images are of graphene: atoms much further apart or closer are another
    # material or a wrong pixel size, and any "best match" would mean nothing
    nn = cKDTree(yx).query(yx[core], k=2)[0][:, 1]
    bond_found = float(np.median(nn)) * px
    if abs(bond_found / BOND_ANGSTROM - 1) > BOND_TOLERANCE:
        raise ValueError(
            f"the atoms found lie {bond_found:.2f} Å apart (median nearest neighbour at "
            f"{px:g} Å/px), graphene's {BOND_ANGSTROM} Å: conditions are matched on graphene "
            "only; check the pixel size"
        )
    spectrum = sfft.fft2(np.exp(1j * projected_phase(grid, local[inside], px)))
    bond = BOND_ANGSTROM / px
    window = (slice(pad, pad + side), slice(pad, pad + side))
    interior = (slice(MARGIN, side - MARGIN),) * 2

    def normalised_detail(a: NDArray) -> NDArray:
        d = (a - gaussian_filter(a, bond, mode="reflect"))[interior]
        d = d - d.mean()
        return d / (np.sqrt((d * d).mean()) + 1e-30)

    observed = normalised_detail(crop)

    def score(defocus: float, cs: float) -> float:
        transfer = ctf(grid, px, defocus, cs, 0.0, 0.0, focal_spread, voltage_kv)
        model = normalised_detail(image_intensity(spectrum, transfer)[window])
        return float((model * observed).mean())

    defocus = np.arange(defocus_range[0], defocus_range[1] + 1e-9, defocus_step)
    cs_um = np.arange(cs_range[0], cs_range[1] + 1e-9, cs_step)
    scores = np.full((len(defocus), len(cs_um)), np.nan)
    done = 0

    def evaluate(points: list[tuple[int, int]], total: int) -> None:
        nonlocal done
        for i, j in points:
            if cancelled is not None and cancelled():
                raise InterruptedError("matching the imaging conditions cancelled")
            if np.isnan(scores[i, j]):
                scores[i, j] = score(defocus[i], cs_um[j])
            done += 1
            if progress is not None:
                progress(done, total)

    coarse = [(i, j) for i in range(0, len(defocus), 2) for j in range(0, len(cs_um), 2)]
    evaluate(coarse, len(coarse))
    # the fine grid around every coarse point that could hold a consistent one
    good = np.nan_to_num(scores, nan=-np.inf) >= np.nanmax(scores) - 3 * delta
    near = binary_dilation(good, np.ones((5, 5), bool))
    fine = [(int(i), int(j)) for i, j in np.argwhere(near & np.isnan(scores))]
    evaluate(fine, len(coarse) + len(fine))
    return ConditionsFit(defocus, cs_um, scores, float(delta), int(core.sum()))
