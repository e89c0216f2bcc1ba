"""Particle segmentation: probability maps to instance labels, and per-particle measurements.

Seed 001 segments nanoparticles semantically (foreground / background), measures every particle's
area ``S`` and reports its equivalent diameter ``D = 2 sqrt(S / pi)`` (Eq. 7) and perimeter,
leaving particles cut by the image border out of the statistics; it names splitting touching
particles and a roundness measure as future work.  This module does all of that with numpy,
scipy and scikit-image:

- :func:`label_particles`: foreground probability (and optionally a boundary probability, a
  class the network learns) to an instance label image with touching particles split;
- :func:`split_touching`: the classical split of a binary mask, a distance-transform watershed
  whose markers are the h-maxima of the distance map;
- :func:`otsu_watershed`: the classical baseline (Otsu threshold + the same split);
- :func:`particle_table` and :func:`size_statistics`: one row per particle (area, equivalent
  diameter, perimeter, circularity ``4 pi S / P**2``, centroid, ``touches_border``), in nm when
  a pixel size is given, and mean ± std etc. without the border particles;
- :func:`match_instances` and :func:`segmentation_scores`: instance-level accuracy against a
  ground-truth label image (Dice, mean IoU, touching pairs split, diameter error).

Perimeters use the Crofton estimator (``skimage.measure.perimeter_crofton``, 4 directions): on
digital discs at random sub-pixel positions it is within 2 % of ``2 pi r`` for r >= 6 px (-4.5 to
+3 % at r = 4, 0.2 % at r = 40; +4.3 % for the symmetric disc of r = 6 centred on a pixel),
where skimage's default contour estimator (a line through the centres of the 4-connected border
pixels) is 3-10 % short at r = 4 and 4.4 % long at r = 40; so the circularity of a disc is
0.97-1.03 for r >= 6 px.  Its worst case is an axis-aligned square (-6.6 %).  No shape is
rounder than a disc, so the circularity is capped at 1, as ImageJ does: a pixelated disc of a few
px can read up to ~1.07.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

__all__ = [
    "QUANTITIES",
    "border_labels",
    "crofton_perimeters",
    "interior_markers",
    "label_particles",
    "match_instances",
    "otsu_watershed",
    "particle_table",
    "relabel_sequential",
    "remove_small_objects",
    "segmentation_scores",
    "size_statistics",
    "split_touching",
]

#: Columns summarised by :func:`size_statistics` (each also with ``_nm`` / ``_nm2`` when present).
QUANTITIES: tuple[str, ...] = ("equivalent_diameter", "area", "perimeter", "circularity")

_TABLE_COLUMNS = [
    "label",
    "y",
    "x",
    "area_px",
    "equivalent_diameter_px",
    "perimeter_px",
    "circularity",
    "touches_border",
]


# --------------------------------------------------------------------------------------------
# label utilities
# --------------------------------------------------------------------------------------------
def relabel_sequential(labels: ArrayLike) -> NDArray[np.int32]:
    """Renumber the labels present as 1..n, keeping their order; 0 stays 0.

    Examples
    --------
    >>> relabel_sequential([[0, 7, 7], [3, 0, 9]]).tolist()
    [[0, 2, 2], [1, 0, 3]]
    """
    lab = np.asarray(labels)
    if lab.size == 0:
        return np.zeros(lab.shape, np.int32)
    if lab.min() < 0:
        raise ValueError("labels must be non-negative")
    present = np.bincount(lab.ravel()) > 0
    present[0] = False
    lut = np.cumsum(present).astype(np.int32)
    lut[~present] = 0
    return lut[lab]


def _finish(labels: NDArray, min_area: int) -> NDArray[np.int32]:
    """Drop labels below ``min_area`` px and renumber the rest 1..n (one pass)."""
    counts = np.bincount(labels.ravel())
    keep = counts >= max(min_area, 1)
    keep[0] = False
    lut = (np.cumsum(keep) * keep).astype(np.int32)
    return lut[labels]


def remove_small_objects(labels: ArrayLike, min_area: int) -> NDArray[np.int32]:
    """Set labels with fewer than ``min_area`` pixels to 0 (other labels keep their numbers).

    Examples
    --------
    >>> remove_small_objects([[1, 1, 0, 2]], 2).tolist()
    [[1, 1, 0, 0]]
    """
    lab = np.asarray(labels).astype(np.int32, copy=True)
    if min_area <= 1 or lab.max() == 0:
        return lab
    area = np.bincount(lab.ravel())
    small = area < min_area
    small[0] = False
    lab[small[lab]] = 0
    return lab


def border_labels(labels: ArrayLike) -> NDArray[np.int32]:
    """Labels with a pixel in the first or last row or column (incomplete particles).

    Examples
    --------
    >>> border_labels([[1, 0, 0], [0, 2, 0], [0, 0, 0]]).tolist()
    [1]
    """
    lab = np.asarray(labels)
    edge = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
    found = np.unique(edge)
    return found[found != 0].astype(np.int32)


# --------------------------------------------------------------------------------------------
# splitting touching particles
# --------------------------------------------------------------------------------------------
def split_touching(
    mask: ArrayLike, *, h: float = 1.0, min_area: int = 0, smooth: float = 0.0
) -> NDArray[np.int32]:
    """Label a binary mask, splitting touching particles by a distance-transform watershed.

    Each connected component is processed in its bounding box: the Euclidean distance to the
    background is computed, its h-maxima (regional maxima at least ``h`` px above every saddle
    that joins them to a higher maximum) are the markers, and a watershed of the negated distance
    from those markers inside the component gives one label per particle.  Two touching discs of
    radius r whose neck has half-width w are split when ``r - w > h``.

    Parameters
    ----------
    mask : array_like of bool, shape (H, W)
        Foreground.
    h : float
        Dynamic (px of distance) a maximum needs to seed its own particle; larger values split
        less (rough or elliptical particles are not cut), smaller values split more.
    min_area : int
        Labels smaller than this (px) are removed.
    smooth : float
        Gaussian sigma (px) applied to the distance map before finding maxima (0: none).

    Returns
    -------
    ndarray of int32
        Labels 1..n, 0 background.

    Examples
    --------
    >>> yy, xx = np.mgrid[0:40, 0:60]
    >>> two = ((yy - 20) ** 2 + (xx - 18) ** 2 <= 100) | ((yy - 20) ** 2 + (xx - 37) ** 2 <= 100)
    >>> int(split_touching(two).max())
    2
    """
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    m = np.asarray(mask, dtype=bool)
    comp, _ = ndimage.label(m)
    out = np.zeros(m.shape, dtype=np.int32)
    next_label = 1
    for k, sl in enumerate(ndimage.find_objects(comp), start=1):
        if sl is None:
            continue
        sl = _grow(sl, 1, m.shape)
        cm = comp[sl] == k
        area = int(cm.sum())
        if area < max(min_area, 1):
            continue
        dist = ndimage.distance_transform_edt(cm).astype(np.float32)
        if smooth > 0:
            dist = ndimage.gaussian_filter(dist, smooth) * cm
        markers, nm = ndimage.label(h_maxima(dist, h) & cm)
        view = out[sl]
        if nm <= 1:
            view[cm] = next_label
            next_label += 1
            continue
        ws = watershed(-dist, markers, mask=cm)
        view[cm] = ws[cm] + (next_label - 1)
        next_label += nm
    return _finish(out, min_area)


def _grow(sl: tuple[slice, slice], pad: int, shape: tuple[int, ...]) -> tuple[slice, slice]:
    return tuple(  # type: ignore[return-value]
        slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(sl, shape, strict=True)
    )


def label_particles(
    foreground: ArrayLike,
    boundary: ArrayLike | None = None,
    *,
    threshold: float = 0.5,
    boundary_threshold: float = 0.5,
    min_area: int = 8,
    split: Literal["auto", "boundary", "distance", "none"] = "auto",
    h: float = 1.0,
) -> NDArray[np.int32]:
    """Turn probability maps into particle instances with touching particles split.

    ``mask = foreground >= threshold``.  With a boundary map (``split="boundary"``, the default
    when one is given) the *markers* are the connected parts of the mask where the boundary
    probability is below ``boundary_threshold`` (the particles' interiors: the network marks the
    inner rim of every particle, so touching particles have separate interiors), eroded by one
    pixel so that a gap of one or two pixels in a contact line does not join two interiors
    (:func:`interior_markers`); a watershed of the boundary probability from those markers fills
    the mask, and mask components without a marker (particles too small to have an interior)
    keep one label each.  On validation images the erosion raised the share of touching pairs
    split from 0.60-0.91 to 0.78-0.93 and the instance precision from 0.75-0.93 to 0.95-1.0 (an
    early model); keeping the small interiors the erosion removes raised it from 0.88 to 0.94 on
    HAADF images (small particles touching large ones).  Without a boundary map
    (``split="distance"``), :func:`split_touching` splits the mask by a distance-transform
    watershed with h-maxima markers.  Objects smaller than ``min_area`` px are removed.

    Parameters
    ----------
    foreground : array_like, shape (H, W)
        Foreground probability in [0, 1].
    boundary : array_like, shape (H, W), optional
        Boundary probability in [0, 1].
    threshold : float
        Foreground threshold.
    boundary_threshold : float
        Pixels of the mask whose boundary probability is below this are interior.
    min_area : int
        Smallest particle kept (px).
    split : {"auto", "boundary", "distance", "none"}
        How touching particles are split (``"auto"``: boundary when given, else distance).
    h : float
        Dynamic of the distance maxima for ``split="distance"`` (px).

    Returns
    -------
    ndarray of int32, shape (H, W)
        Labels 1..n, 0 background.

    Examples
    --------
    >>> yy, xx = np.mgrid[0:40, 0:60]
    >>> fg = (((yy - 20) ** 2 + (xx - 18) ** 2 <= 100) | ((yy - 20) ** 2 + (xx - 37) ** 2 <= 100))
    >>> int(label_particles(fg.astype(float), split="distance").max())
    2
    """
    fg = np.asarray(foreground, dtype=np.float32)
    if fg.ndim != 2:
        raise ValueError(f"foreground must be a 2D map, got shape {fg.shape}")
    mask = fg >= threshold
    if split == "auto":
        split = "boundary" if boundary is not None else "distance"
    if split == "none":
        labels, _ = ndimage.label(mask)
        return _finish(labels, min_area)
    if split == "distance":
        return split_touching(mask, h=h, min_area=min_area)
    if split != "boundary":
        raise ValueError(f"unknown split method {split!r}")
    if boundary is None:
        raise ValueError("split='boundary' needs a boundary probability map")
    bnd = np.asarray(boundary, dtype=np.float32)
    if bnd.shape != fg.shape:
        raise ValueError(f"boundary shape {bnd.shape} differs from foreground {fg.shape}")
    return _finish(
        _fill_from_markers(mask, interior_markers(mask, bnd, boundary_threshold), bnd), min_area
    )


def interior_markers(
    mask: NDArray[np.bool_],
    boundary: NDArray[np.float32],
    boundary_threshold: float = 0.5,
    *,
    min_marker_area: int = 4,
) -> NDArray[np.int32]:
    """Markers of the particles: their interiors, cut apart where a contact line has a gap.

    The interior (mask and boundary probability below ``boundary_threshold``) is eroded by one
    pixel (3x3), so that a leak of one or two pixels through a gap in a contact line does not
    join two particles and noise specks inside the rim do not become markers; interior parts
    that the erosion removes completely (the interiors of particles of radius ~4 px) are kept
    as markers when they have at least ``min_marker_area`` px, so small particles touching a
    large one are not swallowed by it.

    Parameters
    ----------
    mask : ndarray of bool, shape (H, W)
        Foreground.
    boundary : ndarray of float, shape (H, W)
        Boundary probability.
    boundary_threshold : float
        Interior: boundary probability below this.
    min_marker_area : int
        Smallest interior (px) kept as a marker when the erosion removed it.

    Returns
    -------
    ndarray of int32
        Markers 1..n, 0 elsewhere.
    """
    interior = mask & (boundary < boundary_threshold)
    eroded = ndimage.binary_erosion(interior, np.ones((3, 3), bool))
    markers, n = ndimage.label(eroded)
    parts, n_parts = ndimage.label(interior)
    survived = np.zeros(n_parts + 1, bool)
    survived[parts[eroded]] = True
    small = ~survived & (np.bincount(parts.ravel(), minlength=n_parts + 1) >= min_marker_area)
    small[0] = False
    extra = small[parts]
    if extra.any():
        rescued, _ = ndimage.label(extra)
        markers = np.where(extra, rescued + n, markers).astype(np.int32)
    return markers


def _fill_from_markers(
    mask: NDArray[np.bool_], markers: NDArray[np.int32], elevation: NDArray[np.float32]
) -> NDArray[np.int32]:
    """Watershed of ``elevation`` from ``markers`` inside ``mask``, one component at a time.

    A mask component with one marker takes that marker's label, one without a marker gets a new
    label, and only components with several markers (touching particles) are flooded, each in
    its bounding box: the same result as one whole-image watershed at a fraction of the cost
    (0.05 s instead of 0.8 s on a 2048² image with 800 particles).
    """
    from skimage.segmentation import watershed

    comp, n_comp = ndimage.label(mask)
    n_mark = int(markers.max(initial=0))
    where = np.flatnonzero(markers)
    comp_of = np.zeros(n_mark + 1, np.intp)
    comp_of[markers.ravel()[where]] = comp.ravel()[where]
    count = np.bincount(comp_of[1:], minlength=n_comp + 1)
    lut = np.zeros(n_comp + 1, np.int32)
    single = np.flatnonzero(count == 1)
    single = single[single > 0]
    first_marker = np.zeros(n_comp + 1, np.int32)
    first_marker[comp_of[1:][::-1]] = np.arange(n_mark, 0, -1, dtype=np.int32)
    lut[single] = first_marker[single]
    orphans = np.flatnonzero(count == 0)
    orphans = orphans[orphans > 0]
    lut[orphans] = n_mark + 1 + np.arange(orphans.size, dtype=np.int32)
    out = lut[comp]
    multi = np.flatnonzero(count > 1)
    multi = multi[multi > 0]
    if multi.size:
        boxes = ndimage.find_objects(comp)
        for c in multi:
            sl = boxes[c - 1]
            sub = comp[sl] == c
            ws = watershed(elevation[sl], np.where(sub, markers[sl], 0), mask=sub)
            out[sl][sub] = ws[sub]
    return out


def otsu_watershed(
    image: ArrayLike,
    polarity: Literal["dark", "bright"] = "dark",
    *,
    classes: int = 2,
    smooth: float = 1.0,
    h: float = 1.0,
    min_area: int = 8,
) -> NDArray[np.int32]:
    """Classical baseline: Otsu threshold, then a distance-transform watershed split.

    The image is smoothed by a Gaussian of ``smooth`` px, thresholded by Otsu's method (with
    ``classes > 2``, multi-Otsu, keeping the darkest / brightest class: the metal cores of
    core-shell particles), holes are filled, and touching particles are split by
    :func:`split_touching`.

    Parameters
    ----------
    image : array_like, shape (H, W)
        Grey image.
    polarity : {"dark", "bright"}
        Whether particles are darker (bright-field TEM) or brighter (HAADF) than the support.
    classes : int
        Intensity classes of the threshold (2: Otsu; 3: multi-Otsu).
    smooth : float
        Gaussian sigma (px) before thresholding.
    h : float
        Dynamic of the distance maxima (px), see :func:`split_touching`.
    min_area : int
        Smallest particle kept (px).

    Returns
    -------
    ndarray of int32
        Instance labels.

    Examples
    --------
    >>> yy, xx = np.mgrid[0:64, 0:64]
    >>> img = 100.0 - 50.0 * ((yy - 30) ** 2 + (xx - 30) ** 2 <= 100)
    >>> int(otsu_watershed(img, "dark").max())
    1
    """
    from skimage.filters import threshold_multiotsu, threshold_otsu

    img = np.asarray(image, dtype=np.float32)
    if polarity not in ("dark", "bright"):
        raise ValueError(f"polarity must be 'dark' or 'bright', got {polarity!r}")
    if smooth > 0:
        img = ndimage.gaussian_filter(img, smooth)
    if classes <= 2:
        t = threshold_otsu(img)
        mask = img < t if polarity == "dark" else img > t
    else:
        ts = threshold_multiotsu(img, classes=classes)
        mask = img < ts[0] if polarity == "dark" else img > ts[-1]
    mask = ndimage.binary_fill_holes(mask)
    return split_touching(mask, h=h, min_area=min_area)


# --------------------------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------------------------
def particle_table(labels: ArrayLike, pixel_size_nm: float | None = None) -> pd.DataFrame:
    """Measure every particle of a label image.

    Parameters
    ----------
    labels : array_like of int, shape (H, W)
        Instance labels (0 background).
    pixel_size_nm : float, optional
        Pixel size; adds ``y_nm``, ``x_nm``, ``area_nm2``, ``equivalent_diameter_nm`` and
        ``perimeter_nm``.

    Returns
    -------
    pandas.DataFrame
        One row per label, sorted by label: ``label``, ``y``, ``x`` (centroid, px, row/col,
        pixel-centre convention), ``area_px`` (pixel count S), ``equivalent_diameter_px``
        (``2 sqrt(S / pi)``, seed 001 Eq. 7), ``perimeter_px`` (Crofton estimate, 4
        directions), ``circularity`` (``4 pi S / P**2``, capped at 1; 1 for a disc, smaller for
        elongated or ragged outlines), ``touches_border`` (a pixel in the first or last row or
        column).

    Examples
    --------
    >>> yy, xx = np.mgrid[0:64, 0:64]
    >>> disc = ((yy - 30) ** 2 + (xx - 40) ** 2 <= 15**2).astype(int)
    >>> t = particle_table(disc, pixel_size_nm=0.5)
    >>> int(t.area_px[0]), round(float(t.equivalent_diameter_px[0]), 2), round(float(t.y[0]), 1)
    (709, 30.05, 30.0)
    """
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"labels must be a 2D label image, got shape {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        if not np.all(np.mod(lab, 1) == 0):
            raise ValueError("labels must be integers")
        lab = lab.astype(np.int64)
    if lab.size and lab.min() < 0:
        raise ValueError("labels must be non-negative")
    if pixel_size_nm is not None and not (np.isfinite(pixel_size_nm) and pixel_size_nm > 0):
        raise ValueError(f"pixel_size_nm must be a positive number, got {pixel_size_nm}")
    if lab.max(initial=0) == 0:
        table = pd.DataFrame({c: pd.Series(dtype=float) for c in _TABLE_COLUMNS})
        table = table.astype({"label": np.int32, "area_px": np.int64, "touches_border": bool})
    else:
        flat = lab.ravel()
        n = int(flat.max()) + 1
        fg = np.flatnonzero(flat)  # particles only: a fraction of the image
        values = flat[fg].astype(np.intp)
        area_all = np.bincount(values, minlength=n)
        ids = np.flatnonzero(area_all)
        area = area_all[ids].astype(np.int64)
        row, col = np.divmod(fg, lab.shape[1])
        rows = np.bincount(values, weights=row, minlength=n)
        cols = np.bincount(values, weights=col, minlength=n)
        perim = crofton_perimeters(lab, n)[ids]
        with np.errstate(divide="ignore", invalid="ignore"):
            # capped at 1: a small pixelated disc's estimate can exceed a true disc's
            circ = np.where(perim > 0, np.minimum(4.0 * np.pi * area / perim**2, 1.0), np.nan)
        table = pd.DataFrame(
            {
                "label": ids.astype(np.int32),
                "y": rows[ids] / area,
                "x": cols[ids] / area,
                "area_px": area,
                "equivalent_diameter_px": 2.0 * np.sqrt(area / np.pi),
                "perimeter_px": perim,
                "circularity": circ,
                "touches_border": np.isin(ids, border_labels(lab)),
            }
        )
    if pixel_size_nm is not None:
        p = float(pixel_size_nm)
        table["y_nm"] = table["y"] * p
        table["x_nm"] = table["x"] * p
        table["area_nm2"] = table["area_px"] * p * p
        table["equivalent_diameter_nm"] = table["equivalent_diameter_px"] * p
        table["perimeter_nm"] = table["perimeter_px"] * p
    return table.reset_index(drop=True)


#: Crofton weights (4 directions) of the 16 configurations of a 2x2 window, in the bit order of
#: ``skimage.measure.perimeter_crofton`` (1: pixel, 4: its left neighbour, 2: the one above,
#: 8: above-left).
_CROFTON_4 = np.array(
    [
        0,
        np.pi / 4 * (1 + 1 / np.sqrt(2)),
        np.pi / (4 * np.sqrt(2)),
        np.pi / (2 * np.sqrt(2)),
        0,
        np.pi / 4 * (1 + 1 / np.sqrt(2)),
        0,
        np.pi / (4 * np.sqrt(2)),
        np.pi / 4,
        np.pi / 2,
        np.pi / (4 * np.sqrt(2)),
        np.pi / (4 * np.sqrt(2)),
        np.pi / 4,
        np.pi / 2,
        0,
        0,
    ]
)


def crofton_perimeters(labels: ArrayLike, n: int | None = None) -> NDArray[np.float64]:
    """Crofton perimeter (4 directions) of every label at once.

    The same estimate as ``skimage.measure.perimeter_crofton(labels == k, 4)`` for every label k
    (and as ``regionprops(...).perimeter_crofton``), computed in one vectorised pass over the
    2x2 windows that straddle an edge instead of one call per particle.

    Parameters
    ----------
    labels : array_like of int, shape (H, W)
        Instance labels (0 background).
    n : int, optional
        Length of the result (default ``labels.max() + 1``).

    Returns
    -------
    ndarray of float64, shape (n,)
        Perimeter of label k at index k (0 for the background and absent labels).

    Examples
    --------
    >>> lab = np.zeros((6, 6), int)
    >>> lab[1:5, 1:5] = 1
    >>> from skimage.measure import perimeter_crofton
    >>> bool(np.isclose(crofton_perimeters(lab)[1], perimeter_crofton(lab == 1, 4)))
    True
    """
    lab = np.asarray(labels)
    n = int(lab.max(initial=0)) + 1 if n is None else int(n)
    p = np.pad(lab.astype(np.int32, copy=False), 1)
    stride = p.shape[1]
    horizontal = p[:, 1:] != p[:, :-1]
    vertical = p[1:, :] != p[:-1, :]
    # 2x2 windows (rows i, i+1 and cols j, j+1 of p) that hold more than one value; windows
    # inside one label or in the background weigh 0
    edge = horizontal[1:, :] | horizontal[:-1, :] | vertical[:, 1:] | vertical[:, :-1]
    i, j = np.divmod(np.flatnonzero(edge), edge.shape[1])
    top_left = i * stride + j
    flat = p.ravel()
    d, c = flat[top_left], flat[top_left + 1]  # above-left, above
    b, a = flat[top_left + stride], flat[top_left + stride + 1]  # left, pixel
    out = np.zeros(n, np.float64)
    # each distinct non-zero label of a window gets the weight of its own configuration
    for cand, seen in ((a, ()), (b, (a,)), (c, (a, b)), (d, (a, b, c))):
        keep = cand > 0
        for other in seen:
            keep &= cand != other
        lv = cand[keep]
        config = (
            (a[keep] == lv) * 1 + (b[keep] == lv) * 4 + (c[keep] == lv) * 2 + (d[keep] == lv) * 8
        )
        out += np.bincount(lv, weights=_CROFTON_4[config], minlength=n)[:n]
    return out


def size_statistics(table: pd.DataFrame, *, include_border: bool = False) -> pd.DataFrame:
    """Summary statistics of the particle measurements (border particles left out, seed 001).

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`particle_table` (or edited: any of the measured columns may be present).
    include_border : bool
        Also count particles that touch the image border.

    Returns
    -------
    pandas.DataFrame
        Index: the measured columns present (``equivalent_diameter_px``, ``area_px``,
        ``perimeter_px``, ``circularity`` and their ``_nm`` / ``_nm2`` versions); columns
        ``n``, ``mean``, ``std`` (sample standard deviation, ddof=1; NaN for n < 2),
        ``median``, ``min``, ``max``, ``p05``, ``p95``.  ``attrs["n_border"]`` holds the number
        of border particles left out.

    Examples
    --------
    >>> t = pd.DataFrame({"equivalent_diameter_px": [10.0, 12.0, 50.0],
    ...                   "touches_border": [False, False, True]})
    >>> s = size_statistics(t)
    >>> float(s.loc["equivalent_diameter_px", "mean"]), int(s.attrs["n_border"])
    (11.0, 1)
    """
    border = (
        table["touches_border"].to_numpy(bool)
        if "touches_border" in table
        else np.zeros(len(table), bool)
    )
    use = table if include_border else table[~border]
    columns = []
    for q in QUANTITIES:
        for suffix in ("_px", "", "_nm", "_nm2"):
            name = q + suffix
            if name in table.columns and name not in columns:
                columns.append(name)
    rows = {}
    for name in columns:
        v = pd.to_numeric(use[name], errors="coerce").to_numpy(float)
        v = v[np.isfinite(v)]
        n = v.size
        rows[name] = {
            "n": n,
            "mean": float(v.mean()) if n else np.nan,
            "std": float(v.std(ddof=1)) if n > 1 else np.nan,
            "median": float(np.median(v)) if n else np.nan,
            "min": float(v.min()) if n else np.nan,
            "max": float(v.max()) if n else np.nan,
            "p05": float(np.percentile(v, 5)) if n else np.nan,
            "p95": float(np.percentile(v, 95)) if n else np.nan,
        }
    stats = pd.DataFrame.from_dict(
        rows, orient="index", columns=["n", "mean", "std", "median", "min", "max", "p05", "p95"]
    )
    stats["n"] = stats["n"].astype(int)
    stats.attrs["n_border"] = int(border.sum()) if not include_border else 0
    return stats


# --------------------------------------------------------------------------------------------
# accuracy against ground truth
# --------------------------------------------------------------------------------------------
def match_instances(pred: ArrayLike, truth: ArrayLike, *, min_iou: float = 0.5) -> pd.DataFrame:
    """Match predicted to true instances one-to-one by IoU.

    With ``min_iou >= 0.5`` every object can overlap at most one partner by more than half, so
    the matching is unique (no assignment problem).

    Parameters
    ----------
    pred, truth : array_like of int, shape (H, W)
        Instance label images.
    min_iou : float
        Smallest IoU of a match (at least 0.5).

    Returns
    -------
    pandas.DataFrame
        One row per matched pair: ``pred``, ``truth`` (labels), ``iou``, ``pred_area``,
        ``truth_area``.

    Examples
    --------
    >>> m = match_instances([[1, 1, 0, 2]], [[3, 3, 3, 0]])
    >>> m[["pred", "truth"]].values.tolist(), round(float(m.iou[0]), 3)
    ([[1, 3]], 0.667)
    """
    if min_iou < 0.5:
        raise ValueError("min_iou must be at least 0.5 (unique matching)")
    p = np.asarray(pred).ravel().astype(np.int64)
    t = np.asarray(truth).ravel().astype(np.int64)
    if p.size != t.size:
        raise ValueError("pred and truth must have the same shape")
    pa = np.bincount(p)
    ta = np.bincount(t)
    both = (p > 0) & (t > 0)
    key = p[both] * (t.max() + 1) + t[both]
    pairs, inter = np.unique(key, return_counts=True)
    pl, tl = pairs // (t.max() + 1), pairs % (t.max() + 1)
    union = pa[pl] + ta[tl] - inter
    iou = inter / union
    ok = iou > min_iou if min_iou == 0.5 else iou >= min_iou
    return pd.DataFrame(
        {
            "pred": pl[ok].astype(np.int64),
            "truth": tl[ok].astype(np.int64),
            "iou": iou[ok].astype(np.float64),
            "pred_area": pa[pl[ok]].astype(np.int64),
            "truth_area": ta[tl[ok]].astype(np.int64),
        }
    )


def segmentation_scores(
    pred: ArrayLike,
    truth: ArrayLike,
    touching_pairs: ArrayLike | None = None,
    *,
    min_iou: float = 0.5,
) -> dict[str, Any]:
    """Semantic and instance accuracy of a particle segmentation against the truth.

    Parameters
    ----------
    pred, truth : array_like of int, shape (H, W)
        Instance label images (0 background).
    touching_pairs : array_like, shape (K, 2), optional
        Labels of true particles that touch each other (the simulators' ``touching_pairs``).
    min_iou : float
        Smallest IoU of a matched particle.

    Returns
    -------
    dict
        ``dice``, ``mean_iou`` (mean of foreground and background IoU, seed 001),
        ``pixel_accuracy``; ``n_truth``, ``n_pred``, ``n_matched`` (IoU > ``min_iou``),
        ``precision``, ``recall``; ``pairs``, ``pairs_split`` (touching pairs whose two
        particles are both matched, hence separated); ``d_rel_errors``: array of
        ``|D_pred - D_true| / D_true`` of the matched particles that do not touch the border,
        and its ``median_d_rel_error``.

    Examples
    --------
    >>> truth = np.zeros((8, 8), int)
    >>> truth[2:5, 2:4], truth[2:5, 4:6] = 1, 2
    >>> s = segmentation_scores(truth, truth, [[1, 2]])
    >>> s["dice"], s["pairs_split"], s["median_d_rel_error"]
    (1.0, 1, 0.0)
    """
    from .metrics import dice, mean_iou, pixel_accuracy

    p = np.asarray(pred)
    t = np.asarray(truth)
    m = match_instances(p, t, min_iou=min_iou)
    n_truth = int(np.unique(t[t > 0]).size)
    n_pred = int(np.unique(p[p > 0]).size)
    matched = set(m["truth"].tolist())
    pairs = np.asarray(touching_pairs if touching_pairs is not None else [], dtype=np.int64)
    pairs = pairs.reshape(-1, 2)
    present = np.isin(pairs, np.unique(t)).all(axis=1) if len(pairs) else np.zeros(0, bool)
    pairs = pairs[present]
    split = sum(int(a in matched and b in matched) for a, b in pairs)
    edge = set(border_labels(t).tolist())
    inner = ~m["truth"].isin(edge).to_numpy()
    d_pred = 2.0 * np.sqrt(m["pred_area"].to_numpy(float)[inner] / np.pi)
    d_true = 2.0 * np.sqrt(m["truth_area"].to_numpy(float)[inner] / np.pi)
    rel = np.abs(d_pred - d_true) / d_true
    return {
        "dice": dice(p, t),
        "mean_iou": mean_iou(p, t),
        "pixel_accuracy": pixel_accuracy(p, t),
        "n_truth": n_truth,
        "n_pred": n_pred,
        "n_matched": len(m),
        "precision": len(m) / n_pred if n_pred else float(n_truth == 0),
        "recall": len(m) / n_truth if n_truth else 1.0,
        "pairs": len(pairs),
        "pairs_split": split,
        "d_rel_errors": rel,
        "median_d_rel_error": float(np.median(rel)) if rel.size else float("nan"),
    }
