"""Image sequences (T×Y×X movies): atoms in every frame, drift, and site occupancy over time.

Nothing here imports napari or Qt.  The pieces, in the order a movie is analysed:

:func:`find_atoms_stack`
    detection + Gaussian refinement in every frame (read one at a time, so a lazy dask stack is
    streamed), into one table with a ``frame`` column.
:func:`estimate_drift`
    frame-by-frame specimen drift, sub-pixel, either from the images (cross-correlation of
    consecutive frames, accumulated) or from the refined atom positions (median displacement of
    matched atoms against the first frame, so errors do not accumulate).
:func:`correct_drift`
    adds drift-corrected positions (``y_corr``, ``x_corr``: where the atom would be in frame 0).
:func:`site_occupancy`
    links atoms across frames to sites (clusters of drift-corrected positions), and per site the
    occupancy (fraction of the frames in which the site is in the field of view that have an atom
    there) and the appear / disappear events between consecutive frames (seed 003, Fig. 10).
:func:`analyze_sequence`
    all of the above.

Drift convention: ``drift[t] = (dy, dx)`` is where a feature at ``(y, x)`` in frame 0 is found in
frame ``t``: ``(y + dy, x + dx)``; ``drift[0] = (0, 0)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy.spatial import cKDTree

from ._provenance import make_provenance
from .pipeline import CLASSICAL, card_defaults, find_atoms

ProgressCallback = Callable[[int, int], None]
CancelledCallback = Callable[[], bool]


@dataclass
class SequenceResult:
    """Atoms of every frame of a movie, the drift, and the sites they occupy.

    Attributes
    ----------
    atoms : pandas.DataFrame
        One row per atom and frame: ``frame``, ``y``, ``x`` (px, in that frame), the detection
        and fit columns of :func:`napari_atomnet.pipeline.find_atoms`, ``y_corr``, ``x_corr``
        (drift-corrected, frame-0 coordinates), ``site``, ``occupancy`` and ``events`` (of its
        site).
    sites : pandas.DataFrame
        One row per site: ``site``, ``y``, ``x`` (frame-0 coordinates), ``n_present``,
        ``n_observed``, ``occupancy``, ``appear``, ``disappear``, ``events``, ``event_rate``.
    drift : ndarray, shape (T, 2)
        ``(dy, dx)`` per frame (px).
    frames : pandas.DataFrame
        One row per frame: ``frame``, ``n_atoms``, ``seconds``, ``dy``, ``dx``.
    provenance : dict
    """

    atoms: pd.DataFrame
    sites: pd.DataFrame
    drift: NDArray[np.float64]
    frames: pd.DataFrame
    provenance: dict[str, Any] = field(default_factory=dict)


class MovieConstants(NamedTuple):
    """What a movie's frames share, resolved once (:func:`movie_constants`)."""

    #: ``"bright"`` or ``"dark"``.
    polarity: str
    #: Lattice spacing, px; NaN when the frame shows no periodicity.
    spacing: float
    #: Pixel size, nm: the one given, or found from the frame by a model that learnt one
    #: sampling (:func:`napari_atomnet.models.detector.estimate_sampling`); None if neither.
    pixel_size_nm: float | None
    #: The pixel size was found from the frame, not given.
    pixel_size_estimated: bool = False


def movie_constants(
    frame: ArrayLike,
    *,
    polarity: str = "auto",
    spacing: float | None = None,
    detector: Any = None,
    pixel_size_nm: float | None = None,
) -> MovieConstants:
    """Atom contrast, lattice spacing and pixel size of a movie, from one of its frames.

    The imaging mode, the specimen and the magnification do not change between frames, so a
    movie's contrast, spacing and (for a model that learnt one sampling, when the movie is
    uncalibrated) pixel size are resolved once, from its first analysed frame, and passed to
    every frame, rather than re-estimated for each.

    Parameters
    ----------
    frame : array_like, shape (H, W)
        A frame of the movie.
    polarity : {"auto", "bright", "dark"}
        What the caller knows of the contrast ("auto": guessed,
        :func:`napari_atomnet.core.detect.resolve_polarity`, or by the detector itself when
        its card says it tells the contrast, as ``atomnet-hrtem`` does).
    spacing : float, optional
        The lattice spacing (px), if known; otherwise estimated from the frame's central
        crop as detection does (:func:`napari_atomnet.core.detect.estimate_spacing`).
    detector : ModelCard, optional
        The movie's detection model (resolved, :func:`napari_atomnet.pipeline.resolve_detector`).
    pixel_size_nm : float, optional
        The movie's pixel size (see :func:`napari_atomnet.models.detector.detect_atoms`).

    Returns
    -------
    MovieConstants
    """
    from .core.detect import SPACING_CROP, central_crop, estimate_spacing, resolve_polarity
    from .core.image import as_analysis_image

    img = as_analysis_image(frame)
    if spacing is None:
        spacing = estimate_spacing(img, max_crop=SPACING_CROP)
    estimated = False
    if getattr(detector, "finds_sampling", False):  # a card, not "classical" or None
        from .models.detector import estimate_sampling, known_pixel_size

        if not known_pixel_size(pixel_size_nm):
            found = estimate_sampling(img, detector, polarity=polarity)
            if found is not None:
                pixel_size_nm, estimated = found / 10.0, True
    if polarity == "auto" and getattr(detector, "guesses_contrast", False):
        from .models.detector import CONTRAST_CROP, detect_atoms

        # the central crop is where detect_atoms itself decides on a large frame: deciding
        # there, and not on the whole frame, spares the frame a detection run that
        # find_atoms_stack would repeat told the contrast
        crop = central_crop(img, CONTRAST_CROP)
        guess = detect_atoms(
            crop, detector, polarity="auto", spacing=spacing, pixel_size_nm=pixel_size_nm
        )
        contrast = str(guess.params["polarity"])
    else:
        contrast = resolve_polarity(img, polarity, spacing=spacing)
    return MovieConstants(contrast, float(spacing), pixel_size_nm, estimated)


def frame_count(stack: Any) -> int:
    """Return the number of frames of a T×Y×X stack (1 for a 2D image)."""
    shape = tuple(stack.shape)
    if len(shape) == 2:
        return 1
    if len(shape) != 3:
        raise ValueError(f"expected a T×Y×X stack, got an array of shape {shape}")
    return int(shape[0])


def get_frame(stack: Any, index: int) -> NDArray:
    """Read one frame of a stack (only that frame, for a lazy dask stack)."""
    if len(stack.shape) == 2:
        return np.asarray(stack)
    return np.asarray(stack[int(index)])


def find_atoms_stack(
    stack: Any,
    *,
    detector: Any = None,
    threshold: float | None = None,
    refine: bool | None = None,
    polarity: str = "auto",
    spacing: float | None = None,
    gaussian: str = "auto",
    frames: Sequence[int] | None = None,
    source: str | None = None,
    device: str | None = None,
    progress: ProgressCallback | None = None,
    cancelled: CancelledCallback | None = None,
    pixel_size_nm: float | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Detect and refine atoms in every frame of a T×Y×X stack.

    Parameters
    ----------
    stack : array_like, shape (T, H, W)
        The movie; a numpy array, a memory map or a lazy dask array (frames are read one at a
        time).
    detector : str, ModelCard or None
        As in :func:`napari_atomnet.pipeline.find_atoms` (None: the built-in model;
        ``"classical"``: the Gaussian-filter baseline).  A model is loaded once for all frames.
    threshold, refine, device
        As in :func:`~napari_atomnet.pipeline.find_atoms`.
    polarity : {"auto", "bright", "dark"}
        Atom contrast (bright: HAADF; dark: ABF, bright-field; "auto": guessed once, from the
        first analysed frame, see :func:`movie_constants`).
    spacing : float, optional
        Lattice spacing (px); estimated once, from the first analysed frame, when omitted.
        Every frame is analysed with the same contrast and spacing (recorded in the provenance).
    gaussian : {"auto", "isotropic", "elliptical"}
        Gaussian model of the refinement; "auto" decides on the first analysed frame that has
        atoms (:func:`napari_atomnet.pipeline.refine_atoms`) and keeps that model for the movie.
    frames : sequence of int, optional
        The frames to analyse (all by default).
    source : str, optional
        Name of the movie, for the provenance.
    progress : callable, optional
        ``progress(done, total)`` after each frame.
    cancelled : callable, optional
        Polled between frames (and inside detection); True raises :class:`InterruptedError`.
    pixel_size_nm : float, optional
        The movie's pixel size (see :func:`napari_atomnet.models.detector.detect_atoms`).

    Returns
    -------
    atoms : pandas.DataFrame
        ``frame`` first, then the columns of ``find_atoms``.
    per_frame : pandas.DataFrame
        ``frame``, ``n_atoms``, ``seconds``.
    provenance : dict
    """
    n = frame_count(stack)
    todo = list(range(n)) if frames is None else [int(f) for f in frames]
    bad = [f for f in todo if not 0 <= f < n]
    if bad:
        raise ValueError(f"frame(s) {bad[:5]} out of range (the stack has {n} frames)")
    # loaded once for all frames; its card decides refinement and a known contrast
    det, refine, polarity = card_defaults(detector, refine, polarity)
    t0 = time.perf_counter()
    contrast, estimated = None, False
    if todo:
        contrast, spacing, pixel_size_nm, estimated = movie_constants(
            get_frame(stack, todo[0]),
            polarity=polarity,
            spacing=spacing,
            detector=det,
            pixel_size_nm=pixel_size_nm,
        )
    parts, rows = [], []
    model_info = None
    for done, index in enumerate(todo, 1):
        if cancelled is not None and cancelled():
            raise InterruptedError("cancelled")
        t1 = time.perf_counter()
        result = find_atoms(
            get_frame(stack, index),
            detector=det,
            threshold=threshold,
            refine=refine,
            polarity=contrast,
            spacing=spacing,
            gaussian=gaussian,
            source=source,
            device=device,
            cancelled=cancelled,
            pixel_size_nm=pixel_size_nm,
        )
        # the imaging conditions are the movie's: decide the Gaussian model once
        gaussian = result.provenance["params"].get("gaussian_model", gaussian)
        model_info = result.provenance.get("model")
        table = result.atoms
        table.insert(0, "frame", index)
        parts.append(table)
        rows.append({"frame": index, "n_atoms": len(table), "seconds": time.perf_counter() - t1})
        if progress is not None:
            progress(done, len(todo))
    atoms = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"frame": []})
    params = {
        "refine": refine,
        "threshold": threshold,
        "n_frames": len(todo),
        "polarity_requested": polarity,
        "polarity": contrast,
        "lattice_spacing": spacing if spacing is not None and np.isfinite(spacing) else None,
        "gaussian_model": gaussian if refine else None,
    }
    if estimated:  # an uncalibrated movie: every frame was detected at the first one's sampling
        params["pixel_size_estimated_nm"] = round(float(pixel_size_nm), 6)
    params["detector"] = CLASSICAL if det == CLASSICAL else getattr(det, "name", str(det))
    provenance = make_provenance("find_atoms_stack", params, model=model_info, source=source)
    provenance["seconds"] = round(time.perf_counter() - t0, 4)
    return atoms, pd.DataFrame(rows, columns=["frame", "n_atoms", "seconds"]), provenance


# ------------------------------------------------------------------------------------------------
# drift
# ------------------------------------------------------------------------------------------------


def estimate_drift(
    data: Any,
    *,
    n_frames: int | None = None,
    max_step: float | None = None,
    progress: ProgressCallback | None = None,
    cancelled: CancelledCallback | None = None,
) -> NDArray[np.float64]:
    """Estimate the specimen drift of every frame relative to the first, sub-pixel.

    Parameters
    ----------
    data : array_like (T, H, W) or pandas.DataFrame
        Either the movie: consecutive frames are registered by cross-correlation (FFT,
        Hann-windowed, the peak searched within ``max_step`` and refined by a log-parabola) and
        the steps added up; or an atoms table with ``frame, y, x`` (refined positions): each
        frame's atoms are matched to the first frame's (shifted by the drift so far) and the
        median displacement is the drift, so blinking atoms do not bias it and errors do not
        accumulate.
    n_frames : int, optional
        Number of frames (tables only; default: the largest ``frame`` + 1).  Frames without
        atoms get the previous frame's drift.
    max_step : float, optional
        The largest drift between consecutive frames (px); default 0.4 × the atom spacing (of
        the atoms, or estimated from the first frame's autocorrelation).  A lattice looks the
        same after a shift by a lattice vector, so larger steps cannot be told apart from
        smaller ones.
    progress, cancelled : callable, optional
        Progress callback and cancel poll (per frame).

    Returns
    -------
    ndarray, shape (T, 2)
        ``(dy, dx)`` of each frame: a feature at ``(y, x)`` in frame 0 is at
        ``(y + dy, x + dx)`` in frame t.
    """
    if isinstance(data, pd.DataFrame):
        return _drift_from_atoms(data, n_frames=n_frames, max_step=max_step, progress=progress)
    n = frame_count(data)
    drift = np.zeros((n, 2))
    window = None
    previous = None
    for t in range(n):
        if cancelled is not None and cancelled():
            raise InterruptedError("cancelled")
        frame = get_frame(data, t).astype(np.float32)
        if window is None:
            h, w = frame.shape
            window = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
            if max_step is None:
                from .core.detect import estimate_spacing

                spacing = estimate_spacing(frame)
                max_step = 0.4 * spacing if np.isfinite(spacing) else min(h, w) / 4
        frame = (frame - frame.mean()) * window
        if previous is not None:
            drift[t] = drift[t - 1] + _register(previous, frame, float(max_step))
        previous = frame
        if progress is not None:
            progress(t + 1, n)
    return drift


def _register(reference: NDArray, moving: NDArray, max_shift: float) -> NDArray[np.float64]:
    """Shift ``(dy, dx)`` of ``moving`` relative to ``reference``, at most ``max_shift`` px.

    The cross-correlation (by FFT) is searched for its maximum within ``max_shift`` of zero
    only: a lattice correlates as well with itself shifted by a lattice vector, so the global
    maximum can be a whole lattice period away.  The peak is refined to sub-pixel precision by a
    parabola through the log-correlation along each axis (exact for Gaussian peaks).
    """
    h, w = reference.shape
    cc = np.fft.irfft2(np.fft.rfft2(moving) * np.conj(np.fft.rfft2(reference)), s=(h, w))
    r = max(1, int(np.ceil(max_shift)))
    rows = np.arange(-r, r + 1)
    local = cc[np.ix_(rows % h, rows % w)]
    yy, xx = np.meshgrid(rows, rows, indexing="ij")
    local = np.where(np.hypot(yy, xx) <= max_shift + 0.5, local, -np.inf)
    iy, ix = np.unravel_index(np.argmax(local), local.shape)
    py, px = rows[iy], rows[ix]

    def offset(a: float, b: float, c: float) -> float:
        if min(a, b, c) <= 0:  # the log needs a positive peak: plain parabola
            la, lb, lc = a, b, c
        else:
            la, lb, lc = np.log(a), np.log(b), np.log(c)
        denom = la - 2 * lb + lc
        return float(np.clip(0.5 * (la - lc) / denom, -0.5, 0.5)) if denom < 0 else 0.0

    dy = offset(cc[(py - 1) % h, px % w], cc[py % h, px % w], cc[(py + 1) % h, px % w])
    dx = offset(cc[py % h, (px - 1) % w], cc[py % h, px % w], cc[py % h, (px + 1) % w])
    return np.array([py + dy, px + dx], float)


def _nn_spacing(points: NDArray) -> float:
    if len(points) < 2:
        return float("nan")
    return float(np.median(cKDTree(points).query(points, k=2)[0][:, 1]))


def _drift_from_atoms(
    atoms: pd.DataFrame,
    *,
    n_frames: int | None,
    max_step: float | None,
    progress: ProgressCallback | None,
) -> NDArray[np.float64]:
    missing = {"frame", "y", "x"} - set(atoms.columns)
    if missing:
        raise ValueError(f"the atoms table lacks column(s) {', '.join(sorted(missing))}")
    frames = atoms["frame"].to_numpy(int)
    n = int(n_frames if n_frames is not None else (frames.max() + 1 if len(frames) else 0))
    drift = np.zeros((n, 2))
    pts = atoms[["y", "x"]].to_numpy(float)
    by_frame = {int(f): pts[frames == f] for f in np.unique(frames)}
    first = next((by_frame[f] for f in range(n) if f in by_frame and len(by_frame[f])), None)
    if first is None:
        return drift
    spacing = _nn_spacing(first)
    radius = float(max_step) if max_step else 0.4 * (spacing if np.isfinite(spacing) else 8.0)
    tree = cKDTree(first)
    for t in range(1, n):
        guess = drift[t - 1] + (drift[t - 1] - drift[t - 2] if t >= 2 else 0.0)
        current = by_frame.get(t)
        if current is None or len(current) == 0:
            drift[t] = drift[t - 1]
            continue
        estimate = guess
        for _ in range(3):  # match around the prediction, re-centre on the median, repeat
            dist, idx = tree.query(current - estimate, distance_upper_bound=radius)
            ok = np.isfinite(dist)
            if not ok.any():
                break
            estimate = np.median(current[ok] - first[idx[ok]], axis=0)
        drift[t] = estimate
        if progress is not None:
            progress(t, n - 1)
    return drift


def correct_drift(atoms: pd.DataFrame, drift: ArrayLike) -> pd.DataFrame:
    """Add drift-corrected positions to an atoms table.

    Parameters
    ----------
    atoms : pandas.DataFrame
        ``frame, y, x`` per atom.
    drift : array_like, shape (T, 2)
        From :func:`estimate_drift`.

    Returns
    -------
    pandas.DataFrame
        A copy with ``dy, dx`` (the frame's drift) and ``y_corr = y - dy``, ``x_corr = x - dx``
        (frame-0 coordinates).

    Examples
    --------
    >>> t = pd.DataFrame({"frame": [0, 1], "y": [5.0, 6.5], "x": [5.0, 4.0]})
    >>> correct_drift(t, [[0, 0], [1.5, -1.0]])[["y_corr", "x_corr"]].to_numpy().tolist()
    [[5.0, 5.0], [5.0, 5.0]]
    """
    drift = np.asarray(drift, float).reshape(-1, 2)
    frames = atoms["frame"].to_numpy(int)
    if len(frames) and frames.max() >= len(drift):
        raise ValueError(f"drift has {len(drift)} frames; the table has frame {frames.max()}")
    out = atoms.copy()
    out["dy"] = drift[frames, 0] if len(frames) else []
    out["dx"] = drift[frames, 1] if len(frames) else []
    out["y_corr"] = out["y"] - out["dy"]
    out["x_corr"] = out["x"] - out["dx"]
    return out


# ------------------------------------------------------------------------------------------------
# sites
# ------------------------------------------------------------------------------------------------


def site_occupancy(
    atoms: pd.DataFrame,
    *,
    drift: ArrayLike | None = None,
    n_frames: int | None = None,
    shape: tuple[int, int] | None = None,
    radius: float | None = None,
    margin: float | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Link atoms across frames to sites; occupancy and appear/disappear events per site.

    Parameters
    ----------
    atoms : pandas.DataFrame
        ``frame, y, x`` per atom (and ``y_corr, x_corr`` if ``drift`` is not given; without
        either, positions are used as they are).
    drift : array_like, shape (T, 2), optional
        Frame drift (:func:`estimate_drift`).
    n_frames : int, optional
        Number of frames (default: ``len(drift)`` or the largest ``frame`` + 1).
    shape : tuple of int, optional
        ``(H, W)`` of the frames.  With it, a site counts as observed in a frame only when its
        drifted position lies inside the frame (``margin`` px from the edge), so sites that drift
        out of view are not counted as empty.
    radius : float, optional
        Atoms within ``radius`` px (drift-corrected) of each other are one site; default
        0.35 × the median nearest-neighbour spacing.
    margin : float, optional
        Edge margin for ``shape`` (default 0.25 × spacing).

    Returns
    -------
    atoms : pandas.DataFrame
        The input with ``site`` (id), ``occupancy`` and ``events`` of its site (and
        ``y_corr, x_corr``, ``dy, dx`` when ``drift`` was given).
    sites : pandas.DataFrame
        ``site, y, x`` (mean frame-0 position), ``n_present`` (frames with an atom there),
        ``n_observed`` (frames in which the site is in view), ``occupancy`` =
        n_present / n_observed, ``appear`` and ``disappear`` (absent→present and
        present→absent changes between consecutive observed frames), ``events`` = their sum,
        ``event_rate`` = events / (n_observed − 1) (per frame), ``first_frame``, ``last_frame``.
    """
    if drift is not None:
        atoms = correct_drift(atoms, drift)
    atoms = atoms.reset_index(drop=True)
    frames = atoms["frame"].to_numpy(int)
    if n_frames is None:
        n_frames = len(drift) if drift is not None else int(frames.max() + 1 if len(frames) else 0)
    cols = ["y_corr", "x_corr"] if {"y_corr", "x_corr"} <= set(atoms.columns) else ["y", "x"]
    pts = atoms[cols].to_numpy(float)
    site = _cluster_sites(pts, frames, radius)
    n_sites = int(site.max() + 1) if len(site) else 0

    present = np.zeros((n_sites, n_frames), bool)
    present[site, frames] = True
    centre = np.zeros((n_sites, 2))
    np.add.at(centre, site, pts)
    counts = np.bincount(site, minlength=n_sites)
    centre /= np.maximum(counts, 1)[:, None]

    observed = np.ones_like(present)
    if shape is not None and drift is not None:
        d = np.asarray(drift, float).reshape(-1, 2)[:n_frames]
        spacing = _nn_spacing(pts[frames == frames.min()]) if len(pts) else float("nan")
        m = float(margin) if margin is not None else 0.25 * (spacing if spacing > 0 else 4.0)
        yy = centre[:, :1] + d[None, :, 0]
        xx = centre[:, 1:] + d[None, :, 1]
        h, w = shape
        observed = (yy >= m - 0.5) & (yy <= h - 0.5 - m) & (xx >= m - 0.5) & (xx <= w - 0.5 - m)
        observed |= present  # an atom was found there, so it was in view
    n_obs = observed.sum(axis=1)
    n_present = present.sum(axis=1)
    appear = np.zeros(n_sites, int)
    disappear = np.zeros(n_sites, int)
    for s in range(n_sites):  # transitions between consecutive observed frames
        seq = present[s][observed[s]].astype(np.int8)
        step = np.diff(seq)
        appear[s] = int((step == 1).sum())
        disappear[s] = int((step == -1).sum())
    events = appear + disappear
    with np.errstate(invalid="ignore", divide="ignore"):
        occupancy = np.where(n_obs > 0, n_present / np.maximum(n_obs, 1), np.nan)
        rate = np.where(n_obs > 1, events / np.maximum(n_obs - 1, 1), np.nan)
    first = np.array([np.flatnonzero(p)[0] if p.any() else -1 for p in present], int)
    last = np.array([np.flatnonzero(p)[-1] if p.any() else -1 for p in present], int)
    sites = pd.DataFrame(
        {
            "site": np.arange(n_sites),
            "y": centre[:, 0],
            "x": centre[:, 1],
            "n_present": n_present,
            "n_observed": n_obs,
            "occupancy": occupancy,
            "appear": appear,
            "disappear": disappear,
            "events": events,
            "event_rate": rate,
            "first_frame": first,
            "last_frame": last,
        }
    )
    atoms["site"] = site
    atoms["occupancy"] = occupancy[site] if n_sites else []
    atoms["events"] = events[site] if n_sites else []
    return atoms, sites


def _cluster_sites(pts: NDArray, frames: NDArray, radius: float | None) -> NDArray[np.int64]:
    """Site id per atom: clusters of close drift-corrected positions, one atom per frame each."""
    n = len(pts)
    if n == 0:
        return np.zeros(0, np.int64)
    if radius is None:
        spacings = [
            _nn_spacing(pts[frames == f]) for f in np.unique(frames)[:20] if (frames == f).sum() > 1
        ]
        spacing = float(np.nanmedian(spacings)) if spacings else float("nan")
        radius = 0.35 * spacing if np.isfinite(spacing) else 2.0
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    # 1. connected components of atoms closer than the radius (across all frames)
    pairs = cKDTree(pts).query_pairs(radius, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    # 2. re-assign every atom to the nearest cluster centre (splits chains of close sites)
    centres = np.zeros((label.max() + 1, 2))
    np.add.at(centres, label, pts)
    centres /= np.bincount(label)[:, None]
    _, label = cKDTree(centres).query(pts)
    # 3. one atom per site and frame: the closest keeps the site, the others start new sites
    dist = np.hypot(*(pts - centres[label]).T)
    order = np.lexsort((dist, frames, label))
    dup = np.zeros(n, bool)
    key = label[order] * (frames.max() + 1) + frames[order]
    dup[order[1:]] = key[1:] == key[:-1]
    label = label.astype(np.int64)
    label[dup] = label.max() + 1 + np.arange(dup.sum())
    _, label = np.unique(label, return_inverse=True)  # ids 0..n_sites-1 in order
    return label.astype(np.int64)


def analyze_sequence(
    stack: Any,
    *,
    detector: Any = None,
    threshold: float | None = None,
    refine: bool | None = None,
    polarity: str = "auto",
    spacing: float | None = None,
    gaussian: str = "auto",
    drift: str | None = "atoms",
    radius: float | None = None,
    source: str | None = None,
    device: str | None = None,
    progress: ProgressCallback | None = None,
    cancelled: CancelledCallback | None = None,
    pixel_size_nm: float | None = None,
) -> SequenceResult:
    """Atoms in every frame, drift, sites, occupancy and events of a T×Y×X movie.

    Parameters
    ----------
    stack : array_like, shape (T, H, W)
        The movie (numpy, memory map or lazy dask array).
    detector, threshold, refine, polarity, spacing, gaussian, device, pixel_size_nm
        As in :func:`find_atoms_stack` (contrast, spacing and Gaussian model are resolved once
        for the movie).
    drift : {"atoms", "image", None}
        Estimate the drift from the refined atom positions, from the images
        (cross-correlation of consecutive frames), or assume none.
    radius : float, optional
        Site linking radius (px), see :func:`site_occupancy`.
    source : str, optional
        Name of the movie, for the provenance.
    progress : callable, optional
        ``progress(done, total)``: one step per frame for detection, then one per frame for
        image drift.
    cancelled : callable, optional
        Polled between frames.

    Returns
    -------
    SequenceResult
    """
    if drift not in ("atoms", "image", None):
        raise ValueError(f"drift must be 'atoms', 'image' or None, got {drift!r}")
    n = frame_count(stack)
    total = n * (2 if drift == "image" else 1)

    def step(offset: int) -> ProgressCallback | None:
        if progress is None:
            return None
        return lambda done, _total: progress(offset + done, total)

    atoms, per_frame, provenance = find_atoms_stack(
        stack,
        detector=detector,
        threshold=threshold,
        refine=refine,
        polarity=polarity,
        spacing=spacing,
        gaussian=gaussian,
        source=source,
        device=device,
        progress=step(0),
        cancelled=cancelled,
        pixel_size_nm=pixel_size_nm,
    )
    if drift == "image":
        found = provenance["params"].get("lattice_spacing")
        shifts = estimate_drift(
            stack,
            max_step=0.4 * found if found else None,
            progress=step(n),
            cancelled=cancelled,
        )
    elif drift == "atoms":
        shifts = estimate_drift(atoms, n_frames=n)
    else:
        shifts = np.zeros((n, 2))
    shape = tuple(int(s) for s in stack.shape[-2:])
    atoms, sites = site_occupancy(atoms, drift=shifts, n_frames=n, shape=shape, radius=radius)
    per_frame["dy"] = shifts[per_frame["frame"].to_numpy(int), 0]
    per_frame["dx"] = shifts[per_frame["frame"].to_numpy(int), 1]
    provenance["params"].update(drift=drift, radius=radius)
    provenance.update(
        step="analyze_sequence",
        n_sites=len(sites),
        mean_occupancy=float(sites["occupancy"].mean()) if len(sites) else float("nan"),
        total_events=int(sites["events"].sum()) if len(sites) else 0,
        coordinates="pixels; y = row, x = column; y_corr, x_corr: drift-corrected (frame 0)",
    )
    return SequenceResult(
        atoms=atoms, sites=sites, drift=shifts, frames=per_frame, provenance=provenance
    )
