"""Accuracy metrics for detection, localization and segmentation.

Point matching, detection and localization scores, the Cramér–Rao bound of a Gaussian column
position, and segmentation overlap scores (seed 001).

Points are napari (row, col) = (y, x) pixel coordinates.  Everything here is numpy / scipy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components, min_weight_full_bipartite_matching
from scipy.spatial import cKDTree

__all__ = [
    "detection_scores",
    "dice",
    "gaussian_crlb",
    "gaussian_crlb_many",
    "interior_points",
    "iou",
    "localization_error",
    "match_points",
    "mean_iou",
    "pixel_accuracy",
]


# --------------------------------------------------------------------------------------------
# point matching
# --------------------------------------------------------------------------------------------
def _as_points(points: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = np.asarray(points, dtype=np.float64)
    if arr.size == 0:
        ndim = arr.shape[-1] if arr.ndim == 2 else 2
        return np.zeros((0, ndim), dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite coordinates")
    return arr


# components with more candidate pairs than this are solved on a sparse graph (memory)
_DENSE_LIMIT = 4_000_000


def _sparse_assignment(
    li: NDArray[np.intp], lj: NDArray[np.intp], d: NDArray[np.float64], n: int, m: int
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Max-cardinality, min-distance matching of a large sparse bipartite graph.

    Augmented to a graph that always has a perfect matching: found ``i`` may take a private
    dummy column at penalty P, truth ``j`` a private dummy row at penalty P, and the dummies of
    a real edge (i, j) pair up at no cost.  A perfect matching costs
    ``sum(d) + P * (n + m - 2 * pairs)``, so with P above any sum of distances the optimum has
    the most pairs, then the least distance.  Every weight is shifted by 1 (all perfect
    matchings have n + m edges) so no edge has weight zero.
    """
    penalty = d.sum() + 1.0
    rows = np.concatenate([li, np.arange(n), n + np.arange(m), n + lj])
    cols = np.concatenate([lj, m + np.arange(n), np.arange(m), m + li])
    w = np.concatenate([d, np.full(n, penalty), np.full(m, penalty), np.zeros(li.size)]) + 1.0
    graph = csr_matrix((w, (rows, cols)), shape=(n + m, m + n))
    r, c = min_weight_full_bipartite_matching(graph)
    real = (r < n) & (c < m)
    return r[real].astype(np.intp), c[real].astype(np.intp)


def match_points(
    found: ArrayLike, truth: ArrayLike, radius: float
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp]]:
    """Match found points to true points one-to-one within a radius, optimally.

    Only pairs at a distance ``<= radius`` may be matched.  Among all one-to-one matchings the
    one with the largest number of pairs is chosen and, among those, the one with the smallest
    total distance (a greedy nearest-first matching can miss both).  The bipartite graph of the
    allowed pairs is built with :class:`scipy.spatial.cKDTree`, split into connected components
    (:func:`scipy.sparse.csgraph.connected_components`), and each component with more than one
    edge is solved by :func:`scipy.optimize.linear_sum_assignment` with forbidden pairs given a
    cost larger than any feasible matching, so 100 000 points take well under a second when the
    radius is below the typical spacing.  A component with more than 4 million candidate pairs
    (a radius much larger than the spacing) is solved on its sparse graph with
    :func:`scipy.sparse.csgraph.min_weight_full_bipartite_matching` instead, to bound memory.

    Parameters
    ----------
    found : array_like, shape (N, D)
        Detected points, e.g. (y, x) in pixels.
    truth : array_like, shape (M, D)
        True points in the same coordinates.
    radius : float
        Largest distance of a matched pair.

    Returns
    -------
    pairs : ndarray of int, shape (K, 2)
        ``[found_index, truth_index]`` of each matched pair, sorted by found index.
    unmatched_found : ndarray of int
        Indices into ``found`` with no partner (false positives), sorted.
    unmatched_truth : ndarray of int
        Indices into ``truth`` with no partner (false negatives), sorted.

    Examples
    --------
    >>> pairs, fp, fn = match_points([[0, 0.9], [0, -1.0]], [[0, 0], [0, 2]], radius=1.3)
    >>> pairs.tolist(), fp.tolist(), fn.tolist()
    ([[0, 1], [1, 0]], [], [])
    """
    f = _as_points(found, "found")
    t = _as_points(truth, "truth")
    n, m = len(f), len(t)
    empty = np.zeros((0, 2), dtype=np.intp)
    if radius < 0 or not np.isfinite(radius):
        raise ValueError(f"radius must be a finite non-negative number, got {radius}")
    if n == 0 or m == 0:
        return empty, np.arange(n, dtype=np.intp), np.arange(m, dtype=np.intp)
    if f.shape[1] != t.shape[1]:
        raise ValueError(f"found has {f.shape[1]} coordinates per point, truth {t.shape[1]}")

    # all pairs within the radius (the structured array keeps zero distances)
    sdm = cKDTree(f).sparse_distance_matrix(cKDTree(t), radius, output_type="ndarray")
    ei = sdm["i"].astype(np.intp)
    ej = sdm["j"].astype(np.intp)
    ed = sdm["v"].astype(np.float64)
    if ei.size == 0:
        return empty, np.arange(n, dtype=np.intp), np.arange(m, dtype=np.intp)

    # connected components of the bipartite graph (found nodes 0..n-1, truth nodes n..n+m-1)
    graph = coo_matrix((np.ones(ei.size), (ei, ej + n)), shape=(n + m, n + m))
    _, comp = connected_components(graph, directed=False)
    edge_comp = comp[ei]
    n_edges = np.bincount(edge_comp, minlength=comp.max() + 1)

    # components made of one edge: that edge is the match
    single = n_edges[edge_comp] == 1
    out_f = [ei[single]]
    out_t = [ej[single]]

    # the others: a small assignment problem each
    multi = np.nonzero(~single)[0]
    if multi.size:
        order = multi[np.argsort(edge_comp[multi], kind="stable")]
        cuts = np.nonzero(np.diff(edge_comp[order]))[0] + 1
        for group in np.split(order, cuts):
            gi, gj, gd = ei[group], ej[group], ed[group]
            uf, li = np.unique(gi, return_inverse=True)
            ut, lj = np.unique(gj, return_inverse=True)
            if uf.size * ut.size > _DENSE_LIMIT:
                r, c = _sparse_assignment(li, lj, gd, uf.size, ut.size)
            else:
                # forbidden pairs cost more than any feasible matching, so the number of pairs
                # is maximised first and the total distance minimised second
                big = (gd.sum() + 1.0) * (min(uf.size, ut.size) + 1)
                cost = np.full((uf.size, ut.size), big)
                cost[li, lj] = gd
                r, c = linear_sum_assignment(cost)
                ok = cost[r, c] < big
                r, c = r[ok], c[ok]
            out_f.append(uf[r])
            out_t.append(ut[c])

    fi = np.concatenate(out_f)
    tj = np.concatenate(out_t)
    order = np.argsort(fi, kind="stable")
    pairs = np.stack([fi[order], tj[order]], axis=1).astype(np.intp)
    un_f = np.setdiff1d(np.arange(n, dtype=np.intp), pairs[:, 0])
    un_t = np.setdiff1d(np.arange(m, dtype=np.intp), pairs[:, 1])
    return pairs, un_f, un_t


def detection_scores(
    found: ArrayLike,
    truth: ArrayLike,
    radius: float,
    *,
    shape: tuple[int, int] | None = None,
    border: float = 0.0,
) -> dict[str, float]:
    """Score found points against the truth (matched by :func:`match_points`).

    Parameters
    ----------
    found, truth : array_like, shape (N, D) and (M, D)
        Detected and true points.
    radius : float
        Largest distance of a matched pair (a true positive).
    shape : tuple of int, optional
        Image (H, W); needed with ``border``.
    border : float
        Width (px) of a band along the image edge left out of the scoring.  A column whose centre
        lies just outside the image is partly visible, and a detector rightly finds it at the
        edge, while a ground truth that lists only centres inside the image does not have it; a
        band of about half the atom spacing makes the score independent of that convention.
        The points are matched in full first; then a pair counts (tp) when its true point lies
        inside the band's line, and an unmatched point (fp or fn) when it lies inside.  So a
        column just inside the line whose detection lies just across it is found, not missed
        and falsely detected at once.

    Returns
    -------
    dict
        ``tp``, ``fp``, ``fn`` (int), ``precision`` = tp / (tp + fp), ``recall`` = tp / (tp +
        fn), ``f1`` = 2 tp / (2 tp + fp + fn), ``n_found``, ``n_truth``.  Empty inputs: when both
        sets are empty all three scores are 1.0 (nothing to find, nothing wrong); when only one
        is empty the scores are 0.0 (a detector finding nothing on an image with atoms, or
        finding atoms in an empty image, scores zero).

    Examples
    --------
    >>> s = detection_scores([[0, 0], [5, 5], [9, 9]], [[0, 0.5], [5, 5]], radius=1.0)
    >>> s["tp"], s["fp"], s["fn"], round(s["f1"], 3)
    (2, 1, 0, 0.8)
    """
    f = _as_points(found, "found")
    t = _as_points(truth, "truth")
    f_in, t_in = np.ones(len(f), dtype=bool), np.ones(len(t), dtype=bool)
    if border > 0:
        if shape is None:
            raise ValueError("detection_scores: a border band needs the image shape")
        f_in, t_in = _interior(f, shape, border), _interior(t, shape, border)
    pairs, un_f, un_t = match_points(f, t, radius)
    tp = int(t_in[pairs[:, 1]].sum()) if len(pairs) else 0
    fp, fn = int(f_in[un_f].sum()), int(t_in[un_t].sum())
    if tp + fp + fn == 0:
        precision = recall = f1 = 1.0
    else:
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2.0 * tp / (2.0 * tp + fp + fn)
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "n_found": int(f_in.sum()),
        "n_truth": int(t_in.sum()),
    }


def interior_points(points: ArrayLike, shape: tuple[int, int], border: float) -> NDArray:
    """Keep the (y, x) points at least ``border`` px inside an image of ``shape``.

    Examples
    --------
    >>> interior_points([[1.0, 5.0], [5.0, 5.0], [5.0, 9.5]], (10, 10), 2.0).tolist()
    [[5.0, 5.0]]
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return p[_interior(p, shape, border)]


def _interior(p: NDArray, shape: tuple[int, int], border: float) -> NDArray:
    """Mask of the (y, x) points at least ``border`` px inside an image of ``shape``."""
    h, w = shape
    return (
        (p[:, 0] >= border)
        & (p[:, 1] >= border)
        & (p[:, 0] <= h - 1 - border)
        & (p[:, 1] <= w - 1 - border)
    )


def localization_error(found: ArrayLike, truth: ArrayLike, radius: float) -> dict[str, float]:
    """Position error of the matched pairs (found minus truth), by :func:`match_points`.

    Parameters
    ----------
    found, truth : array_like, shape (N, 2) and (M, 2)
        Detected and true (y, x) positions in pixels.
    radius : float
        Largest distance of a matched pair.

    Returns
    -------
    dict
        ``n`` (matched pairs); ``rmse``: the 2D radial root-mean-square distance
        ``sqrt(mean(dy**2 + dx**2))`` (so ``rmse**2 == rmse_y**2 + rmse_x**2``; for an isotropic
        error of per-axis std s it is ``s * sqrt(2)``); ``rmse_y``, ``rmse_x``: the per-axis rms
        errors; ``bias_y``, ``bias_x``: the mean signed errors; ``mean_distance`` and
        ``max_distance``.  All float values are NaN when nothing matched.

    Examples
    --------
    >>> e = localization_error([[0.0, 0.3], [5.4, 5.0]], [[0, 0], [5, 5]], radius=1.0)
    >>> round(e["rmse"], 3), round(e["rmse_y"], 3), round(e["bias_x"], 3)
    (0.354, 0.283, 0.15)
    """
    f = _as_points(found, "found")
    t = _as_points(truth, "truth")
    for arr, name in ((f, "found"), (t, "truth")):
        if arr.shape[1] != 2:
            raise ValueError(f"{name} must be (N, 2) (y, x) positions, got {arr.shape}")
    pairs, _, _ = match_points(f, t, radius)
    nan = float("nan")
    if len(pairs) == 0:
        keys = ("rmse", "rmse_y", "rmse_x", "bias_y", "bias_x", "mean_distance", "max_distance")
        return {"n": 0, **dict.fromkeys(keys, nan)}
    d = f[pairs[:, 0]] - t[pairs[:, 1]]
    dist = np.hypot(d[:, 0], d[:, 1])
    return {
        "n": len(pairs),
        "rmse": float(np.sqrt(np.mean(dist**2))),
        "rmse_y": float(np.sqrt(np.mean(d[:, 0] ** 2))),
        "rmse_x": float(np.sqrt(np.mean(d[:, 1] ** 2))),
        "bias_y": float(np.mean(d[:, 0])),
        "bias_x": float(np.mean(d[:, 1])),
        "mean_distance": float(np.mean(dist)),
        "max_distance": float(np.max(dist)),
    }


# --------------------------------------------------------------------------------------------
# Cramér–Rao lower bound of a Gaussian column position
# --------------------------------------------------------------------------------------------
_PARAM_NAMES = ("y", "x", "amplitude", "sigma", "sigma_y", "sigma_x", "background")


def _expand_estimate(estimate: Sequence[str], round_: bool) -> tuple[str, ...]:
    names: list[str] = []
    for p in estimate:
        if p not in _PARAM_NAMES:
            raise ValueError(f"unknown parameter {p!r}; choose from {_PARAM_NAMES}")
        if p == "sigma":
            new = ["sigma"] if round_ else ["sigma_y", "sigma_x"]
        elif p in ("sigma_y", "sigma_x") and round_:
            raise ValueError(f"{p!r} needs an elliptical model (give sigma_x)")
        else:
            new = [p]
        names.extend(q for q in new if q not in names)
    if "y" not in names or "x" not in names:
        raise ValueError("estimate must contain 'y' and 'x'")
    return tuple(names)


def _window_shape(window: int | tuple[int, int] | None, sy: NDArray, sx: NDArray) -> tuple:
    if window is None:
        h = int(np.ceil(5.0 * max(float(np.max(sy)), float(np.max(sx)))))
        return (2 * h + 1, 2 * h + 1)
    if np.isscalar(window):
        return (int(window), int(window))
    wy, wx = window  # type: ignore[misc]
    return (int(wy), int(wx))


def gaussian_crlb_many(
    amplitude: ArrayLike,
    sigma_y: ArrayLike,
    sigma_x: ArrayLike | None = None,
    background: ArrayLike = 0.0,
    *,
    window: int | tuple[int, int] | None = None,
    offset: ArrayLike = (0.0, 0.0),
    dose_scale: float = 1.0,
    estimate: Sequence[str] = ("y", "x", "amplitude", "sigma", "background"),
) -> dict[str, Any]:
    """Cramér–Rao lower bounds of the positions of many Gaussian columns (vectorized).

    See :func:`gaussian_crlb` for the model; every argument except ``window``, ``dose_scale``
    and ``estimate`` may be an array of N values (``offset`` of shape (N, 2)), broadcast
    together.

    Parameters
    ----------
    amplitude, sigma_y, sigma_x, background : array_like
        Model parameters per column (image units; ``sigma_x=None``: round columns).
    window : int or (int, int), optional
        Fitting window size in pixels (rows, cols), shared by all columns; default a square of
        side ``2 * ceil(5 * max sigma) + 1``.
    offset : array_like, shape (2,) or (N, 2)
        Column centre relative to the window centre, in pixels.
    dose_scale : float
        Counts per image unit.
    estimate : sequence of str
        Free parameters, see :func:`gaussian_crlb`.

    Returns
    -------
    dict
        ``"y"``, ``"x"``: arrays (N,) of the position bounds (px); ``"std"``: a dict of the
        bound of every estimated parameter; ``"fisher"``: (N, P, P); ``"params"``: the P names.

    Examples
    --------
    >>> b = gaussian_crlb_many([100.0, 400.0], 1.5, background=5.0, window=11)
    >>> bool(b["y"][0] > b["y"][1])
    True
    """
    round_ = sigma_x is None
    a, sy, sx, bg = np.broadcast_arrays(
        np.atleast_1d(np.asarray(amplitude, dtype=np.float64)),
        np.atleast_1d(np.asarray(sigma_y, dtype=np.float64)),
        np.atleast_1d(np.asarray(sigma_y if round_ else sigma_x, dtype=np.float64)),
        np.atleast_1d(np.asarray(background, dtype=np.float64)),
    )
    off = np.asarray(offset, dtype=np.float64).reshape(-1, 2)
    n = max(a.size, off.shape[0])
    a, sy, sx, bg = (np.broadcast_to(v, (n,)) for v in (a, sy, sx, bg))
    off = np.broadcast_to(off, (n, 2))
    if np.any(sy <= 0) or np.any(sx <= 0):
        raise ValueError("sigma must be positive")
    if np.any(a <= 0):
        raise ValueError("amplitude must be positive")
    if np.any(bg < 0):
        raise ValueError("background must be non-negative")
    if dose_scale <= 0:
        raise ValueError("dose_scale must be positive")
    names = _expand_estimate(estimate, round_)
    wy, wx = _window_shape(window, sy, sx)
    if wy < 1 or wx < 1:
        raise ValueError("window must be at least one pixel")

    # pixel centres relative to the column centre: (N, wy, wx)
    ry = (np.arange(wy) - (wy - 1) / 2.0)[None, :, None] - off[:, 0, None, None]
    rx = (np.arange(wx) - (wx - 1) / 2.0)[None, None, :] - off[:, 1, None, None]
    syb, sxb = sy[:, None, None], sx[:, None, None]
    ab, bgb = a[:, None, None], bg[:, None, None]
    g = np.exp(-0.5 * ((ry / syb) ** 2 + (rx / sxb) ** 2))
    mu = bgb + ab * g  # expected value in image units
    ag = ab * g
    deriv = {
        "y": ag * ry / syb**2,
        "x": ag * rx / sxb**2,
        "amplitude": g,
        "sigma": ag * (ry**2 + rx**2) / syb**3,
        "sigma_y": ag * ry**2 / syb**3,
        "sigma_x": ag * rx**2 / sxb**3,
        "background": np.ones_like(g),
    }
    d = np.stack([deriv[p] for p in names], axis=1)  # (N, P, wy, wx)
    if np.any(mu <= 0):
        raise ValueError("the expected image is zero somewhere in the window (underflow)")
    # counts = dose_scale * mu, so I = dose_scale * sum(d_i d_j / mu)
    fisher = dose_scale * np.einsum("npyx,nqyx->npq", d, d / mu[:, None])
    cov = np.linalg.inv(fisher)
    std = np.sqrt(np.clip(np.diagonal(cov, axis1=1, axis2=2), 0.0, None))
    stds = {p: std[:, k] for k, p in enumerate(names)}
    return {"y": stds["y"], "x": stds["x"], "std": stds, "fisher": fisher, "params": names}


def gaussian_crlb(
    amplitude: float,
    sigma_y: float,
    sigma_x: float | None = None,
    background: float = 0.0,
    *,
    window: int | tuple[int, int] | None = None,
    offset: tuple[float, float] = (0.0, 0.0),
    dose_scale: float = 1.0,
    estimate: Sequence[str] = ("y", "x", "amplitude", "sigma", "background"),
) -> dict[str, Any]:
    """Cramér–Rao lower bound of the position of a 2D Gaussian column under Poisson noise.

    The image model is the one the refinement fits, sampled at pixel centres::

        mu(r) = dose_scale * (background + A * exp(-((y - y0)**2 / (2 sy**2)
                                                   + (x - x0)**2 / (2 sx**2))))

    and every pixel of the fitting window holds an independent Poisson count of mean mu.  The
    Fisher information of the parameters theta is

        I_ij = sum over pixels of (d mu / d theta_i) (d mu / d theta_j) / mu,

    and the covariance of any unbiased estimator is at least ``inv(I)``.  The nuisance
    parameters listed in ``estimate`` (amplitude, width(s), background) are part of theta, so
    the bound on y0, x0 is the one reachable by an unbiased fitter that must also estimate them
    (maximum likelihood reaches it at high counts); leaving one out treats it as known and
    lowers the bound.  The bound scales as ``1 / sqrt(dose_scale)``.  For a wide Gaussian with
    no background and known A and sigma it tends to ``sigma / sqrt(N)`` with ``N = 2 pi A sy sx``
    the total counts.  With ``background=0`` and the background estimated, the near-zero pixels
    at the window edge pin the background almost exactly; give the real background instead.

    Parameters
    ----------
    amplitude : float
        Peak height A above the background, in image units.
    sigma_y : float
        Gaussian width along y (px).
    sigma_x : float, optional
        Width along x; ``None`` means a round column with one width parameter.
    background : float
        Constant background, in image units.
    window : int or (int, int), optional
        Size (rows, cols) of the fitting window in pixels; default a square of side
        ``2 * ceil(5 * max sigma) + 1``.  Pixel centres lie at ``k - (w - 1) / 2`` from the
        window centre.
    offset : (float, float)
        Column centre (dy, dx) relative to the window centre, in pixels.
    dose_scale : float
        Counts per image unit (the image times ``dose_scale`` is Poisson distributed).
    estimate : sequence of str
        Free parameters among ``"y"``, ``"x"``, ``"amplitude"``, ``"sigma"`` (one width for a
        round column, both widths for an elliptical one), ``"sigma_y"``, ``"sigma_x"``,
        ``"background"``; must include ``"y"`` and ``"x"``.

    Returns
    -------
    dict
        ``"y"``, ``"x"``: lower bounds of the standard deviation of y0 and x0 (px); ``"fisher"``:
        the Fisher information matrix (P, P) in the order of ``"params"``; ``"std"``: the bound
        of every estimated parameter.

    Examples
    --------
    >>> b = gaussian_crlb(1000.0, 3.0, estimate=("y", "x"), window=41)
    >>> round(float(b["y"] / (3.0 / np.sqrt(2 * np.pi * 1000.0 * 9.0))), 3)
    1.0
    """
    res = gaussian_crlb_many(
        amplitude,
        sigma_y,
        sigma_x,
        background,
        window=window,
        offset=offset,
        dose_scale=dose_scale,
        estimate=estimate,
    )
    return {
        "y": float(res["y"][0]),
        "x": float(res["x"][0]),
        "fisher": res["fisher"][0],
        "std": {k: float(v[0]) for k, v in res["std"].items()},
        "params": res["params"],
    }


# --------------------------------------------------------------------------------------------
# segmentation overlap (seed 001, Eq. 1-2)
# --------------------------------------------------------------------------------------------
def _binary_pair(pred: ArrayLike, truth: ArrayLike) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    p = np.asarray(pred) != 0
    t = np.asarray(truth) != 0
    if p.shape != t.shape:
        raise ValueError(f"pred and truth shapes differ: {p.shape} vs {t.shape}")
    return p, t


def dice(pred: ArrayLike, truth: ArrayLike) -> float:
    """Dice coefficient 2 TP / (2 TP + FP + FN) of two binary masks (seed 001, Eq. 2).

    Non-zero values are foreground (so instance label images work too).  Two empty masks score
    1.0.

    Examples
    --------
    >>> dice([1, 1, 0, 0], [1, 0, 0, 0])
    0.6666666666666666
    """
    p, t = _binary_pair(pred, truth)
    tp = np.count_nonzero(p & t)
    denom = np.count_nonzero(p) + np.count_nonzero(t)
    return 1.0 if denom == 0 else float(2.0 * tp / denom)


def iou(pred: ArrayLike, truth: ArrayLike) -> float:
    """Intersection over union TP / (TP + FP + FN) of two binary masks (seed 001, Eq. 1).

    Non-zero values are foreground.  Two empty masks score 1.0.

    Examples
    --------
    >>> iou([1, 1, 0, 0], [1, 0, 0, 0])
    0.5
    """
    p, t = _binary_pair(pred, truth)
    union = np.count_nonzero(p | t)
    return 1.0 if union == 0 else float(np.count_nonzero(p & t) / union)


def mean_iou(pred: ArrayLike, truth: ArrayLike) -> float:
    """Mean of the foreground IoU and the background IoU, as seed 001 reports it.

    Examples
    --------
    >>> mean_iou([1, 1, 0, 0], [1, 0, 0, 0])
    0.5833333333333333
    """
    p, t = _binary_pair(pred, truth)
    return float(0.5 * (iou(p, t) + iou(~p, ~t)))


def pixel_accuracy(pred: ArrayLike, truth: ArrayLike) -> float:
    """Fraction of pixels whose binary class (foreground = non-zero) is right.

    Examples
    --------
    >>> pixel_accuracy([1, 1, 0, 0], [1, 0, 0, 0])
    0.75
    """
    p, t = _binary_pair(pred, truth)
    if p.size == 0:
        return 1.0
    return float(np.count_nonzero(p == t)) / p.size
