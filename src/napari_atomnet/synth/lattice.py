"""General 2D lattice images: the parameter space the atom detector is trained on.

:func:`lattice_image` renders one image of atomic columns (isotropic 2D Gaussians sampled at
pixel centres) on a 2D Bravais lattice with a basis, with exact ground truth;
:func:`random_lattice_params` draws a random point of the whole parameter space, so that
``lattice_image(**random_lattice_params(rng))`` is one training example.

Parameter space
---------------
lattice
    ``"square"``, ``"rectangular"`` (``|b| = aspect |a|``), ``"hexagonal"`` (60° between a and b),
    ``"honeycomb"`` (hexagonal with two sites, graphene / hBN-like), ``"oblique"`` (``aspect`` and
    ``angle_deg`` free), ``"perovskite"`` (square, bright A at the corner and a weak B at the cell
    centre; optionally weak O columns at the edge centres through ``basis``) and ``"rocksalt"``
    (square, two species of comparable brightness on a checkerboard).
spacing
    The nearest-neighbour distance between any two columns of the ideal structure, in px
    (6-40 px in :func:`random_lattice_params`). The lattice constant follows from it and the basis:
    ``a = spacing`` (square), ``sqrt(3) * spacing`` (honeycomb), ``sqrt(2) * spacing``
    (perovskite, rocksalt).
sigma_frac
    Gaussian width of a column as a fraction of ``spacing`` (0.08-0.5: from sharp isolated peaks to
    strongly overlapping columns).
dose
    Expected counts of the strongest column's Gaussian height above the background (equal to the
    peak above background where columns do not overlap), ~8 to ~5000.
polarity
    ``"bright"`` (HAADF-like: counts = background + atoms) or ``"dark"`` (ABF-like: atoms are dips
    of the same depth in a bright background).
background, background_gradient
    Background level (fraction of ``dose``) and its linear change across the image.
interface
    A second lattice (another type, spacing, rotation, basis) beyond a random straight line.
surface
    Vacuum (no atoms, another background level) beyond a random line, wavy line, or circle.
vacancy_fraction, position_jitter, amplitude_spread
    Missing columns, random static displacements (fraction of ``spacing``), column brightness
    scatter (relative).
mtf
    Detector MTF of seed 003, Eq. 5, applied to the Poisson counts (it colours the noise).

Ground truth: ``atoms`` has one row per column whose centre lies inside the image, with ``class``
(global index of its basis site: the primary lattice's sites first, then the interface lattice's)
and ``class_name``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy.spatial import cKDTree

from ._render import apply_mtf
from ._types import AtomImage

__all__ = ["LATTICE_TYPES", "lattice_image", "random_lattice_params"]

LATTICE_TYPES: tuple[str, ...] = (
    "square",
    "rectangular",
    "hexagonal",
    "honeycomb",
    "oblique",
    "perovskite",
    "rocksalt",
)

# basis entries: (fraction along a, fraction along b, relative amplitude, name)
_DEFAULT_BASIS: dict[str, list[tuple[float, float, float, str]]] = {
    "square": [(0.0, 0.0, 1.0, "atom")],
    "rectangular": [(0.0, 0.0, 1.0, "atom")],
    "hexagonal": [(0.0, 0.0, 1.0, "atom")],
    "honeycomb": [(0.0, 0.0, 1.0, "A"), (1.0 / 3.0, 1.0 / 3.0, 1.0, "B")],
    "oblique": [(0.0, 0.0, 1.0, "atom")],
    "perovskite": [(0.0, 0.0, 1.0, "A"), (0.5, 0.5, 0.35, "B")],
    "rocksalt": [(0.0, 0.0, 1.0, "cation"), (0.5, 0.5, 0.7, "anion")],
}


# --------------------------------------------------------------------------------------------
# shared helpers (also used by perovskite.py and hrtem.py)
# --------------------------------------------------------------------------------------------
def _splat_isotropic(
    shape: tuple[int, int],
    y: ArrayLike,
    x: ArrayLike,
    amplitude: ArrayLike,
    sigma: ArrayLike,
    *,
    row_shift: NDArray[np.float64] | None = None,
    radius: float = 5.0,
) -> NDArray[np.float64]:
    """Sum isotropic Gaussians sampled at pixel centres (fast path of ``render_gaussians``).

    Each Gaussian is evaluated within ``radius`` sigma; the image is accumulated with
    ``np.bincount`` (about 8x faster than ``np.add.at``). With ``row_shift`` (one value per image
    row) row ``r`` of the result shows the Gaussians shifted by ``row_shift[r]`` along x, which is
    how scan-line jitter displaces a STEM image.
    """
    h, w = int(shape[0]), int(shape[1])
    y = np.atleast_1d(np.asarray(y, dtype=np.float64))
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    n = y.size
    amp = np.broadcast_to(np.asarray(amplitude, dtype=np.float64), (n,))
    sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (n,))
    out = np.zeros(h * w, dtype=np.float64)
    if n == 0:
        return out.reshape(h, w)
    extra = 0 if row_shift is None else int(np.ceil(np.abs(row_shift).max()))
    half = np.ceil(radius * sig).astype(np.intp)
    for r in np.unique(half):
        idx = np.nonzero(half == r)[0]
        offs = np.arange(-r, r + 1)
        offs_x = np.arange(-r - extra, r + extra + 1)
        chunk = max(1, 2_000_000 // (offs.size * offs_x.size))
        for start in range(0, idx.size, chunk):
            sel = idx[start : start + chunk]
            yy, xx, a, s = y[sel], x[sel], amp[sel], sig[sel]
            rows = np.round(yy).astype(np.intp)[:, None] + offs  # (k, n)
            cols = np.round(xx).astype(np.intp)[:, None] + offs_x  # (k, m)
            gy = a[:, None] * np.exp(-0.5 * ((rows - yy[:, None]) / s[:, None]) ** 2)
            rok = (rows >= 0) & (rows < h)
            cok = (cols >= 0) & (cols < w)
            if row_shift is None:
                gx = np.exp(-0.5 * ((cols - xx[:, None]) / s[:, None]) ** 2)
                vals = gy[:, :, None] * gx[:, None, :]
            else:
                shift = row_shift[np.clip(rows, 0, h - 1)]  # (k, n)
                dx = cols[:, None, :] - xx[:, None, None] - shift[:, :, None]
                vals = gy[:, :, None] * np.exp(-0.5 * (dx / s[:, None, None]) ** 2)
            ok = rok[:, :, None] & cok[:, None, :]
            flat = rows[:, :, None] * w + cols[:, None, :]
            out += np.bincount(flat[ok], vals[ok], minlength=h * w)
    return out.reshape(h, w)


def _inside(y: NDArray, x: NDArray, shape: tuple[int, int]) -> NDArray[np.bool_]:
    """Whether a position lies inside the image (pixel extents -0.5 ... n - 0.5)."""
    return (y >= -0.5) & (y < shape[0] - 0.5) & (x >= -0.5) & (x < shape[1] - 0.5)


def _ramp(
    shape: tuple[int, int], angle: float, row_shift: NDArray | None = None
) -> NDArray[np.float64]:
    """Linear ramp from -0.5 to 0.5 across the image along direction ``angle`` (rad, from +x)."""
    h, w = shape
    gy, gx = np.sin(angle), np.cos(angle)
    yy = np.arange(h, dtype=np.float64)[:, None] - (h - 1) / 2.0
    xx = np.arange(w, dtype=np.float64)[None, :] - (w - 1) / 2.0
    if row_shift is not None:
        xx = xx - row_shift[:, None]
    extent = abs(gy) * max(h - 1, 1) + abs(gx) * max(w - 1, 1)
    return (yy * gy + xx * gx) / extent


def _table(
    y: NDArray,
    x: NDArray,
    cls: NDArray,
    names: Sequence[str],
    **columns: NDArray,
) -> pd.DataFrame:
    """Build the atoms table with the standard leading columns."""
    df = pd.DataFrame(
        {
            "y": np.asarray(y, dtype=np.float64),
            "x": np.asarray(x, dtype=np.float64),
            "class": np.asarray(cls, dtype=np.int64),
            "class_name": np.asarray(names, dtype=object)[np.asarray(cls, dtype=np.intp)]
            if len(cls)
            else np.array([], dtype=object),
        }
    )
    for key, val in columns.items():
        df[key] = val
    return df


# --------------------------------------------------------------------------------------------
# lattice geometry
# --------------------------------------------------------------------------------------------
def _cell_shape(lattice: str, aspect: float, angle_deg: float) -> tuple[float, float]:
    """(|b| / |a|, angle between a and b in degrees) of a lattice type."""
    if lattice in ("square", "perovskite", "rocksalt"):
        return 1.0, 90.0
    if lattice == "rectangular":
        return float(aspect), 90.0
    if lattice in ("hexagonal", "honeycomb"):
        return 1.0, 60.0
    if lattice == "oblique":
        return float(aspect), float(angle_deg)
    raise ValueError(f"unknown lattice {lattice!r}; expected one of {LATTICE_TYPES}")


def _parse_basis(
    basis: Sequence[Sequence[Any]] | None, lattice: str
) -> tuple[NDArray, NDArray, NDArray, list[str], NDArray]:
    """Basis as arrays: fa, fb, relative amplitude, names, sigma scale."""
    entries = _DEFAULT_BASIS[lattice] if basis is None else basis
    if len(entries) == 0:
        raise ValueError("basis must have at least one site")
    fa, fb, amp, names, sscale = [], [], [], [], []
    for k, e in enumerate(entries):
        if len(e) < 3:
            raise ValueError("basis entries are (frac_a, frac_b, amplitude[, name[, sigma_scale]])")
        fa.append(float(e[0]) % 1.0)
        fb.append(float(e[1]) % 1.0)
        amp.append(float(e[2]))
        names.append(str(e[3]) if len(e) > 3 else f"site{k}")
        sscale.append(float(e[4]) if len(e) > 4 else 1.0)
    amp_a = np.asarray(amp)
    if np.any(amp_a < 0) or amp_a.max() <= 0:
        raise ValueError("basis amplitudes must be >= 0 with at least one > 0")
    return np.asarray(fa), np.asarray(fb), amp_a, names, np.asarray(sscale)


def _unit_nn_distance(ratio: float, gamma_deg: float, fa: NDArray, fb: NDArray) -> float:
    """Nearest-neighbour distance of the structure with |a| = 1."""
    g = np.deg2rad(gamma_deg)
    a = np.array([1.0, 0.0])
    b = ratio * np.array([np.cos(g), np.sin(g)])
    p = fa[:, None] * a + fb[:, None] * b  # (k, 2)
    n = np.arange(-2, 3)
    shifts = (n[:, None, None] * a + n[None, :, None] * b).reshape(-1, 2)
    d = p[None, :, None, :] + shifts[None, None, :, :] - p[:, None, None, :]
    dist = np.hypot(d[..., 0], d[..., 1])
    dist[dist < 1e-9] = np.inf
    dmin = float(dist.min())
    if not np.isfinite(dmin):
        raise ValueError("degenerate basis")
    return dmin


def _lattice_spec(
    lattice: str,
    spacing: float,
    aspect: float,
    angle_deg: float,
    rotation_deg: float,
    basis: Sequence[Sequence[Any]] | None,
    sigma_frac: float,
) -> dict[str, Any]:
    """Resolve one lattice's geometry: lattice vectors (y, x) in px, basis, sigmas."""
    if lattice not in LATTICE_TYPES:
        raise ValueError(f"unknown lattice {lattice!r}; expected one of {LATTICE_TYPES}")
    if not spacing > 0:
        raise ValueError("spacing must be > 0")
    if not sigma_frac > 0:
        raise ValueError("sigma_frac must be > 0")
    ratio, gamma = _cell_shape(lattice, aspect, angle_deg)
    if not ratio > 0 or not 0 < gamma < 180:
        raise ValueError("need aspect > 0 and 0 < angle_deg < 180")
    fa, fb, amp, names, sscale = _parse_basis(basis, lattice)
    scale = spacing / _unit_nn_distance(ratio, gamma, fa, fb)
    phi = np.deg2rad(rotation_deg)
    g = np.deg2rad(gamma)
    # angles are measured from +x towards +y (row): clockwise on screen, where y points down
    a_vec = scale * np.array([np.sin(phi), np.cos(phi)])
    b_vec = scale * ratio * np.array([np.sin(phi + g), np.cos(phi + g)])
    return {
        "lattice": lattice,
        "spacing": float(spacing),
        "a": a_vec,
        "b": b_vec,
        "fa": fa,
        "fb": fb,
        "amp": amp,
        "names": names,
        "sigma": sigma_frac * spacing * sscale,
    }


def _lattice_sites(
    shape: tuple[int, int], spec: Mapping[str, Any], rng: np.random.Generator, pad: float
) -> dict[str, NDArray]:
    """All sites of a lattice whose centre lies within ``pad`` px of the image."""
    h, w = shape
    a, b = spec["a"], spec["b"]
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    u, v = rng.uniform(0.0, 1.0, 2)
    origin = centre + u * a + v * b
    m = np.column_stack([a, b])  # r - origin = m @ (i, j)
    minv = np.linalg.inv(m)
    corners = np.array([[-pad, -pad], [-pad, w + pad], [h + pad, -pad], [h + pad, w + pad]])
    frac = (corners - origin) @ minv.T
    i0, j0 = np.floor(frac.min(axis=0)).astype(int) - 1
    i1, j1 = np.ceil(frac.max(axis=0)).astype(int) + 1
    ii, jj = np.meshgrid(np.arange(i0, i1 + 1), np.arange(j0, j1 + 1), indexing="ij")
    ii, jj = ii.ravel(), jj.ravel()
    ys, xs, ks, cis, cjs = [], [], [], [], []
    for k in range(len(spec["fa"])):
        fi = ii + spec["fa"][k]
        fj = jj + spec["fb"][k]
        p = origin + fi[:, None] * a + fj[:, None] * b
        keep = (p[:, 0] > -pad) & (p[:, 0] < h + pad) & (p[:, 1] > -pad) & (p[:, 1] < w + pad)
        ys.append(p[keep, 0])
        xs.append(p[keep, 1])
        ks.append(np.full(int(keep.sum()), k))
        cis.append(ii[keep])
        cjs.append(jj[keep])
    return {
        "y": np.concatenate(ys),
        "x": np.concatenate(xs),
        "site": np.concatenate(ks),
        "i": np.concatenate(cis),
        "j": np.concatenate(cjs),
        "origin": origin,
    }


# --------------------------------------------------------------------------------------------
# regions
# --------------------------------------------------------------------------------------------
def _line_side(y: NDArray, x: NDArray, point: NDArray, normal_deg: float) -> NDArray:
    """Signed distance (px) from a line through ``point`` with normal at ``normal_deg``."""
    t = np.deg2rad(normal_deg)
    return (y - point[0]) * np.sin(t) + (x - point[1]) * np.cos(t)


def _surface_function(
    surface: Mapping[str, Any], shape: tuple[int, int]
) -> tuple[dict[str, Any], Any]:
    """Resolve a surface spec; return it with defaults filled in and ``f(y, x)`` (> 0: vacuum)."""
    h, w = shape
    s = dict(surface)
    kind = s.setdefault("kind", "line")
    if kind in ("line", "wavy"):
        pf = np.asarray(s.setdefault("point_frac", (0.5, 0.5)), dtype=float)
        point = np.array([pf[0] * (h - 1), pf[1] * (w - 1)])
        normal = float(s.setdefault("normal_deg", 0.0))
        amp = float(s.setdefault("amplitude_px", 0.0 if kind == "line" else 0.05 * min(h, w)))
        wl = float(s.setdefault("wavelength_px", 0.5 * max(h, w)))
        phase = float(s.setdefault("phase", 0.0))
        t = np.deg2rad(normal)

        def f(y: NDArray, x: NDArray) -> NDArray:
            d = _line_side(y, x, point, normal)
            along = -(y - point[0]) * np.cos(t) + (x - point[1]) * np.sin(t)
            return d - amp * np.sin(2 * np.pi * along / wl + phase)

    elif kind == "circle":
        cf = np.asarray(s.setdefault("center_frac", (0.5, 0.5)), dtype=float)
        centre = np.array([cf[0] * (h - 1), cf[1] * (w - 1)])
        radius = float(s.setdefault("radius_frac", 0.4)) * min(h, w)
        inside = bool(s.setdefault("vacuum_inside", False))
        sign = -1.0 if inside else 1.0

        def f(y: NDArray, x: NDArray) -> NDArray:
            return sign * (np.hypot(y - centre[0], x - centre[1]) - radius)

    else:
        raise ValueError(f"unknown surface kind {kind!r}; expected 'line', 'wavy' or 'circle'")
    s.setdefault("vacuum_background", 0.3)
    return s, f


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def lattice_image(
    shape: tuple[int, int] = (256, 256),
    *,
    lattice: str = "square",
    spacing: float = 16.0,
    aspect: float = 1.0,
    angle_deg: float = 90.0,
    rotation_deg: float = 0.0,
    basis: Sequence[Sequence[Any]] | None = None,
    sigma_frac: float = 0.15,
    dose: float = 200.0,
    polarity: str = "bright",
    background: float = 0.2,
    background_gradient: float = 0.0,
    gradient_angle_deg: float = 0.0,
    interface: Mapping[str, Any] | None = None,
    surface: Mapping[str, Any] | None = None,
    vacancy_fraction: float = 0.0,
    position_jitter: float = 0.0,
    amplitude_spread: float = 0.0,
    mtf: tuple[float, float, float] | None = None,
    pixel_size_nm: float | None = None,
    seed: int = 0,
) -> AtomImage:
    """Simulate an image of atomic columns on a 2D lattice with a basis.

    Parameters
    ----------
    shape : tuple of int
        (H, W) of the image.
    lattice : str
        One of ``LATTICE_TYPES`` (see the module docstring).
    spacing : float
        Nearest-neighbour distance between columns of the ideal structure, px.
    aspect : float
        ``|b| / |a|`` for ``"rectangular"`` and ``"oblique"`` (ignored otherwise).
    angle_deg : float
        Angle between a and b for ``"oblique"`` (ignored otherwise).
    rotation_deg : float
        Direction of the lattice vector a, degrees from +x towards +y (clockwise on screen).
    basis : sequence of tuple, optional
        Sites ``(frac_a, frac_b, amplitude[, name[, sigma_scale]])`` replacing the lattice type's
        default basis; the class of a column is the index of its site.
    sigma_frac : float
        Column Gaussian sigma as a fraction of ``spacing``.
    dose : float
        Expected counts of the strongest site's Gaussian height above the background.
    polarity : {"bright", "dark"}
        Bright atoms on a dark background (HAADF-like) or dark atoms on a bright one (ABF-like).
    background : float
        Background level as a fraction of ``dose``.
    background_gradient : float
        Change of the background across the image (fraction of ``dose``), along
        ``gradient_angle_deg``.
    gradient_angle_deg : float
        Direction of the background gradient (degrees from +x towards +y).
    interface : dict, optional
        A second lattice beyond a line. Keys (all optional): ``lattice``, ``spacing``, ``aspect``,
        ``angle_deg``, ``rotation_deg``, ``basis``, ``sigma_frac`` (default: the primary
        lattice's), ``amplitude`` (scale of its column brightness, default 1), ``point_frac``
        ((fy, fx) of a point on the line, in fractions of the image size, default the centre),
        ``normal_deg`` (direction of the line's normal; the second lattice lies on the side it
        points to; default 0). Columns of the second lattice closer than 0.6 of the smaller
        spacing to a column of the first are dropped.
    surface : dict, optional
        Vacuum where there are no atoms. ``kind``: ``"line"``, ``"wavy"`` (keys ``point_frac``,
        ``normal_deg``: vacuum on the side the normal points to; ``amplitude_px``,
        ``wavelength_px``, ``phase`` for the wave) or ``"circle"`` (``center_frac``,
        ``radius_frac`` of min(H, W), ``vacuum_inside``); ``vacuum_background`` is the vacuum's
        background as a fraction of the crystal's (default 0.3).
    vacancy_fraction : float
        Probability that a column is missing.
    position_jitter : float
        RMS random displacement of every column, as a fraction of ``spacing`` (truth includes it).
    amplitude_spread : float
        Relative RMS scatter of column amplitudes.
    mtf : tuple of float, optional
        ``(c1, c2, c3)`` of the detector MTF (seed 003, Eq. 5), applied to the Poisson counts
        (colouring the noise) and to the clean image.
    pixel_size_nm : float, optional
        Calibration stored with the result.
    seed : int
        Random seed; the same arguments give the same image bit for bit.

    Returns
    -------
    AtomImage
        ``image`` (float32 counts), ``atoms`` (y, x, class, class_name, amplitude (signed:
        negative for dark columns), sigma, domain (0 primary, 1 interface lattice), site),
        ``extras``: ``clean`` (expected image, float32), ``vacancies`` (y, x, class,
        class_name), ``lattices`` (per domain: lattice, spacing, a, b vectors in (y, x) px,
        origin), ``interface`` / ``surface`` (the resolved specs).

    Examples
    --------
    >>> sim = lattice_image((64, 64), lattice="hexagonal", spacing=10.0, seed=1)
    >>> sim.image.shape, sim.image.dtype.name
    ((64, 64), 'float32')
    >>> sorted(sim.atoms["class_name"].unique())
    ['atom']
    """
    shape = (int(shape[0]), int(shape[1]))
    if min(shape) < 2:
        raise ValueError("shape must be at least 2 x 2")
    if polarity not in ("bright", "dark"):
        raise ValueError("polarity must be 'bright' or 'dark'")
    if dose < 0 or background < 0:
        raise ValueError("dose and background must be >= 0")
    if not 0.0 <= vacancy_fraction <= 1.0:
        raise ValueError("vacancy_fraction must lie in [0, 1]")
    ss = np.random.SeedSequence(int(seed))
    r_geo, r_geo2, r_jit, r_vac, r_amp, r_noise = (np.random.default_rng(s) for s in ss.spawn(6))

    specs = [_lattice_spec(lattice, spacing, aspect, angle_deg, rotation_deg, basis, sigma_frac)]
    iface: dict[str, Any] | None = None
    if interface is not None:
        iface = dict(interface)
        for key, val in (
            ("lattice", lattice),
            ("spacing", spacing),
            ("aspect", aspect),
            ("angle_deg", angle_deg),
            ("rotation_deg", rotation_deg),
            ("basis", None if iface.get("lattice", lattice) != lattice else basis),
            ("sigma_frac", sigma_frac),
            ("amplitude", 1.0),
            ("point_frac", (0.5, 0.5)),
            ("normal_deg", 0.0),
        ):
            iface.setdefault(key, val)
        specs.append(
            _lattice_spec(
                iface["lattice"],
                iface["spacing"],
                iface["aspect"],
                iface["angle_deg"],
                iface["rotation_deg"],
                iface["basis"],
                iface["sigma_frac"],
            )
        )
        specs[1]["amp"] = specs[1]["amp"] * float(iface["amplitude"])

    max_sigma = max(float(np.max(s["sigma"])) for s in specs)
    pad = 5.0 * max_sigma + 2.0 + 4.0 * position_jitter * spacing
    parts = []
    names: list[str] = []
    lattices_info = []
    for d, (spec, rng) in enumerate(zip(specs, (r_geo, r_geo2), strict=False)):
        sites = _lattice_sites(shape, spec, rng, pad)
        n = sites["y"].size
        parts.append(
            {
                "y": sites["y"],
                "x": sites["x"],
                "cls": sites["site"] + len(names),
                "site": sites["site"],
                "amp": spec["amp"][sites["site"]],
                "sigma": spec["sigma"][sites["site"]],
                "domain": np.full(n, d),
            }
        )
        names.extend(nm if d == 0 else f"{nm}_2" for nm in spec["names"])
        lattices_info.append(
            {
                "lattice": spec["lattice"],
                "spacing": spec["spacing"],
                "a": tuple(spec["a"]),
                "b": tuple(spec["b"]),
                "origin": tuple(sites["origin"]),
            }
        )
    if iface is not None:
        pf = np.asarray(iface["point_frac"], dtype=float)
        point = np.array([pf[0] * (shape[0] - 1), pf[1] * (shape[1] - 1)])
        for d, part in enumerate(parts):
            side = _line_side(part["y"], part["x"], point, float(iface["normal_deg"]))
            keep = side < 0 if d == 0 else side >= 0
            for key in part:
                part[key] = part[key][keep]
        # drop second-lattice columns that crowd a first-lattice column at the interface
        if parts[0]["y"].size and parts[1]["y"].size:
            tree = cKDTree(np.column_stack([parts[0]["y"], parts[0]["x"]]))
            dist, _ = tree.query(np.column_stack([parts[1]["y"], parts[1]["x"]]))
            keep = dist >= 0.6 * min(specs[0]["spacing"], specs[1]["spacing"])
            for key in parts[1]:
                parts[1][key] = parts[1][key][keep]
    cols = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    n = cols["y"].size
    if position_jitter > 0:
        cols["y"] = cols["y"] + r_jit.normal(0.0, position_jitter * spacing, n)
        cols["x"] = cols["x"] + r_jit.normal(0.0, position_jitter * spacing, n)

    surf: dict[str, Any] | None = None
    vac_fn = None
    if surface is not None:
        surf, vac_fn = _surface_function(surface, shape)
        keep = vac_fn(cols["y"], cols["x"]) <= 0
        cols = {key: val[keep] for key, val in cols.items()}
        n = cols["y"].size

    missing = r_vac.random(n) < vacancy_fraction
    vac_in = missing & _inside(cols["y"], cols["x"], shape)
    vacancies = _table(cols["y"][vac_in], cols["x"][vac_in], cols["cls"][vac_in], names)
    cols = {key: val[~missing] for key, val in cols.items()}

    # amplitudes in counts; the strongest site of any lattice has height ``dose``
    amp_max = max(float(np.max(s["amp"])) for s in specs)
    amp = cols["amp"] / amp_max
    if amplitude_spread > 0:
        amp = np.clip(amp * (1.0 + amplitude_spread * r_amp.normal(size=amp.size)), 0.0, None)
    amp = amp * dose
    atoms_img = _splat_isotropic(shape, cols["y"], cols["x"], amp, cols["sigma"])

    bg = background + background_gradient * _ramp(shape, np.deg2rad(gradient_angle_deg))
    if vac_fn is not None and surf is not None:
        yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
        edge = max(float(np.median(cols["sigma"])) if n else 1.0, 1.0)
        frac_vac = 0.5 * (1.0 + np.tanh(vac_fn(yy, xx) / (2.0 * edge)))
        bg = bg * (1.0 + (float(surf["vacuum_background"]) - 1.0) * frac_vac)
    bg = np.clip(bg, 0.0, None) * dose
    if polarity == "bright":
        expected = bg + atoms_img
        signed = amp
    else:
        level = float(atoms_img.max()) if atoms_img.size else 0.0
        expected = bg + level - atoms_img
        signed = -amp
    counts = r_noise.poisson(np.clip(expected, 0.0, None)).astype(np.float64)
    if mtf is not None:
        c1, c2, c3 = (float(c) for c in mtf)
        expected = apply_mtf(expected, c1, c2, c3)
        counts = apply_mtf(counts, c1, c2, c3)

    keep = _inside(cols["y"], cols["x"], shape)
    atoms = _table(
        cols["y"][keep],
        cols["x"][keep],
        cols["cls"][keep],
        names,
        amplitude=signed[keep],
        sigma=cols["sigma"][keep],
        domain=cols["domain"][keep].astype(np.int64),
        site=cols["site"][keep].astype(np.int64),
    )
    params = {
        "shape": shape,
        "lattice": lattice,
        "spacing": float(spacing),
        "aspect": float(aspect),
        "angle_deg": float(angle_deg),
        "rotation_deg": float(rotation_deg),
        "basis": None if basis is None else [tuple(e) for e in basis],
        "sigma_frac": float(sigma_frac),
        "dose": float(dose),
        "polarity": polarity,
        "background": float(background),
        "background_gradient": float(background_gradient),
        "gradient_angle_deg": float(gradient_angle_deg),
        "interface": iface,
        "surface": surf,
        "vacancy_fraction": float(vacancy_fraction),
        "position_jitter": float(position_jitter),
        "amplitude_spread": float(amplitude_spread),
        "mtf": None if mtf is None else tuple(float(c) for c in mtf),
        "pixel_size_nm": pixel_size_nm,
        "seed": int(seed),
        "class_names": list(names),
    }
    return AtomImage(
        image=counts.astype(np.float32),
        atoms=atoms,
        params=params,
        pixel_size_nm=pixel_size_nm,
        extras={
            "clean": expected.astype(np.float32),
            "vacancies": vacancies,
            "lattices": lattices_info,
            "interface": iface,
            "surface": surf,
        },
    )


def _random_basis(lattice: str, rng: np.random.Generator) -> list[tuple[float, float, float, str]]:
    """Draw a random basis (relative brightness) for a lattice type."""
    if lattice == "perovskite":
        basis = [(0.0, 0.0, 1.0, "A"), (0.5, 0.5, float(rng.uniform(0.15, 0.6)), "B")]
        if rng.random() < 0.3:  # oxygen columns visible (e.g. ABF)
            o = float(rng.uniform(0.05, 0.2))
            basis += [(0.5, 0.0, o, "O"), (0.0, 0.5, o, "O2")]
        return basis
    if lattice == "rocksalt":
        return [(0.0, 0.0, 1.0, "cation"), (0.5, 0.5, float(rng.uniform(0.4, 1.0)), "anion")]
    if lattice == "honeycomb":
        second = 1.0 if rng.random() < 0.5 else float(rng.uniform(0.3, 0.9))
        return [(0.0, 0.0, 1.0, "A"), (1.0 / 3.0, 1.0 / 3.0, second, "B")]
    return [(0.0, 0.0, 1.0, "atom")]


def _random_geometry(rng: np.random.Generator) -> dict[str, Any]:
    """Draw a random lattice type, spacing, cell shape, rotation and basis."""
    lattice = str(rng.choice(LATTICE_TYPES, p=[0.14, 0.12, 0.15, 0.15, 0.12, 0.18, 0.14]))
    aspect = 1.0
    angle = 90.0
    if lattice in ("rectangular", "oblique"):
        aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    if lattice == "oblique":
        angle = float(rng.uniform(60.0, 120.0))
    return {
        "lattice": lattice,
        "spacing": float(np.exp(rng.uniform(np.log(6.0), np.log(40.0)))),
        "aspect": aspect,
        "angle_deg": angle,
        "rotation_deg": float(rng.uniform(0.0, 360.0)),
        "basis": _random_basis(lattice, rng),
        "sigma_frac": float(
            rng.uniform(0.08, 0.3) if rng.random() < 0.8 else rng.uniform(0.3, 0.5)
        ),
    }


def random_lattice_params(rng: np.random.Generator) -> dict[str, Any]:
    """Draw a random point of the whole :func:`lattice_image` parameter space.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    dict
        Keyword arguments for :func:`lattice_image` (everything but ``shape``), including a
        ``seed``; ``interface`` and ``surface`` positions are given in fractions of the image size,
        so the same parameters suit any shape.

    Examples
    --------
    >>> p = random_lattice_params(np.random.default_rng(0))
    >>> sim = lattice_image((48, 48), **p)
    >>> sim.image.shape
    (48, 48)
    """
    p = _random_geometry(rng)
    polarity = "bright" if rng.random() < 0.65 else "dark"
    p.update(
        dose=float(np.exp(rng.uniform(np.log(8.0), np.log(5000.0)))),
        polarity=polarity,
        background=float(rng.uniform(0.0, 0.5) if polarity == "bright" else rng.uniform(0.05, 0.5)),
        background_gradient=float(rng.uniform(0.0, 0.3)) if rng.random() < 0.5 else 0.0,
        gradient_angle_deg=float(rng.uniform(0.0, 360.0)),
        vacancy_fraction=float(rng.uniform(0.0, 0.1)) if rng.random() < 0.3 else 0.0,
        position_jitter=float(rng.uniform(0.0, 0.03)),
        amplitude_spread=float(rng.uniform(0.0, 0.15)),
        mtf=(
            (float(rng.uniform(0, 0.1)), float(rng.uniform(0.4, 0.6)), float(rng.uniform(2, 3)))
            if rng.random() < 0.5
            else None
        ),
        interface=None,
        surface=None,
        pixel_size_nm=None,
    )
    if rng.random() < 0.2:
        second = _random_geometry(rng)
        second["spacing"] = float(np.clip(p["spacing"] * rng.uniform(0.7, 1.4), 6.0, 40.0))
        second.update(
            amplitude=float(rng.uniform(0.5, 1.0)),
            point_frac=(float(rng.uniform(0.25, 0.75)), float(rng.uniform(0.25, 0.75))),
            normal_deg=float(rng.uniform(0.0, 360.0)),
        )
        p["interface"] = second
    if rng.random() < 0.2:
        kind = str(rng.choice(["line", "wavy", "circle"]))
        vac_bg = float(rng.uniform(0.0, 0.8) if polarity == "bright" else rng.uniform(1.0, 1.5))
        if kind == "circle":
            surf: dict[str, Any] = {
                "kind": "circle",
                "center_frac": (float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.7))),
                "radius_frac": float(rng.uniform(0.25, 0.45)),
                "vacuum_inside": bool(rng.random() < 0.3),
            }
        else:
            surf = {
                "kind": kind,
                "point_frac": (float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.2, 0.8))),
                "normal_deg": float(rng.uniform(0.0, 360.0)),
            }
            if kind == "wavy":
                surf.update(
                    amplitude_px=float(rng.uniform(0.5, 2.0) * p["spacing"]),
                    wavelength_px=float(rng.uniform(6.0, 20.0) * p["spacing"]),
                    phase=float(rng.uniform(0.0, 2 * np.pi)),
                )
        surf["vacuum_background"] = vac_bg
        p["surface"] = surf
    p["seed"] = int(rng.integers(0, 2**31 - 1))
    return p


#: ⟨110⟩ dumbbells of a zinc-blende crystal (GaAs-like: 0.9 and 1.0 brightness) in the
#: rectangular cell of :func:`dumbbell_image`: (fraction along a, fraction along b, amplitude,
#: species).
DUMBBELL_BASIS: tuple[tuple[float, float, float, str], ...] = (
    (0.0, 0.0, 0.9, "Ga"),
    (0.25, 0.0, 1.0, "As"),
    (0.5, 0.5, 0.9, "Ga"),
    (0.75, 0.5, 1.0, "As"),
)


def dumbbell_image(
    shape: tuple[int, int] = (256, 256),
    *,
    separation: float = 7.0,
    sigma_frac: float = 0.5,
    dose: float = 300.0,
    rotation_deg: float = 0.0,
    seed: int = 0,
    **kwargs: Any,
) -> AtomImage:
    """Simulate ⟨110⟩ dumbbells (Si, GaAs) imaged near the resolution limit.

    A rectangular cell (aspect 1/√2) with :data:`DUMBBELL_BASIS`: each dumbbell's two columns are
    ``separation`` px apart; with ``sigma_frac`` = 0.5 the pair shows as one elongated blob
    without a dip between its columns (the Sparrow limit).

    Parameters
    ----------
    shape : tuple of int
        Image size.
    separation : float
        Distance of a dumbbell's two columns (px).
    sigma_frac : float
        Column width as a fraction of ``separation``.
    dose : float
        Counts at the peak of a column of amplitude 1.
    rotation_deg : float
        Lattice rotation.
    seed : int
        Seed.
    **kwargs
        Further :func:`lattice_image` options (e.g. ``position_jitter``).

    Returns
    -------
    AtomImage
    """
    return lattice_image(
        shape,
        lattice="rectangular",
        aspect=2**-0.5,
        basis=list(DUMBBELL_BASIS),
        spacing=separation,
        sigma_frac=sigma_frac,
        dose=dose,
        rotation_deg=rotation_deg,
        seed=seed,
        **kwargs,
    )
