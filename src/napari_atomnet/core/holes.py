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


def amplitude_z(
    image: ArrayLike,
    positions: ArrayLike,
    sigma: float,
    *,
    sign: float = 1.0,
    subtract: pd.DataFrame | None = None,
) -> NDArray[np.float64]:
    """How many standard errors of amplitude a fixed Gaussian at each position has.

    At each position a round Gaussian of width ``sigma`` plus a constant is fitted (linear least
    squares: position and width held, amplitude and background free) over the pixels within
    ``2 sigma``; the amplitude over its standard error (from the window's residual scatter) is
    the z score.  Windows that reach beyond the image give NaN.  Only the windows are read (no
    copy of the image is made), so it stays cheap on 8k × 8k images.

    Parameters
    ----------
    image : array_like, shape (H, W)
        The image.
    positions : array_like, shape (n, 2)
        (y, x), px.
    sigma : float
        Gaussian width, px.
    sign : float
        1 for bright columns, -1 for dark ones (the windows are multiplied by it).
    subtract : pandas.DataFrame, optional
        Columns to take out of the windows first (their tails would lift the amplitude at a
        site between them): ``y, x, amplitude, sigma_y, sigma_x`` and optionally ``theta``,
        amplitudes in the image's own units; each is evaluated within 3 of its (larger) sigmas
        of its nearest pixel, along each axis.

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
    img = np.asarray(image)
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    z = np.full(len(pos), np.nan)
    h = max(1, int(np.ceil(2.0 * sigma)))
    hh, ww = img.shape
    cy, cx = np.round(pos[:, 0]).astype(int), np.round(pos[:, 1]).astype(int)
    inside = (cy >= h) & (cy < hh - h) & (cx >= h) & (cx < ww - h)
    k = 2 * h + 1
    view = sliding_window_view(img, (k, k))
    offs = np.arange(-h, h + 1, dtype=np.float64)
    columns = _Columns(subtract) if subtract is not None and len(subtract) else None
    all_rows = np.nonzero(inside)[0]
    for start in range(0, len(all_rows), 4096):  # bounded memory for any number of sites
        sel = all_rows[start : start + 4096]
        data = sign * view[cy[sel] - h, cx[sel] - h].astype(np.float64)  # (n, k, k)
        if columns is not None:
            data -= sign * columns.render(cy[sel], cx[sel], offs)
        data = data.reshape(len(sel), -1)
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


class _Columns:
    """Fitted Gaussian columns, rendered into square windows on demand."""

    def __init__(self, table: pd.DataFrame) -> None:
        self.yx = table[["y", "x"]].to_numpy(float)
        self.amp = table["amplitude"].to_numpy(float)
        self.sy = table["sigma_y"].to_numpy(float)
        self.sx = table["sigma_x"].to_numpy(float)
        theta = table["theta"].to_numpy(float) if "theta" in table else np.zeros(len(table))
        self.cos, self.sin = np.cos(theta), np.sin(theta)
        # each column covers the pixels within ceil(3 sigma) of its nearest pixel, a square
        # (as render_gaussians draws it with radius 3)
        self.half = np.ceil(3.0 * np.maximum(self.sy, self.sx))
        self.pixel = np.round(self.yx)
        self.tree = cKDTree(self.yx)
        self.reach = float(np.max(self.half)) + 1.0

    def render(self, cy: NDArray, cx: NDArray, offs: NDArray) -> NDArray[np.float64]:
        """Sum of the columns over windows centred on pixels (cy, cx), shape (n, k, k)."""
        k = len(offs)
        out = np.zeros((len(cy), k, k))
        near = self.tree.query_ball_point(
            np.column_stack([cy, cx]), (self.reach + float(offs[-1])) * np.sqrt(2.0)
        )
        counts = np.fromiter(map(len, near), dtype=np.intp, count=len(near))
        if not counts.sum():
            return out
        window = np.repeat(np.arange(len(cy)), counts)
        col = np.concatenate([np.asarray(c, dtype=np.intp) for c in near if c])
        dy = (cy[window] - self.yx[col, 0])[:, None] + offs[None, :]  # (pairs, k)
        dx = (cx[window] - self.yx[col, 1])[:, None] + offs[None, :]
        half = self.half[col, None]
        in_y = np.abs((cy[window] - self.pixel[col, 0])[:, None] + offs[None, :]) <= half
        in_x = np.abs((cx[window] - self.pixel[col, 1])[:, None] + offs[None, :]) <= half
        vals = np.empty((len(col), k, k))
        # unrotated columns (every isotropic fit) are separable: two 1D profiles per pair
        flat = self.sin[col] == 0.0
        if flat.any():
            gy = np.where(in_y[flat], np.exp(-0.5 * (dy[flat] / self.sy[col[flat], None]) ** 2), 0)
            gx = np.where(in_x[flat], np.exp(-0.5 * (dx[flat] / self.sx[col[flat], None]) ** 2), 0)
            vals[flat] = (self.amp[col[flat], None] * gy)[:, :, None] * gx[:, None, :]
        tilted = ~flat
        if tilted.any():
            c = col[tilted]
            ddy, ddx = dy[tilted][:, :, None], dx[tilted][:, None, :]
            u = ddy * self.cos[c, None, None] + ddx * self.sin[c, None, None]
            v = -ddy * self.sin[c, None, None] + ddx * self.cos[c, None, None]
            r2 = (u / self.sy[c, None, None]) ** 2 + (v / self.sx[c, None, None]) ** 2
            covered = in_y[tilted][:, :, None] & in_x[tilted][:, None, :]
            vals[tilted] = np.where(covered, self.amp[c, None, None] * np.exp(-0.5 * r2), 0.0)
        # the pairs come grouped by window: one reduceat sums each window's columns
        has = np.nonzero(counts)[0]
        out[has] = np.add.reduceat(vals, np.cumsum(counts)[has] - counts[has], axis=0)
        return out


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
    ref = atoms[reference]
    ref_yx = ref[["y", "x"]].to_numpy(float)
    fitted = ref[ref["fit_ok"].to_numpy(bool)] if "fit_ok" in ref else ref.iloc[:0]
    if len(fitted) < NEIGHBOUR_SITES:
        return p
    sy, sx = fitted["sigma_y"].to_numpy(float), fitted["sigma_x"].to_numpy(float)
    sigma = float(np.median(np.sqrt(sy * sx)))

    def z_at(yx: NDArray) -> NDArray[np.float64]:
        # the reference columns' tails are taken out first (they would lift a site between them)
        return amplitude_z(image, yx, sigma, sign=sign, subtract=fitted)

    sites, _ = hole_sites(ref_yx, 2.0 * sigma)
    z_sites = z_at(sites)
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
    z = z_at(yx)
    tested = np.isfinite(z)
    chance = len(null) * norm.sf((z[tested] - centre) / spread)
    p[rows[tested]] = np.minimum(1.0, chance)
    return p
