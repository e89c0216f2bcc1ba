"""Empty sites of a column arrangement, and how much signal a detection there really has.

A detector that has learnt lattices also learns where columns *usually* are: at the centre of
a perovskite's A-site square there is a B column.  Shown a lattice whose cell centres are empty
(rock salt along [100], a plain square lattice in ABF), it can still propose faint columns at a
few of those centres, exactly where the noise happens to look like one.  Each such proposal,
tested alone, can look significant: among a thousand empty centres the noisiest few reach three
or four standard errors by chance.  The sites themselves tell the truth: fitted at *every* empty
centre, the amplitudes of an empty sublattice scatter around zero, those of an occupied one sit
well above it.  This module measures that, and gives each detection at an empty site the chance
that the noisiest of that many empty sites would show as much signal (a look-elsewhere, or
family-wise, p-value).

Everything here is numpy / scipy only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import ArrayLike, NDArray
from scipy.spatial import cKDTree
from scipy.stats import norm

from .gaussians import render_gaussians

__all__ = ["amplitude_z", "empty_site_pvalues", "hole_sites"]

#: A site's neighbourhood, for "are the sites around here empty": this many nearest sites.
NEIGHBOUR_SITES = 25
#: The sites of a neighbourhood count as occupied when their median amplitude z reaches this
#: (empty sublattices measure about 0, occupied ones 5-10 in the benchmark's perovskites).
OCCUPIED_Z = 1.0
#: A detection sits at a site when it lies within this fraction of the column spacing of it.
SITE_RADIUS = 0.3


def hole_sites(
    points: ArrayLike, min_distance: ArrayLike, *, max_nn: float = 1.05, merge: bool = True
) -> tuple[NDArray[np.float64], NDArray[np.intp]]:
    """Find the holes of a column arrangement: Voronoi vertices far from every column.

    A Voronoi vertex (the circumcentre of a Delaunay triangle of the columns) is a point of
    locally largest distance ``R`` to the columns: the centre of an empty square cell, of a
    hexagon, of a vacancy.  It counts as a hole when ``min_distance <= R <= max_nn * nn`` for
    its nearest column (outside that column's blob; hull triangles with far-away circumcentres
    dropped).  With ``merge``, circumcentres closer than a tenth of the spacing to one already
    kept (the two triangles of a square cell) are one hole.

    Parameters
    ----------
    points : array_like, shape (n, 2)
        Column positions (y, x), px.
    min_distance : float or array_like, shape (n,)
        Least distance of a hole from its nearest column (per column, or one for all), px.
    max_nn : float
        Largest distance of a hole from its nearest column, in that column's nearest-neighbour
        distances.
    merge : bool
        Merge near-coincident circumcentres (for counting sites; training weights, which mark
        disks around every circumcentre, do not need it).

    Returns
    -------
    centres : ndarray, shape (m, 2)
        (y, x) of the holes.
    nearest : ndarray of intp, shape (m,)
        Index of each hole's nearest column in ``points``.

    Examples
    --------
    >>> yy, xx = np.mgrid[0:5, 0:5] * 10.0
    >>> centres, _ = hole_sites(np.column_stack([yy.ravel(), xx.ravel()]), 2.0)
    >>> len(centres), bool(np.allclose(centres % 10, 5))
    (16, True)
    """
    from scipy.spatial import Delaunay, QhullError

    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    empty = np.zeros((0, 2)), np.zeros(0, dtype=np.intp)
    if len(pts) < 3:
        return empty
    distinct = np.unique(pts, axis=0)
    try:
        tri = Delaunay(distinct)
    except (QhullError, ValueError):  # collinear or too few distinct columns
        return empty
    a, b, c = (distinct[tri.simplices[:, k]] for k in range(3))
    # circumcentres, relative to a
    ba, ca = b - a, c - a
    d = 2.0 * (ba[:, 0] * ca[:, 1] - ba[:, 1] * ca[:, 0])
    ok = np.abs(d) > 1e-9
    nb, nc = (ba**2).sum(1), (ca**2).sum(1)
    cy = (ca[:, 1] * nb - ba[:, 1] * nc) / np.where(ok, d, 1.0)
    cx = (ba[:, 0] * nc - ca[:, 0] * nb) / np.where(ok, d, 1.0)
    centres = a[ok] + np.column_stack([cy, cx])[ok]
    tree = cKDTree(pts)
    dist, idx = tree.query(centres)
    nn = tree.query(pts, k=2)[0][:, 1]
    least = np.broadcast_to(np.asarray(min_distance, dtype=np.float64), (len(pts),))[idx]
    keep = (dist >= least) & (dist <= max_nn * nn[idx])
    centres, idx = centres[keep], idx[keep]
    if merge and len(centres) > 1:
        later = np.array(
            [j for i, j in cKDTree(centres).query_pairs(0.1 * float(np.median(nn)))], dtype=np.intp
        )
        first = np.setdiff1d(np.arange(len(centres)), later)
        centres, idx = centres[first], idx[first]
    return centres, idx


def amplitude_z(signal: ArrayLike, positions: ArrayLike, sigma: float) -> NDArray[np.float64]:
    """How many standard errors of amplitude a fixed Gaussian at each position has.

    At each position a round Gaussian of width ``sigma`` plus a constant is fitted (linear least
    squares: position and width held, amplitude and background free) over the pixels within
    ``2 sigma``; the amplitude over its standard error (from the window's residual scatter) is
    the z score.  Windows that reach beyond the image or hold NaN give NaN.

    Parameters
    ----------
    signal : array_like, shape (H, W)
        Image with bright columns (negate dark-column images).
    positions : array_like, shape (n, 2)
        (y, x), px.
    sigma : float
        Gaussian width, px.

    Returns
    -------
    ndarray, shape (n,)
        The z scores.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> yy, xx = np.mgrid[0:32, 0:32]
    >>> img = 5 * np.exp(-((yy - 16) ** 2 + (xx - 16) ** 2) / 8) + rng.normal(0, 1, (32, 32))
    >>> z = amplitude_z(img, [[16, 16], [6, 6]], 2.0)
    >>> bool(z[0] > 5), bool(abs(z[1]) < 3)
    (True, True)
    """
    img = np.asarray(signal, dtype=np.float64)
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    z = np.full(len(pos), np.nan)
    h = max(1, int(np.ceil(2.0 * sigma)))
    hh, ww = img.shape
    cy, cx = np.round(pos[:, 0]).astype(int), np.round(pos[:, 1]).astype(int)
    inside = (cy >= h) & (cy < hh - h) & (cx >= h) & (cx < ww - h)
    if not inside.any():
        return z
    sel = np.nonzero(inside)[0]
    k = 2 * h + 1
    data = sliding_window_view(img, (k, k))[cy[sel] - h, cx[sel] - h].reshape(len(sel), -1)
    offs = np.arange(-h, h + 1, dtype=np.float64)
    dy = (cy[sel] - pos[sel, 0])[:, None, None] + offs[None, :, None]
    dx = (cx[sel] - pos[sel, 1])[:, None, None] + offs[None, None, :]
    g = np.exp(-(dy**2 + dx**2) / (2.0 * sigma**2)).reshape(len(sel), -1)
    n = float(k * k)
    s_g, s_gg = g.sum(1), (g * g).sum(1)
    s_d, s_gd = data.sum(1), (g * data).sum(1)
    det = s_gg * n - s_g**2
    amp = (n * s_gd - s_g * s_d) / det
    bg = (s_gg * s_d - s_g * s_gd) / det
    rss = ((data - amp[:, None] * g - bg[:, None]) ** 2).sum(1)
    var_amp = rss / (n - 2.0) * n / det
    with np.errstate(invalid="ignore", divide="ignore"):
        z[sel] = amp / np.sqrt(var_amp)
    return z


def empty_site_pvalues(
    image: ArrayLike,
    atoms: pd.DataFrame,
    reference: ArrayLike,
    candidates: ArrayLike,
    *,
    polarity: str = "bright",
) -> NDArray[np.float64]:
    """Chance that an empty site shows the signal of each candidate detection at a hole.

    The holes of the ``reference`` columns (:func:`hole_sites`: empty cell centres, hexagon
    centres, vacancies) are each given an amplitude z score (:func:`amplitude_z`) in the image
    minus the reference columns' fitted Gaussians.  Around each hole, the median z of its
    :data:`NEIGHBOUR_SITES` nearest holes says whether the holes there are occupied (a B
    sublattice: median above :data:`OCCUPIED_Z`) or empty.  The z scores of the empty holes are
    the null distribution (their median and MAD-based spread); a candidate within
    :data:`SITE_RADIUS` spacings of an empty hole gets the family-wise p-value of its own z
    among that many empty holes: ``min(1, n_empty * P(null z >= z))``.

    Parameters
    ----------
    image : array_like, shape (H, W)
        The image.
    atoms : pandas.DataFrame
        Refined atoms (``y, x`` and, for the reference rows, the fit: ``amplitude, sigma_y,
        sigma_x, theta, fit_ok``; amplitudes in the image's own units, as
        :func:`napari_atomnet.pipeline.refine_atoms` reports them).
    reference : array_like of bool, shape (n,)
        The columns whose holes are tested (the strong class).
    candidates : array_like of bool, shape (n,)
        The detections to test.
    polarity : {"bright", "dark"}
        Atom contrast.

    Returns
    -------
    ndarray, shape (n,)
        The p-value of each candidate at an empty hole; NaN for every other row (not a
        candidate, not at a hole, holes there occupied, or too few holes to judge).
    """
    n = len(atoms)
    p = np.full(n, np.nan)
    reference = np.asarray(reference, dtype=bool)
    candidates = np.asarray(candidates, dtype=bool) & ~reference
    if not candidates.any() or reference.sum() < NEIGHBOUR_SITES:
        return p
    sign = 1.0 if polarity == "bright" else -1.0
    signal = sign * np.asarray(image, dtype=np.float64)
    ref = atoms[reference]
    ref_yx = ref[["y", "x"]].to_numpy(float)
    fitted = ref[ref["fit_ok"].to_numpy(bool)] if "fit_ok" in ref else ref.iloc[:0]
    if len(fitted) < NEIGHBOUR_SITES:
        return p
    sy, sx = fitted["sigma_y"].to_numpy(float), fitted["sigma_x"].to_numpy(float)
    sigma = float(np.median(np.sqrt(sy * sx)))
    # 3 sigma of each column's tail is enough here: what is left is 1 % of its amplitude
    residual = signal - render_gaussians(
        signal.shape,
        fitted["y"],
        fitted["x"],
        sign * fitted["amplitude"].to_numpy(float),
        sy,
        sx,
        fitted["theta"] if "theta" in fitted else 0.0,
        radius=3.0,
    )
    sites, _ = hole_sites(ref_yx, 2.0 * sigma)
    z_sites = amplitude_z(residual, sites, sigma)
    measured = np.isfinite(z_sites)
    sites, z_sites = sites[measured], z_sites[measured]
    if len(sites) < NEIGHBOUR_SITES:
        return p
    tree = cKDTree(sites)
    _, around = tree.query(sites, k=NEIGHBOUR_SITES)
    empty = np.median(z_sites[around], axis=1) < OCCUPIED_Z
    null = z_sites[empty]
    if len(null) < NEIGHBOUR_SITES:
        return p
    centre = float(np.median(null))
    spread = 1.4826 * float(np.median(np.abs(null - centre)))
    if not spread > 0:
        return p
    spacing = float(np.median(cKDTree(ref_yx).query(ref_yx, k=2)[0][:, 1]))
    rows = np.nonzero(candidates)[0]
    yx = atoms[["y", "x"]].to_numpy(float)[rows]
    dist, site = tree.query(yx)
    at_empty = (dist <= SITE_RADIUS * spacing) & empty[site]
    rows, yx = rows[at_empty], yx[at_empty]
    z = amplitude_z(residual, yx, sigma)
    tested = np.isfinite(z)
    chance = len(null) * norm.sf((z[tested] - centre) / spread)
    p[rows[tested]] = np.minimum(1.0, chance)
    return p
