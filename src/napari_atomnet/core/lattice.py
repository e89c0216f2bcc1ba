"""Unit cells, B sites, polarization displacements and strain from refined atom positions.

Following seed 000, the strong (A-site) columns are organised into unit cells: for every A atom
``p0``, its neighbour ``p1`` along the lattice vector **a** (the "right" neighbour), ``p2`` along
**b** (the "lower" neighbour) and ``p3 = p0 + a + b``.  The weak B column near each cell centre is
taken from the detections or fitted after subtracting the fitted A Gaussians; its displacement
from the centroid of the four corners is the polarization signal.  Strain and rotation follow from
each cell's own lattice vectors against a reference (the median cell, or cells the user chooses).

Conventions: positions are (y, x) = (row, col) pixels.  Strain uses x = col, y = row:
``exx = ∂u_x/∂x``, ``eyy = ∂u_y/∂y``, ``exy = (∂u_x/∂y + ∂u_y/∂x)/2`` and
``rotation = (∂u_y/∂x − ∂u_x/∂y)/2`` in radians (> 0 turns the lattice from +x towards +y, i.e.
clockwise on screen), the same convention as :mod:`napari_atomnet.synth.perovskite`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy.spatial import cKDTree

#: Status of a cell whose corners close into a parallelogram.
OK = "ok"


@dataclass
class Lattice:
    """The result of :func:`analyze_lattice`.

    Attributes
    ----------
    cells : pandas.DataFrame
        One row per unit cell (see :func:`analyze_lattice` for the columns).
    a, b : ndarray, shape (2,)
        The basis vectors (y, x) in pixels.
    reference : ndarray, shape (2, 2)
        Rows: the reference a and b used for strain.
    sublattice_a : ndarray of bool
        Which input atoms were taken as the A sublattice.
    info : dict
        Counts and parameters (for provenance).
    """

    cells: pd.DataFrame
    a: NDArray[np.float64]
    b: NDArray[np.float64]
    reference: NDArray[np.float64]
    sublattice_a: NDArray[np.bool_]
    info: dict[str, Any] = field(default_factory=dict)


def find_basis(
    points: ArrayLike, *, max_vectors: int = 1500, seed: int = 0
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Find the two shortest primitive lattice vectors of a set of lattice points.

    Nearest-neighbour vectors are pooled with their negatives; the most populated clusters of
    vectors (modes) are the lattice vectors.  The shortest well-populated mode is one basis
    vector; the shortest well-populated mode not parallel to it is the other.  This works for any
    in-plane rotation and aspect, and ignores defects that make only a few odd vectors.

    Parameters
    ----------
    points : array_like, shape (N, 2)
        (y, x) positions of one sublattice.
    max_vectors : int
        Candidate vectors examined (random subset) for the mode search.
    seed : int
        Seed of that subset.

    Returns
    -------
    a, b : ndarray, shape (2,)
        (y, x) vectors: **a** points to the "right" neighbour (positive x, the one closer to the
        +x axis) and **b** to the "lower" one (positive y), as in seed 000.

    Raises
    ------
    ValueError
        With fewer than 4 points or no two non-parallel vector families.

    Examples
    --------
    >>> yy, xx = np.mgrid[0:8, 0:8]
    >>> pts = np.column_stack([yy.ravel() * 10.0, xx.ravel() * 12.0])
    >>> a, b = find_basis(pts)
    >>> np.round(a, 6).tolist(), np.round(b, 6).tolist()
    ([0.0, 12.0], [10.0, 0.0])
    """
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    if len(pts) < 4:
        raise ValueError(f"need at least 4 lattice points to find the basis, got {len(pts)}")
    k = min(9, len(pts))
    dist, idx = cKDTree(pts).query(pts, k=k)
    nn = float(np.median(dist[:, 1]))
    vec = (pts[idx[:, 1:]] - pts[:, None, :]).reshape(-1, 2)
    length = np.hypot(vec[:, 0], vec[:, 1])
    vec = vec[(length > 0) & (length < 2.2 * nn)]
    pool = np.concatenate([vec, -vec])
    tree = cKDTree(pool)
    rng = np.random.default_rng(seed)
    cand = vec if len(vec) <= max_vectors else vec[rng.choice(len(vec), max_vectors, False)]
    tol = 0.2 * nn
    counts = np.asarray(tree.query_ball_point(cand, tol, return_length=True))
    # modes: candidates whose neighbourhood is (locally) the most populated; refine by averaging
    order = np.argsort(-counts)
    modes: list[tuple[NDArray, int]] = []
    for i in order:
        if counts[i] < 0.25 * counts[order[0]]:
            break
        v = cand[i]
        if any(min(np.hypot(*(v - m)), np.hypot(*(v + m))) < 2 * tol for m, _ in modes):
            continue
        members = pool[tree.query_ball_point(v, tol)]
        modes.append((members.mean(axis=0), int(counts[i])))
    if len(modes) < 2:
        raise ValueError("no two independent lattice directions found")
    top = max(c for _, c in modes)
    strong = sorted((m for m, c in modes if c >= 0.5 * top), key=lambda m: float(np.hypot(*m)))
    first = strong[0]
    second = None
    for m in strong[1:] + sorted(
        (m for m, c in modes if c < 0.5 * top), key=lambda m: float(np.hypot(*m))
    ):
        cos = abs(np.dot(first, m)) / (np.hypot(*first) * np.hypot(*m))
        if cos < np.cos(np.deg2rad(25)):
            second = m
            break
    if second is None:
        raise ValueError("no two independent lattice directions found")
    return orient_basis(first, second)


def orient_basis(v1: ArrayLike, v2: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Order and sign two lattice vectors as seed 000's "right" (a) and "lower" (b) neighbours.

    Parameters
    ----------
    v1, v2 : array_like, shape (2,)
        Two non-parallel (y, x) vectors.

    Returns
    -------
    a, b : ndarray
        ``a`` is the one closer to the +x axis with ``a_x > 0``; ``b`` has ``b_y > 0``.
    """
    v1 = np.asarray(v1, dtype=float)
    v2 = np.asarray(v2, dtype=float)
    # the vector more aligned with x becomes a
    if abs(v1[1]) / np.hypot(*v1) < abs(v2[1]) / np.hypot(*v2):
        v1, v2 = v2, v1
    a = v1 if v1[1] > 0 or (v1[1] == 0 and v1[0] < 0) else -v1
    b = v2 if v2[0] > 0 or (v2[0] == 0 and v2[1] > 0) else -v2
    return a, b


def check_basis(basis: tuple[ArrayLike, ArrayLike]) -> tuple[NDArray, NDArray]:
    """Return user-given lattice vectors as two arrays, checked.

    Parameters
    ----------
    basis : tuple of array_like
        Two (y, x) vectors, px.

    Returns
    -------
    tuple of ndarray

    Raises
    ------
    ValueError
        Not two finite pairs, shorter than 2 px, or less than 20° apart (no lattice has them).
    """
    try:
        v1, v2 = (np.asarray(v, dtype=float).reshape(2) for v in basis)
    except (TypeError, ValueError):
        raise ValueError("the lattice vectors must be two (y, x) pairs") from None
    if not (np.isfinite(v1).all() and np.isfinite(v2).all()):
        raise ValueError("the lattice vectors must be finite")
    n1, n2 = np.hypot(*v1), np.hypot(*v2)
    if min(n1, n2) < 2.0:
        raise ValueError(f"the lattice vectors must be at least 2 px long, got {min(n1, n2):.3g}")
    sine = abs(v1[0] * v2[1] - v1[1] * v2[0]) / (n1 * n2)
    if sine < np.sin(np.radians(20.0)):
        raise ValueError(
            f"the lattice vectors are {np.degrees(np.arcsin(min(sine, 1.0))):.0f}° from parallel; "
            "a and b must be at least 20° apart"
        )
    return v1, v2


def split_sublattices(atoms: pd.DataFrame) -> NDArray[np.bool_]:
    """Decide which atoms form the A (strong) sublattice.

    With a ``class`` column that has two or more classes, class 0 ("strong") is A.  With one class,
    the atoms are split by brightness: if the fitted amplitudes are clearly bimodal (two clusters
    separated by more than three times their spread), the bright cluster is A; otherwise all atoms
    are taken as one sublattice.

    Parameters
    ----------
    atoms : pandas.DataFrame
        Atoms with ``y, x`` and optionally ``class`` and ``amplitude``.

    Returns
    -------
    ndarray of bool
        True for A atoms.
    """
    n = len(atoms)
    if "class" in atoms and atoms["class"].nunique() >= 2:
        return atoms["class"].to_numpy() == 0
    if "amplitude" not in atoms or n < 8:
        return np.ones(n, bool)
    amp = np.abs(atoms["amplitude"].to_numpy(float))
    ok = np.isfinite(amp) & (amp > 0)
    if ok.sum() < 8:
        return np.ones(n, bool)
    logs = np.log(amp[ok])
    # two-means on log amplitude (1D k-means converges in a few steps from the extremes)
    lo, hi = np.percentile(logs, [10, 90])
    for _ in range(50):
        split = logs > (lo + hi) / 2
        if split.all() or not split.any():
            return np.ones(n, bool)
        new_lo, new_hi = logs[~split].mean(), logs[split].mean()
        if np.isclose(new_lo, lo) and np.isclose(new_hi, hi):
            break
        lo, hi = new_lo, new_hi
    spread = np.sqrt(
        (logs[~split].var() * (~split).sum() + logs[split].var() * split.sum()) / len(logs)
    )
    if hi - lo < 3 * max(spread, 1e-9):
        return np.ones(n, bool)
    out = np.zeros(n, bool)
    out[np.nonzero(ok)[0][split]] = True
    return out


def build_cells(
    points: ArrayLike,
    a: ArrayLike,
    b: ArrayLike,
    *,
    tolerance: float = 0.3,
    closure: float = 0.15,
) -> pd.DataFrame:
    """Build unit cells p0 → p1 (along a), p0 → p2 (along b) and p3 (p0 + a + b).

    A corner is the A atom nearest to its predicted position within ``tolerance`` × the shorter
    lattice vector.  Cells whose four corners exist are kept; those whose edges do not close into a
    parallelogram (opposite edges differ by more than ``closure`` × the shorter lattice vector:
    dislocation cores, badly distorted regions) are flagged ``status = "distorted"``.  Nothing is
    ever aborted.

    Parameters
    ----------
    points : array_like, shape (N, 2)
        (y, x) of the A sublattice.
    a, b : array_like, shape (2,)
        Basis vectors (y, x).
    tolerance : float
        Search radius as a fraction of ``min(|a|, |b|)``.
    closure : float
        Largest difference between opposite edges, as a fraction of ``min(|a|, |b|)``.

    Returns
    -------
    pandas.DataFrame
        One row per cell: ``y, x`` (p0), ``p1_y, p1_x, p2_y, p2_x, p3_y, p3_x``, corner indices
        ``i0..i3`` into ``points``, ``a_y, a_x, b_y, b_x`` (the cell's own lattice vectors: means of
        opposite edges), ``centre_y, centre_x`` (centroid of the corners), ``status``.
    """
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    shorter = min(np.hypot(*a), np.hypot(*b))
    radius = tolerance * shorter
    tree = cKDTree(pts)
    n = len(pts)

    def nearest(targets: NDArray) -> NDArray:
        d, i = tree.query(targets, distance_upper_bound=radius)
        return np.where(np.isfinite(d), i, -1)

    i1 = nearest(pts + a)
    i2 = nearest(pts + b)
    i3 = nearest(pts + a + b)
    has = (i1 >= 0) & (i2 >= 0) & (i3 >= 0) & (i1 != np.arange(n))
    i0 = np.nonzero(has)[0]
    i1, i2, i3 = i1[has], i2[has], i3[has]
    p0, p1, p2, p3 = pts[i0], pts[i1], pts[i2], pts[i3]
    edge_a = ((p1 - p0) + (p3 - p2)) / 2
    edge_b = ((p2 - p0) + (p3 - p1)) / 2
    gap = np.maximum(np.hypot(*((p1 - p0) - (p3 - p2)).T), np.hypot(*((p2 - p0) - (p3 - p1)).T))
    distinct = (i1 != i2) & (i1 != i3) & (i2 != i3) & (i2 != i0) & (i3 != i0)
    status = np.where((gap <= closure * shorter) & distinct, OK, "distorted")
    centre = (p0 + p1 + p2 + p3) / 4
    return pd.DataFrame(
        {
            "y": p0[:, 0],
            "x": p0[:, 1],
            "p1_y": p1[:, 0],
            "p1_x": p1[:, 1],
            "p2_y": p2[:, 0],
            "p2_x": p2[:, 1],
            "p3_y": p3[:, 0],
            "p3_x": p3[:, 1],
            "i0": i0,
            "i1": i1,
            "i2": i2,
            "i3": i3,
            "a_y": edge_a[:, 0],
            "a_x": edge_a[:, 1],
            "b_y": edge_b[:, 0],
            "b_x": edge_b[:, 1],
            "centre_y": centre[:, 0],
            "centre_x": centre[:, 1],
            "status": status,
        }
    )


def cell_strain(cells: pd.DataFrame, reference: ArrayLike) -> pd.DataFrame:
    """Strain and rotation of every cell against reference lattice vectors.

    The deformation gradient ``F`` maps the reference vectors onto the cell's own:
    ``[a_cell b_cell] = F [a_ref b_ref]`` (as (x, y) column vectors); then
    ``ε = (F + Fᵀ)/2 − I`` and ``rotation = (F_yx − F_xy)/2`` (small-strain; radians).

    Parameters
    ----------
    cells : pandas.DataFrame
        With ``a_y, a_x, b_y, b_x``.
    reference : array_like, shape (2, 2)
        Rows: reference a and b as (y, x).

    Returns
    -------
    pandas.DataFrame
        Columns ``exx, eyy, exy, rotation`` aligned with ``cells``.
    """
    ref = np.asarray(reference, dtype=float)
    # columns are vectors in (x, y) order
    r = np.array([[ref[0, 1], ref[1, 1]], [ref[0, 0], ref[1, 0]]])
    local = np.stack(
        [
            np.stack([cells["a_x"].to_numpy(), cells["b_x"].to_numpy()], axis=-1),
            np.stack([cells["a_y"].to_numpy(), cells["b_y"].to_numpy()], axis=-1),
        ],
        axis=1,
    )  # (n, 2, 2): rows x, y; columns a, b
    f = local @ np.linalg.inv(r)
    return pd.DataFrame(
        {
            "exx": f[:, 0, 0] - 1.0,
            "eyy": f[:, 1, 1] - 1.0,
            "exy": 0.5 * (f[:, 0, 1] + f[:, 1, 0]),
            "rotation": 0.5 * (f[:, 1, 0] - f[:, 0, 1]),
        },
        index=cells.index,
    )


def strain_errors(
    cells: pd.DataFrame, reference: ArrayLike, err_y: ArrayLike, err_x: ArrayLike
) -> pd.DataFrame:
    """Return the standard errors of every cell's strain and rotation from its corners' errors.

    The cell's vectors are linear in its four corners (means of opposite edges), and so is
    ``F`` (:func:`cell_strain`); the corners' errors, independent between corners and axes,
    carry through exactly (the reference, a median over many cells, is taken as exact).

    Parameters
    ----------
    cells : pandas.DataFrame
        From :func:`build_cells`.
    reference : array_like, shape (2, 2)
        Rows: reference a and b as (y, x).
    err_y, err_x : array_like, shape (n_cells, 4)
        Standard errors (px) of the corners p0..p3 along y and x.

    Returns
    -------
    pandas.DataFrame
        ``exx_err, eyy_err, exy_err, rotation_err`` aligned with ``cells``.
    """
    ref = np.asarray(reference, dtype=float)
    r = np.array([[ref[0, 1], ref[1, 1]], [ref[0, 0], ref[1, 0]]])
    # rows of F: (a_c, b_c) @ inv(r) for c = x, y; (a_c, b_c) = corners_c @ M.T
    m = 0.5 * np.array([[-1.0, 1.0, -1.0, 1.0], [-1.0, -1.0, 1.0, 1.0]])
    g = m.T @ np.linalg.inv(r)  # (4, 2): dF[c, j] / dp_k,c
    var_x = (np.asarray(err_x, dtype=float) ** 2) @ (g**2)  # (n, 2): var F[x, 0], F[x, 1]
    var_y = (np.asarray(err_y, dtype=float) ** 2) @ (g**2)  # (n, 2): var F[y, 0], F[y, 1]
    shear = 0.5 * np.sqrt(var_x[:, 1] + var_y[:, 0])  # F_xy and F_yx are independent
    return pd.DataFrame(
        {
            "exx_err": np.sqrt(var_x[:, 0]),
            "eyy_err": np.sqrt(var_y[:, 1]),
            "exy_err": shear,
            "rotation_err": shear,
        },
        index=cells.index,
    )


def fit_bsites(
    image: ArrayLike,
    cells: pd.DataFrame,
    atoms: pd.DataFrame,
    is_a: NDArray[np.bool_],
    *,
    search: float = 0.3,
) -> pd.DataFrame:
    """Locate the B column of every cell.

    A detected non-A atom within ``search`` × the shorter cell edge of the cell centre is used
    as it is (``bsite_source = "detected"``).  Otherwise a Gaussian is fitted near the centre after
    subtracting the fitted A Gaussians from the image, so the bright A tails do not pull the weak
    B peak (``"fitted"``).

    Parameters
    ----------
    image : array_like, shape (H, W)
        The image, atoms bright (pass ``-image`` for dark-contrast images).
    cells : pandas.DataFrame
        From :func:`build_cells`.
    atoms : pandas.DataFrame
        All refined atoms (``y, x`` and, for A atoms, ``amplitude, sigma_y, sigma_x, theta,
        background`` where available).
    is_a : ndarray of bool
        A-sublattice mask over ``atoms``.
    search : float
        Search radius for detected B atoms, fraction of the shorter cell edge.

    Returns
    -------
    pandas.DataFrame
        ``bsite_y, bsite_x, bsite_y_err, bsite_x_err`` (standard errors from the Gaussian fit,
        NaN where unknown), ``bsite_source, bsite_fit_ok`` aligned with ``cells``.
    """
    from .gaussians import render_gaussians
    from .refine import fit_gaussians

    img = np.asarray(image, dtype=np.float64)
    n = len(cells)
    centre = cells[["centre_y", "centre_x"]].to_numpy(float)
    edge = np.minimum(np.hypot(cells["a_y"], cells["a_x"]), np.hypot(cells["b_y"], cells["b_x"]))
    out_y = np.full(n, np.nan)
    out_x = np.full(n, np.nan)
    err = np.full((n, 2), np.nan)  # standard errors of the B positions (px)
    source = np.full(n, "none", dtype=object)
    ok = np.zeros(n, bool)
    others = atoms[~is_a]
    need_fit = np.ones(n, bool)
    if len(others) and n:
        d, i = cKDTree(others[["y", "x"]].to_numpy(float)).query(centre)
        hit = d <= search * edge.to_numpy()
        out_y[hit] = others["y"].to_numpy(float)[i[hit]]
        out_x[hit] = others["x"].to_numpy(float)[i[hit]]
        if {"y_err", "x_err"} <= set(others.columns):
            err[hit] = others[["y_err", "x_err"]].to_numpy(float)[i[hit]]
        source[hit] = "detected"
        ok[hit] = others["fit_ok"].to_numpy(bool)[i[hit]] if "fit_ok" in others else True
        need_fit = ~hit
    if need_fit.any():
        residual = img
        a_atoms = atoms[is_a]
        shape_cols = {"amplitude", "sigma_y", "sigma_x"}
        if len(a_atoms) and shape_cols <= set(a_atoms.columns):
            good = a_atoms[a_atoms.get("fit_ok", pd.Series(True, index=a_atoms.index)).astype(bool)]
            model = render_gaussians(
                img.shape,
                good["y"],
                good["x"],
                good["amplitude"],
                good["sigma_y"],
                good["sigma_x"],
                good["theta"] if "theta" in good else 0.0,
            )
            residual = img - model
        fit = fit_gaussians(
            residual,
            centre[need_fit],
            window=np.maximum(2.0, 0.3 * edge.to_numpy()[need_fit]),
            isotropic=True,
            drop_merged=False,
        )
        idx = np.nonzero(need_fit)[0]
        out_y[idx] = fit["y"].to_numpy(float)
        out_x[idx] = fit["x"].to_numpy(float)
        err[idx] = fit[["y_err", "x_err"]].to_numpy(float)
        source[idx] = "fitted"
        moved = np.hypot(out_y[idx] - centre[idx, 0], out_x[idx] - centre[idx, 1])
        ok[idx] = fit["fit_ok"].to_numpy(bool) & (moved <= search * edge.to_numpy()[idx])
    return pd.DataFrame(
        {
            "bsite_y": out_y,
            "bsite_x": out_x,
            "bsite_y_err": err[:, 0],
            "bsite_x_err": err[:, 1],
            "bsite_source": source,
            "bsite_fit_ok": ok,
        },
        index=cells.index,
    )


def _reference_cells(mask: ArrayLike | None, good: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Return the cells whose median lattice is the strain reference: the good ones in ``mask``.

    Without a mask every good cell (every cell when none is good).
    """
    if mask is None:
        return good if good.any() else np.ones(len(good), bool)
    if np.shape(mask) != good.shape:
        raise ValueError(
            f"a strain reference mask needs one value per cell ({len(good)}), "
            f"got shape {np.shape(mask)}"
        )
    chosen = np.asarray(mask, bool) & good
    if not chosen.any():
        raise ValueError("the strain reference region contains no complete cell")
    return chosen


def analyze_lattice(
    image: ArrayLike | None,
    atoms: pd.DataFrame,
    *,
    basis: tuple[ArrayLike, ArrayLike] | None = None,
    reference: ArrayLike | None = None,
    reference_region: Sequence[ArrayLike] | None = None,
    tolerance: float = 0.3,
    bsites: bool = True,
    polarity: str = "auto",
    pixel_size_nm: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Lattice:
    """Find unit cells, B sites, displacements and strain from refined atoms.

    Parameters
    ----------
    image : array_like or None
        The image the atoms come from (needed to fit B sites that were not detected).
    atoms : pandas.DataFrame
        Refined atoms: ``y, x`` and optionally ``class``, ``amplitude``, ``sigma_y``, ``sigma_x``,
        ``theta``, ``fit_ok``.
    basis : tuple of array_like, optional
        Override the automatically found basis vectors (a, b) as (y, x).
    reference : array_like, optional
        Reference for strain: a (2, 2) array of (a, b) rows, or a boolean mask over the cells to
        take the median of.  Default: the median cell.
    reference_region : sequence of array_like, optional
        Polygons, each (K, 2) vertices (y, x) in px, K >= 3: the strain reference is the median
        of the complete cells whose centres lie inside any of them (e.g. the substrate under a
        film, or a region known to be unstrained).  Not together with ``reference``.
    tolerance : float
        Corner search radius, fraction of the shorter lattice vector.
    bsites : bool
        Locate B sites and displacements.
    polarity : {"auto", "bright", "dark"}
        Atom contrast, for the B-site fits.
    pixel_size_nm : float, optional
        Calibration; adds ``disp_y_pm, disp_x_pm, disp_pm`` columns.
    progress : callable, optional
        ``progress(done, total)`` over the steps.
    cancelled : callable, optional
        Polled between steps; True raises :class:`InterruptedError`.

    Returns
    -------
    Lattice
        ``cells`` columns: those of :func:`build_cells`, then ``bsite_y, bsite_x, bsite_y_err,
        bsite_x_err, bsite_source, bsite_fit_ok, disp_y, disp_x, disp_magnitude, disp_angle``
        (degrees, from +x towards +y), ``disp_y_err, disp_x_err`` (standard errors from the
        Gaussian fits' errors of B and its four corners; NaN without them),
        optional ``*_pm``, ``exx, eyy, exy, rotation`` and their standard errors ``*_err``
        (:func:`strain_errors`; NaN when the atoms have no position errors), and ``fit_ok``
        (cell closes and, with B sites, its B site is found), ``reference_cell`` (the cell is
        one of those the strain reference is the median of).  ``info["reference_cells"]``
        counts them.
    """
    if reference is not None and reference_region is not None:
        raise ValueError("give the strain reference as vectors, cells or a region, not two")
    steps = 4 if bsites else 3

    def step(k: int) -> None:
        if cancelled is not None and cancelled():
            raise InterruptedError("lattice analysis cancelled")
        if progress is not None:
            progress(k, steps)

    if len(atoms) < 4:
        raise ValueError(f"need at least 4 atoms for a lattice, got {len(atoms)}")
    atoms = atoms.reset_index(drop=True)
    is_a = split_sublattices(atoms)
    a_pts = atoms.loc[is_a, ["y", "x"]].to_numpy(float)
    if basis is None:
        a, b = find_basis(a_pts)
    else:
        a, b = orient_basis(*check_basis(basis))
    step(1)
    cells = build_cells(a_pts, a, b, tolerance=tolerance)
    a_index = np.nonzero(is_a)[0]
    for k in range(4):  # corner indices into the input atoms table
        cells[f"i{k}"] = a_index[cells[f"i{k}"].to_numpy()]
    # the corners' position errors (n_cells, 4) per axis, when the fits gave them
    corners = cells[[f"i{k}" for k in range(4)]].to_numpy()
    corner_err = {
        axis: atoms[f"{axis}_err"].to_numpy(float)[corners]
        if f"{axis}_err" in atoms
        else np.full(corners.shape, np.nan)
        for axis in ("y", "x")
    }
    step(2)
    good = (cells["status"] == OK).to_numpy()
    if reference_region is not None:
        centres = cells[["centre_y", "centre_x"]].to_numpy(float)
        reference = cells_in_region(centres, reference_region)
    if reference is not None and np.asarray(reference).dtype != bool:
        # given vectors: no cell is the reference
        chosen = np.zeros(len(cells), bool)
        ref = np.asarray(reference, dtype=float).reshape(2, 2)
    else:
        chosen = _reference_cells(reference, good)
        ref = _median_reference(cells[chosen], a, b)
    cells = cells.join(cell_strain(cells, ref))
    cells = cells.join(strain_errors(cells, ref, corner_err["y"], corner_err["x"]))
    step(3)
    cells["reference_cell"] = chosen
    fit_ok = good.copy()
    if bsites:
        if image is None:
            raise ValueError("the image is needed to locate B sites")
        img = np.asarray(image, dtype=np.float64)
        if polarity == "auto":
            from .detect import atom_polarity

            polarity = atom_polarity(img, a_pts)
        signal = img if polarity == "bright" else -img
        fitted_atoms = atoms
        if polarity == "dark" and "amplitude" in atoms:
            fitted_atoms = atoms.assign(amplitude=-atoms["amplitude"])
        b_sites = fit_bsites(signal, cells, fitted_atoms, is_a)
        cells = cells.join(b_sites)
        disp_y = cells["bsite_y"] - cells["centre_y"]
        disp_x = cells["bsite_x"] - cells["centre_x"]
        cells["disp_y"] = disp_y
        cells["disp_x"] = disp_x
        cells["disp_magnitude"] = np.hypot(disp_y, disp_x)
        cells["disp_angle"] = np.degrees(np.arctan2(disp_y, disp_x))
        # standard errors: the B position's and the mean of four corners' (independent fits)
        for axis in ("y", "x"):
            cells[f"disp_{axis}_err"] = np.sqrt(
                cells[f"bsite_{axis}_err"] ** 2 + (corner_err[axis] ** 2).sum(axis=1) / 16.0
            )
        if pixel_size_nm:
            for c in ("disp_y", "disp_x", "disp_magnitude", "disp_y_err", "disp_x_err"):
                cells[f"{c}_pm"] = cells[c] * pixel_size_nm * 1000.0
        fit_ok &= cells["bsite_fit_ok"].to_numpy(bool)
        step(4)
    cells["fit_ok"] = fit_ok
    info = {
        "n_atoms": len(atoms),
        "n_a_sites": int(is_a.sum()),
        "n_cells": len(cells),
        "n_cells_ok": int(fit_ok.sum()),
        "n_distorted": int((~good).sum()),
        "a": a.tolist(),
        "b": b.tolist(),
        "reference": ref.tolist(),
        "reference_cells": int(chosen.sum()),
        "tolerance": tolerance,
    }
    return Lattice(cells=cells, a=a, b=b, reference=ref, sublattice_a=is_a, info=info)


def cells_in_region(points: ArrayLike, polygons: Sequence[ArrayLike]) -> NDArray[np.bool_]:
    """Return which points lie inside any of the polygons.

    Parameters
    ----------
    points : array_like, shape (N, 2)
        Positions (y, x), px.
    polygons : sequence of array_like
        Each (K, 2) vertices (y, x), px, K >= 3, in order around the polygon (a rectangle
        as its four corners).

    Returns
    -------
    ndarray of bool, shape (N,)

    Raises
    ------
    ValueError
        No polygon, or one with fewer than three vertices or non-finite ones.

    Examples
    --------
    >>> square = [[0, 0], [0, 10], [10, 10], [10, 0]]
    >>> cells_in_region([[5, 5], [5, 15]], [square]).tolist()
    [True, False]
    """
    from skimage.measure import points_in_poly

    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    if len(polygons) == 0:
        raise ValueError("the region has no polygon")
    inside = np.zeros(len(pts), bool)
    for poly in polygons:
        vertices = np.asarray(poly, dtype=float)
        if vertices.ndim != 2 or vertices.shape[1] != 2 or len(vertices) < 3:
            raise ValueError("a region polygon needs at least 3 vertices (y, x)")
        if not np.isfinite(vertices).all():
            raise ValueError("a region polygon has non-finite vertices")
        inside |= points_in_poly(pts, vertices)
    return inside


def _median_reference(cells: pd.DataFrame, a: NDArray, b: NDArray) -> NDArray[np.float64]:
    if len(cells) == 0:
        return np.stack([a, b])
    return np.array(
        [
            [cells["a_y"].median(), cells["a_x"].median()],
            [cells["b_y"].median(), cells["b_x"].median()],
        ]
    )


def suggest_missing_sites(
    image: ArrayLike,
    atoms: pd.DataFrame,
    *,
    basis: tuple[ArrayLike, ArrayLike] | None = None,
    tolerance: float = 0.3,
    min_relative_amplitude: float = 0.3,
    margin: float = 3.0,
) -> pd.DataFrame:
    """Predict lattice sites that have no atom but show image contrast (missed peaks).

    Every atom predicts its neighbours one lattice vector away (±a, ±b, within its own
    sublattice, so weak B columns predict B sites).  Predictions with no atom within ``tolerance``
    × the shorter lattice vector are merged, fitted by a local 2D Gaussian, and kept when the fit
    succeeds near the prediction with an amplitude of at least ``min_relative_amplitude`` × the
    median amplitude of that sublattice: a real column there that the model missed (vacancies and
    vacuum have no such peak and are not suggested).

    Parameters
    ----------
    image : array_like, shape (H, W)
        The image.
    atoms : pandas.DataFrame
        Current atoms (``y, x``; ``class`` and ``amplitude`` help).
    basis : tuple, optional
        Lattice vectors (a, b); found from the A sublattice when omitted.
    tolerance : float
        Fraction of the shorter lattice vector within which a site counts as occupied.
    min_relative_amplitude : float
        Contrast needed for a suggestion, relative to the sublattice's median amplitude.
    margin : float
        Sites closer than this (px) to the image border are not suggested.

    Returns
    -------
    pandas.DataFrame
        ``y, x`` (snapped to the peak), ``y_pred, x_pred``, ``class``, ``amplitude``,
        ``relative_amplitude``, sorted by decreasing relative amplitude.
    """
    from .detect import atom_polarity
    from .refine import fit_gaussians

    img = np.asarray(image, dtype=np.float64)
    atoms = atoms.reset_index(drop=True)
    columns = ["y", "x", "y_pred", "x_pred", "class", "amplitude", "relative_amplitude"]
    empty = pd.DataFrame({c: pd.Series(dtype=float) for c in columns})
    if len(atoms) < 4:
        return empty
    is_a = split_sublattices(atoms)
    if basis is None:
        a, b = find_basis(atoms.loc[is_a, ["y", "x"]].to_numpy(float))
    else:
        a, b = orient_basis(*basis)
    radius = tolerance * min(np.hypot(*a), np.hypot(*b))
    pts = atoms[["y", "x"]].to_numpy(float)
    tree = cKDTree(pts)
    h, w = img.shape
    groups = [is_a, ~is_a] if (~is_a).any() else [is_a]
    polarity = atom_polarity(img, pts)
    signal = img if polarity == "bright" else -img
    found = []
    for g, mask in enumerate(groups):
        own = pts[mask]
        if len(own) == 0:
            continue
        pred = np.concatenate([own + v for v in (a, -a, b, -b)])
        inside = (
            (pred[:, 0] >= margin)
            & (pred[:, 0] <= h - 1 - margin)
            & (pred[:, 1] >= margin)
            & (pred[:, 1] <= w - 1 - margin)
        )
        pred = pred[inside]
        free = np.isinf(tree.query(pred, distance_upper_bound=radius)[0])
        pred = pred[free]
        if len(pred) == 0:
            continue
        pred = _merge_points(pred, radius)
        fit = fit_gaussians(
            signal, pred, window=max(2.0, radius), isotropic=True, drop_merged=False
        )
        group_amp = atoms.loc[mask, "amplitude"].abs() if "amplitude" in atoms else None
        ref = (
            float(np.nanmedian(group_amp))
            if group_amp is not None and len(group_amp)
            else (float(np.nanmedian(fit["amplitude"])) if len(fit) else 1.0)
        )
        moved = np.hypot(fit["y"].to_numpy() - pred[:, 0], fit["x"].to_numpy() - pred[:, 1])
        rel = fit["amplitude"].to_numpy(float) / max(ref, 1e-12)
        keep = fit["fit_ok"].to_numpy(bool) & (moved <= radius) & (rel >= min_relative_amplitude)
        cls = int(atoms.loc[mask, "class"].mode().iloc[0]) if "class" in atoms else g
        found.append(
            pd.DataFrame(
                {
                    "y": fit["y"].to_numpy()[keep],
                    "x": fit["x"].to_numpy()[keep],
                    "y_pred": pred[keep, 0],
                    "x_pred": pred[keep, 1],
                    "class": cls,
                    "amplitude": (
                        fit["amplitude"].to_numpy()[keep] * (1 if polarity == "bright" else -1)
                    ),
                    "relative_amplitude": rel[keep],
                }
            )
        )
    if not found:
        return empty
    out = pd.concat(found, ignore_index=True)
    # a site predicted from both sublattices or twice: keep one
    out = out.sort_values("relative_amplitude", ascending=False, kind="stable")
    keep = np.ones(len(out), bool)
    pos = out[["y", "x"]].to_numpy()
    for i, j in sorted(cKDTree(pos).query_pairs(radius)):
        if keep[i] and keep[j]:
            keep[j] = False
    return out[keep].reset_index(drop=True)


def _merge_points(points: NDArray, radius: float) -> NDArray:
    """Replace clusters of points closer than ``radius`` by their means."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = cKDTree(points).query_pairs(radius, output_type="ndarray")
    n = len(points)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    sums = np.zeros((label.max() + 1, 2))
    np.add.at(sums, label, points)
    return sums / np.bincount(label)[:, None]


def displacement_precision(cells: pd.DataFrame) -> tuple[float, str]:
    """Return the median per-axis standard error of the good cells' displacements, and its unit.

    In pm when the lattice was calibrated (``disp_y_err_pm``), in px otherwise; NaN without
    errors.

    Parameters
    ----------
    cells : pandas.DataFrame
        ``Lattice.cells``.
    """
    from .refine import median_standard_error

    suffix, unit = ("_pm", "pm") if "disp_y_err_pm" in cells else ("", "px")
    good = cells[cells["fit_ok"]] if "fit_ok" in cells else cells
    return median_standard_error(good, f"disp_y_err{suffix}", f"disp_x_err{suffix}"), unit
