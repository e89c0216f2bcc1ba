"""Graphene-like HRTEM images after seed 003 (Madsen et al. 2018), with exact atom positions.

Structure (seed 003, Fig. 4): Poisson-disc seed points (Bridson's algorithm), their Voronoi
tessellation, whose vertices become the carbon atoms, a few steps of Lloyd relaxation, and zero to
four holes of random size and shape.

Image: the exit wave of a phase object ``exp(i φ)``, with ``φ`` the projected potential of every
atom as a Gaussian (rms 0.3-0.4 Å: the atom plus thermal blur) holding the integrated phase of a
carbon atom at 80 kV (about 0.12 rad Å²); the contrast transfer function (defocus, Cs, C5,
two-fold astigmatism, temporal coherence in the quasi-coherent approximation) is applied in Fourier
space, the intensity is ``|ψ|²``, the electron counts are Poisson with mean ``|ψ|² · dose · pixel
area``, and the detector MTF (seed 003, Eq. 5) blurs the counts, so the noise is coloured as on a
real detector. Microscope parameters left as ``None`` are drawn from seed 003, Table 1.

CTF convention (as in abTEM and Kirkland): ``H(q) = exp(-i χ(q)) E_t(q)`` with::

    χ(q) = π λ q² (-Δf + A cos 2(φ_q - φ_A)) + π/2 Cs λ³ q⁴ + π/3 C5 λ⁵ q⁶
    E_t(q) = exp(-(π λ Δ)² q⁴ / 2)

where Δf > 0 is underfocus, A and φ_A the astigmatism magnitude and angle, Δ the rms focal
spread, φ_q the azimuth of q measured from +x towards +y. Weak-phase atoms are bright where
sin χ > 0 dominates their spectrum and dark where sin χ < 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import fft as sfft
from scipy import sparse
from scipy.ndimage import gaussian_filter, map_coordinates
from scipy.spatial import Voronoi, cKDTree

from ._render import apply_mtf
from ._types import AtomImage
from .lattice import _inside, _splat_isotropic, _table

__all__ = [
    "ctf",
    "electron_wavelength",
    "graphene_hrtem",
    "graphene_structure",
    "image_intensity",
    "projected_phase",
    "simulation_ctf",
]

#: Integrated phase shift of one carbon atom at 80 kV, rad Å² (sigma_e * 47.88 V Å² * f_e(0)).
CARBON_PHASE_80KV = 0.118


def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å.

    Parameters
    ----------
    voltage_kv : float
        Acceleration voltage, kV.

    Returns
    -------
    float

    Examples
    --------
    >>> round(electron_wavelength(80.0), 5)
    0.04176
    """
    v = voltage_kv * 1e3
    return float(12.264259 / np.sqrt(v * (1.0 + 0.978476e-6 * v)))


def ctf(
    shape: tuple[int, int],
    pixel_size_angstrom: float,
    defocus_angstrom: float,
    cs_um: float,
    astig_angstrom: float,
    astig_angle: float,
    focal_spread_angstrom: float,
    voltage_kv: float = 80.0,
    *,
    c5_mm: float = 0.0,
) -> NDArray[np.complex128]:
    """Contrast transfer function with the temporal-coherence envelope, on an FFT grid.

    Parameters
    ----------
    shape : tuple of int
        (H, W) of the image; the result is in ``numpy.fft`` order (zero frequency at [0, 0]).
    pixel_size_angstrom : float
        Sampling, Å per pixel.
    defocus_angstrom : float
        Defocus Δf, Å (positive = underfocus).
    cs_um : float
        Third-order spherical aberration, µm.
    astig_angstrom : float
        Two-fold astigmatism magnitude, Å.
    astig_angle : float
        Astigmatism angle, radians (from +x towards +y).
    focal_spread_angstrom : float
        RMS focal spread Δ, Å (temporal coherence, quasi-coherent approximation).
    voltage_kv : float
        Acceleration voltage, kV.
    c5_mm : float
        Fifth-order spherical aberration, mm.

    Returns
    -------
    ndarray of complex128, shape ``shape``
        ``exp(-i χ(q)) · E_t(q)`` (see the module docstring).

    Examples
    --------
    >>> h = ctf((64, 64), 0.1, 50.0, -10.0, 0.0, 0.0, 30.0)
    >>> complex(h[0, 0])
    (1+0j)
    """
    lam = electron_wavelength(voltage_kv)
    qy = np.fft.fftfreq(shape[0], d=pixel_size_angstrom)[:, None]
    qx = np.fft.fftfreq(shape[1], d=pixel_size_angstrom)[None, :]
    q2 = qy**2 + qx**2
    # q² cos 2(φ_q - φ_A) without computing φ_q
    q2_astig = (qx**2 - qy**2) * np.cos(2 * astig_angle) + 2 * qx * qy * np.sin(2 * astig_angle)
    chi = (
        np.pi * lam * (-defocus_angstrom * q2 + astig_angstrom * q2_astig)
        + 0.5 * np.pi * (cs_um * 1e4) * lam**3 * q2**2
        + np.pi / 3.0 * (c5_mm * 1e7) * lam**5 * q2**3
    )
    envelope = np.exp(-0.5 * (np.pi * lam * focal_spread_angstrom) ** 2 * q2**2)
    return np.exp(-1j * chi) * envelope


def simulation_ctf(params: dict[str, Any], shape: tuple[int, int]) -> NDArray[np.complex128]:
    """Return the CTF a :func:`graphene_hrtem` simulation was imaged with, on an FFT grid.

    Parameters
    ----------
    params : dict
        ``AtomImage.params`` of the simulation (pixel size, defocus, Cs, C5, astigmatism,
        focal spread, voltage).
    shape : tuple of int
        (H, W) of the grid.

    Returns
    -------
    ndarray of complex128, shape ``shape``
        As :func:`ctf`.
    """
    return ctf(
        shape,
        params["pixel_size_angstrom"],
        params["defocus"],
        params["cs_um"],
        params["astig_angstrom"],
        params["astig_angle"],
        params["focal_spread"],
        params["voltage_kv"],
        c5_mm=params["c5_mm"],
    )


def projected_phase(
    shape: tuple[int, int],
    atoms: ArrayLike,
    pixel_size_angstrom: float,
    atom_sigma_angstrom: float = 0.35,
    *,
    phase_per_atom: float = CARBON_PHASE_80KV,
) -> NDArray[np.float64]:
    """Phase shift of a thin sheet of atoms: one Gaussian of integrated phase per atom.

    Parameters
    ----------
    shape : tuple of int
        (H, W) of the grid.
    atoms : array_like, shape (N, 2)
        Atom positions (y, x), px.
    pixel_size_angstrom : float
        Sampling, Å per pixel.
    atom_sigma_angstrom : float
        RMS width of an atom's projected potential (thermal blur included), Å.
    phase_per_atom : float
        Integrated phase of one atom, rad Å².

    Returns
    -------
    ndarray of float64, shape ``shape``
        The phase, rad.
    """
    yx = np.asarray(atoms, dtype=np.float64).reshape(-1, 2)
    peak = phase_per_atom / (2 * np.pi * atom_sigma_angstrom**2)
    sigma_px = atom_sigma_angstrom / pixel_size_angstrom
    return _splat_isotropic(shape, yx[:, 0], yx[:, 1], peak, sigma_px, radius=4.0)


def image_intensity(
    exit_spectrum: NDArray[np.complex128], transfer: NDArray[np.complex128]
) -> NDArray[np.float64]:
    """Image intensity ``|ψ|²`` of an exit wave (given as its FFT) through a transfer function."""
    wave = sfft.ifft2(exit_spectrum * transfer)
    return wave.real**2 + wave.imag**2


def _delocalization(
    pixel_size: float,
    defocus: float,
    cs_um: float,
    c5_mm: float,
    astig: float,
    spread: float,
    voltage_kv: float,
) -> float:
    """Upper bound (Å) of how far the CTF spreads the transferred frequencies' signal."""
    lam = electron_wavelength(voltage_kv)
    q_nyq = 0.5 / pixel_size
    # frequency beyond which the temporal envelope is below 0.05
    q_env = (2 * np.log(20.0)) ** 0.25 / np.sqrt(np.pi * lam * max(spread, 1e-3))
    q = np.linspace(0.0, min(q_nyq, q_env), 256)
    r = lam * q * (abs(defocus) + abs(astig)) + abs(cs_um) * 1e4 * lam**3 * q**3
    r = r + abs(c5_mm) * 1e7 * lam**5 * q**5
    return float(r.max())


# --------------------------------------------------------------------------------------------
# structure
# --------------------------------------------------------------------------------------------
def _poisson_disc(
    height: float, width: float, r: float, rng: np.random.Generator, k: int = 30
) -> NDArray[np.float64]:
    """Bridson's Poisson-disc sampling of a rectangle: points at least ``r`` apart."""
    cell = r / np.sqrt(2.0)
    gh, gw = int(np.ceil(height / cell)), int(np.ceil(width / cell))
    grid = -np.ones((gh + 4, gw + 4), dtype=np.intp)  # 2-cell border of "empty"
    cap = int(2.0 * height * width / r**2) + 16
    pts = np.full((cap + 1, 2), np.inf)  # the last row stays at infinity ("no point")
    grid_flat = grid.ravel()
    stride = gw + 4
    offs = (np.arange(-2, 3)[:, None] * stride + np.arange(-2, 3)[None, :]).ravel()
    first = rng.uniform((0.0, 0.0), (height, width))
    pts[0] = first
    grid_flat[(int(first[0] / cell) + 2) * stride + int(first[1] / cell) + 2] = 0
    npts = 1
    active = [0]
    r2 = r * r
    block = 256
    used = block
    while active:
        if used == block:  # draw random numbers in blocks: far fewer generator calls
            pick = rng.random(block)
            rad = r * np.sqrt(rng.uniform(1.0, 4.0, (block, k)))
            ang = rng.uniform(0.0, 2 * np.pi, (block, k))
            dys, dxs = rad * np.sin(ang), rad * np.cos(ang)
            used = 0
        a = int(pick[used] * len(active))
        p = pts[active[a]]
        cy = p[0] + dys[used]
        cx = p[1] + dxs[used]
        used += 1
        ok = (cy >= 0) & (cy < height) & (cx >= 0) & (cx < width)
        cy, cx = cy[ok], cx[ok]
        hit = -1
        if cy.size:
            gidx = ((cy / cell).astype(np.intp) + 2) * stride + (cx / cell).astype(np.intp) + 2
            nb = grid_flat[gidx[:, None] + offs]  # (k, 25); -1 indexes the row at infinity
            q = pts[nb]
            d2 = (q[..., 0] - cy[:, None]) ** 2 + (q[..., 1] - cx[:, None]) ** 2
            free = np.flatnonzero((d2 >= r2).all(axis=1))
            if free.size:
                hit = int(free[0])
        if hit >= 0:
            if npts == cap:
                pts = np.concatenate([pts[:cap], np.full((cap + 1, 2), np.inf)])
                cap *= 2
            pts[npts] = (cy[hit], cx[hit])
            grid_flat[gidx[hit]] = npts
            active.append(npts)
            npts += 1
        else:
            active[a] = active[-1]
            active.pop()
    return pts[:npts].copy()


def _lloyd(points: NDArray, steps: int, bounds: tuple[float, float]) -> NDArray:
    """Move each generator with a bounded Voronoi cell to its cell's centroid ``steps`` times."""
    pts = points.copy()
    h, w = bounds
    for _ in range(steps):
        vor = Voronoi(pts)
        verts = vor.vertices
        idx_list, owner = [], []
        for i, reg_idx in enumerate(vor.point_region):
            reg = vor.regions[reg_idx]
            if not reg or -1 in reg:
                continue
            idx_list.append(reg)
            owner.append(i)
        if not owner:
            break
        lens = np.fromiter((len(r) for r in idx_list), dtype=np.intp, count=len(idx_list))
        flat = np.fromiter((v for r in idx_list for v in r), dtype=np.intp, count=int(lens.sum()))
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
        nxt = np.arange(flat.size) + 1
        ends = starts + lens
        nxt[ends - 1] = starts  # wrap around within each polygon
        p0 = verts[flat]
        p1 = verts[flat[nxt]]
        cross = p0[:, 1] * p1[:, 0] - p1[:, 1] * p0[:, 0]
        area = np.add.reduceat(cross, starts) / 2.0
        cy = np.add.reduceat((p0[:, 0] + p1[:, 0]) * cross, starts) / (6.0 * area)
        cx = np.add.reduceat((p0[:, 1] + p1[:, 1]) * cross, starts) / (6.0 * area)
        owner_a = np.asarray(owner)
        new = np.column_stack([cy, cx])
        # keep generators inside the domain (cells at the border are unbounded or distorted)
        good = (
            np.isfinite(new).all(axis=1)
            & (new[:, 0] > 0)
            & (new[:, 0] < h)
            & (new[:, 1] > 0)
            & (new[:, 1] < w)
        )
        pts[owner_a[good]] = new[good]
    return pts


def _relax_bonds(
    verts: NDArray, edges: NDArray, bond: float, steps: int = 200, k_angle: float = 0.3
) -> NDArray:
    """Relax a 3-connected network: bonds towards ``bond``, bond angles towards 120°.

    Gradient descent on ``sum (|r_i - r_j| - bond)²`` over bonds plus ``k_angle`` times
    ``sum (|r_j - r_k| - sqrt(3) bond)²`` over pairs of bonds sharing an atom. This is the
    relaxation of the Voronoi vertices of seed 003 Fig. 4c: it moves closely placed vertices
    apart and makes the bond-length distribution narrow.
    """
    n = len(verts)
    if n == 0 or len(edges) == 0:
        return verts.copy()
    directed = np.concatenate([edges, edges[:, ::-1]])
    directed = directed[np.argsort(directed[:, 0], kind="stable")]
    bounds = np.searchsorted(directed[:, 0], np.arange(n + 1))
    angle_pairs = [
        (nb[a], nb[b])
        for i in range(n)
        for nb in (directed[bounds[i] : bounds[i + 1], 1],)
        for a in range(len(nb))
        for b in range(a + 1, len(nb))
    ]
    pa = np.asarray(angle_pairs, dtype=np.intp).reshape(-1, 2)
    pairs = np.concatenate([edges, pa])
    rest = np.concatenate([np.full(len(edges), bond), np.full(len(pa), np.sqrt(3.0) * bond)])
    k = np.concatenate([np.ones(len(edges)), np.full(len(pa), k_angle)])
    py = verts[:, 0].astype(np.float64)
    px = verts[:, 1].astype(np.float64)
    i, j = pairs[:, 0].copy(), pairs[:, 1].copy()
    # incidence matrix: gradient = B.T @ (per-pair force)
    inc = sparse.csr_matrix(
        (
            np.concatenate([np.ones(len(i)), -np.ones(len(j))]),
            (np.concatenate([i, j]), np.tile(np.arange(len(i)), 2)),
        ),
        shape=(n, len(i)),
    )
    for _ in range(steps):
        dy = py[j] - py[i]
        dx = px[j] - px[i]
        r = np.sqrt(dy * dy + dx * dx)
        scale = 0.1 * k * (r - rest) / np.maximum(r, 1e-9)  # pulls i towards j when stretched
        py += inc @ (scale * dy)
        px += inc @ (scale * dx)
    p = np.column_stack([py, px])
    return p


def _prune(points: NDArray, bond: float, min_neighbours: int = 2) -> NDArray:
    """Drop atoms with fewer than ``min_neighbours`` bonded neighbours, repeatedly."""
    pts = points
    for _ in range(10):
        if len(pts) == 0:
            break
        counts = np.array([len(n) - 1 for n in cKDTree(pts).query_ball_point(pts, 1.3 * bond)])
        keep = counts >= min_neighbours
        if keep.all():
            break
        pts = pts[keep]
    return pts


def _cut_holes(
    points: NDArray,
    region: tuple[float, float, float, float],
    bond: float,
    n_holes: int,
    rng: np.random.Generator,
) -> tuple[NDArray, list[dict[str, Any]]]:
    """Cut ``n_holes`` random blob-shaped holes with centres in ``region`` (y0, x0, y1, x1)."""
    y0, x0, y1, x1 = region
    holes = []
    keep = np.ones(len(points), bool)
    size = min(y1 - y0, x1 - x0)
    for _ in range(n_holes):
        cy, cx = rng.uniform(y0, y1), rng.uniform(x0, x1)
        radius = rng.uniform(1.5 * bond, max(2.0 * bond, 0.2 * size))
        harm = [(k, rng.uniform(0.0, 0.3) / (k - 1), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4)]
        d = points - (cy, cx)
        th = np.arctan2(d[:, 0], d[:, 1])
        rth = radius * (1.0 + sum(a * np.cos(k * th + p) for k, a, p in harm))
        keep &= np.hypot(d[:, 0], d[:, 1]) > np.maximum(rth, 0.3 * radius)
        holes.append({"y": cy, "x": cx, "radius": radius, "harmonics": harm})
    pts = points[keep]
    if n_holes:
        pts = _prune(pts, bond)
    return pts, holes


def _structure(
    shape: tuple[int, int],
    bond_px: float,
    rng: np.random.Generator,
    n_holes: int,
    hole_region: tuple[float, float, float, float] | None,
    lloyd_steps: int = 3,
) -> tuple[NDArray, list[dict[str, Any]]]:
    h, w = shape
    gen_spacing = np.sqrt(3.0) * bond_px  # generator spacing of an ideal honeycomb
    margin = 3.0 * gen_spacing
    dom_h, dom_w = h + 2 * margin, w + 2 * margin
    seeds = _poisson_disc(dom_h, dom_w, 0.75 * gen_spacing, rng)
    # rescale to the generator density of a honeycomb of this bond length (one hexagon each)
    target = 2.0 / (3.0 * np.sqrt(3.0) * bond_px**2)
    scale = np.sqrt(len(seeds) / (dom_h * dom_w) / target)
    seeds = seeds * scale
    bounds = (dom_h * scale, dom_w * scale)
    seeds = _lloyd(seeds, lloyd_steps, bounds)
    vor = Voronoi(seeds)
    centre = np.array(bounds) / 2.0
    half = np.array([h, w]) / 2.0 + 2 * gen_spacing
    keep = np.all(np.abs(vor.vertices - centre) < half, axis=1)
    ridges = np.array([r for r in vor.ridge_vertices if -1 not in r], dtype=np.intp).reshape(-1, 2)
    ridges = ridges[keep[ridges].all(axis=1)]
    index = np.cumsum(keep) - 1
    verts = _relax_bonds(vor.vertices[keep], index[ridges], bond_px)
    # calibrate: median nearest-neighbour distance = bond_px
    nn = cKDTree(verts).query(verts, k=2)[0][:, 1]
    verts = centre + (verts - centre) * (bond_px / np.median(nn))
    atoms = verts - centre + np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    margin_keep = 1.5 * bond_px
    atoms = atoms[
        (atoms[:, 0] > -0.5 - margin_keep)
        & (atoms[:, 0] < h - 0.5 + margin_keep)
        & (atoms[:, 1] > -0.5 - margin_keep)
        & (atoms[:, 1] < w - 0.5 + margin_keep)
    ]
    region = (-0.5, -0.5, h - 0.5, w - 0.5) if hole_region is None else hole_region
    atoms, holes = _cut_holes(atoms, region, bond_px, n_holes, rng)
    atoms = atoms[_inside(atoms[:, 0], atoms[:, 1], shape)]
    return atoms, holes


def graphene_structure(
    shape: tuple[int, int],
    bond_px: float,
    rng: np.random.Generator,
    n_holes: int | None = None,
    *,
    lloyd_steps: int = 3,
) -> NDArray[np.float64]:
    """Random graphene-like carbon positions (seed 003, Fig. 4).

    Poisson-disc points (Bridson) are the generators of a Voronoi tessellation whose vertices
    become the atoms; a few Lloyd steps make the polygons regular (mostly hexagons with some
    4-, 5-, 7- and 8-rings), the vertices are relaxed as a bond network (bond lengths towards
    ``bond_px``, angles towards 120°), the median nearest-neighbour distance is calibrated to
    ``bond_px``, and ``n_holes`` blob-shaped holes are cut (atoms left with fewer than two
    neighbours at a hole edge are removed).

    Parameters
    ----------
    shape : tuple of int
        (H, W) of the area to fill, px.
    bond_px : float
        C-C bond length, px.
    rng : numpy.random.Generator
        Source of randomness.
    n_holes : int, optional
        Number of holes; drawn from 0-4 when omitted.
    lloyd_steps : int
        Lloyd relaxation steps.

    Returns
    -------
    ndarray of float64, shape (N, 2)
        Atom positions (y, x), px, inside the area.

    Examples
    --------
    >>> pts = graphene_structure((64, 64), 8.0, np.random.default_rng(0), n_holes=0)
    >>> pts.shape[1]
    2
    """
    if bond_px <= 1.0:
        raise ValueError("bond_px must be > 1 px")
    shape = (int(shape[0]), int(shape[1]))
    if n_holes is None:
        n_holes = int(rng.integers(0, 5))
    atoms, _ = _structure(shape, float(bond_px), rng, int(n_holes), None, lloyd_steps)
    return atoms


def _table1(rng: np.random.Generator) -> dict[str, Any]:
    """Draw the microscope parameters of seed 003, Table 1 (graphene, 80 kV)."""
    return {
        "defocus": float(rng.uniform(-200.0, 200.0)),
        "cs_um": float(rng.uniform(-20.0, 20.0)),
        "c5_mm": float(rng.uniform(0.0, 5.0)),
        "astig_angstrom": float(rng.uniform(0.0, 100.0)),
        "astig_angle": float(rng.uniform(0.0, 2 * np.pi)),
        "focal_spread": float(rng.uniform(20.0, 40.0)),
        "dose": float(10.0 ** rng.uniform(1.0, 4.0)),
        "mtf_params": (
            float(rng.uniform(0.0, 0.1)),
            float(rng.uniform(0.4, 0.6)),
            float(rng.uniform(2.0, 3.0)),
        ),
        "n_holes": int(rng.integers(0, 5)),
        "atom_sigma_angstrom": float(rng.uniform(0.3, 0.4)),
    }


def graphene_hrtem(
    shape: tuple[int, int] = (256, 256),
    *,
    pixel_size_angstrom: float = 0.12,
    defocus: float | None = None,
    cs_um: float | None = None,
    c5_mm: float | None = None,
    astig_angstrom: float | None = None,
    astig_angle: float | None = None,
    focal_spread: float | None = None,
    dose: float | None = None,
    mtf_params: tuple[float, float, float] | None = None,
    n_holes: int | None = None,
    atom_sigma_angstrom: float | None = None,
    bond_angstrom: float = 1.42,
    phase_per_atom: float = CARBON_PHASE_80KV,
    voltage_kv: float = 80.0,
    seed: int = 0,
) -> AtomImage:
    """Simulate an HRTEM image of a random graphene-like sheet (seed 003 recipe).

    Parameters
    ----------
    shape : tuple of int
        (H, W) of the image.
    pixel_size_angstrom : float
        Sampling, Å per pixel.
    defocus : float, optional
        Defocus, Å (positive = underfocus); drawn uniform in [-200, 200] when omitted.
    cs_um : float, optional
        Spherical aberration, µm; uniform in [-20, 20].
    c5_mm : float, optional
        Fifth-order spherical aberration, mm; uniform in [0, 5].
    astig_angstrom : float, optional
        Two-fold astigmatism, Å; uniform in [0, 100].
    astig_angle : float, optional
        Astigmatism angle, radians; uniform in [0, 2π].
    focal_spread : float, optional
        RMS focal spread, Å; uniform in [20, 40].
    dose : float, optional
        Electron dose, e/Å²; log-uniform in [10, 1e4].
    mtf_params : tuple of float, optional
        ``(c1, c2, c3)`` of the detector MTF; uniform in [0, 0.1] x [0.4, 0.6] x [2, 3]. Pass
        ``(1.0, 0.5, 2.0)`` for no blur (c1 = 1 gives MTF = 1).
    n_holes : int, optional
        Holes in the sheet; 0-4 when omitted.
    atom_sigma_angstrom : float, optional
        RMS width of an atom's projected potential incl. thermal blur, Å; uniform [0.3, 0.4].
    bond_angstrom : float
        C-C bond length, Å.
    phase_per_atom : float
        Integrated phase shift of one atom, rad Å².
    voltage_kv : float
        Acceleration voltage, kV.
    seed : int
        Random seed; every drawn value is in ``params``. Drawing is independent of which values
        are given, so fixing one parameter leaves the others' draws unchanged.

    Returns
    -------
    AtomImage
        ``image``: detector counts (Poisson, then MTF; float32). ``atoms``: y, x, class (0),
        class_name ("C"), amplitude (local contrast of the clean image at the atom, counts:
        negative for dark atoms), sigma (potential width, px). ``extras``: ``clean`` (expected
        counts, float32), ``polarity`` (+1 bright / -1 dark atoms, measured on the clean image),
        ``contrast`` (normalised correlation of the clean image's local contrast with the atom
        map, -1..1), ``holes``, ``pad_px``.

    Examples
    --------
    >>> sim = graphene_hrtem((64, 64), defocus=-50.0, cs_um=-10.0, seed=0)
    >>> sim.extras["polarity"] in (-1, 1)
    True
    """
    shape = (int(shape[0]), int(shape[1]))
    h, w = shape
    px = float(pixel_size_angstrom)
    if min(shape) < 8:
        raise ValueError("shape must be at least 8 x 8")
    if not px > 0:
        raise ValueError("pixel_size_angstrom must be > 0")
    ss = np.random.SeedSequence(int(seed))
    r_par, r_struct, r_noise = (np.random.default_rng(s) for s in ss.spawn(3))
    drawn = _table1(r_par)
    given = {
        "defocus": defocus,
        "cs_um": cs_um,
        "c5_mm": c5_mm,
        "astig_angstrom": astig_angstrom,
        "astig_angle": astig_angle,
        "focal_spread": focal_spread,
        "dose": dose,
        "mtf_params": mtf_params,
        "n_holes": n_holes,
        "atom_sigma_angstrom": atom_sigma_angstrom,
    }
    p = {k: (drawn[k] if v is None else v) for k, v in given.items()}
    if p["dose"] <= 0:
        raise ValueError("dose must be > 0")
    c1, c2, c3 = (float(c) for c in p["mtf_params"])

    bond_px = bond_angstrom / px
    deloc = _delocalization(
        px, p["defocus"], p["cs_um"], p["c5_mm"], p["astig_angstrom"], p["focal_spread"], voltage_kv
    )
    pad = int(np.ceil(deloc / px + 2 * bond_px)) + 8
    full = (sfft.next_fast_len(h + 2 * pad), sfft.next_fast_len(w + 2 * pad))
    oy, ox = (full[0] - h) // 2, (full[1] - w) // 2
    hole_region = (oy - 0.5, ox - 0.5, oy + h - 0.5, ox + w - 0.5)
    atoms_full, holes = _structure(full, bond_px, r_struct, int(p["n_holes"]), hole_region)

    phase = projected_phase(
        full, atoms_full, px, p["atom_sigma_angstrom"], phase_per_atom=phase_per_atom
    )
    transfer = simulation_ctf({**p, "pixel_size_angstrom": px, "voltage_kv": voltage_kv}, full)
    intensity = image_intensity(sfft.fft2(np.exp(1j * phase)), transfer)

    # Poisson counts, then the detector MTF (on a margin wide enough for the MTF kernel)
    m = min(16, oy, ox)
    sub = (slice(oy - m, oy + h + m), slice(ox - m, ox + w + m))
    expected = intensity[sub] * (p["dose"] * px * px)
    counts = r_noise.poisson(expected).astype(np.float64)
    crop = (slice(m, m + h), slice(m, m + w))
    clean = apply_mtf(expected, c1, c2, c3)[crop]
    image = apply_mtf(counts, c1, c2, c3)[crop]

    # measured polarity: local contrast of the clean image at the atoms
    atoms_sub = atoms_full - (oy - m, ox - m)
    near = np.all((atoms_sub > -8) & (atoms_sub < np.array(expected.shape) + 8), axis=1)
    atom_map = _splat_isotropic(
        expected.shape, atoms_sub[near, 0], atoms_sub[near, 1], 1.0, 0.3 / px, radius=4.0
    )[crop]
    hp_clean = clean - gaussian_filter(clean, bond_px, mode="reflect")
    hp_map = atom_map - gaussian_filter(atom_map, bond_px, mode="reflect")
    denom = float(np.sqrt((hp_clean**2).sum() * (hp_map**2).sum()))
    contrast = float((hp_clean * hp_map).sum() / denom) if denom > 0 else 0.0
    polarity = 1 if contrast >= 0 else -1

    atoms = atoms_full - (oy, ox)
    atoms = atoms[_inside(atoms[:, 0], atoms[:, 1], shape)]
    local = map_coordinates(hp_clean, atoms.T, order=1, mode="nearest") if len(atoms) else []
    table = _table(
        atoms[:, 0],
        atoms[:, 1],
        np.zeros(len(atoms), dtype=np.int64),
        ("C",),
        amplitude=np.asarray(local, dtype=np.float64),
        sigma=np.full(len(atoms), p["atom_sigma_angstrom"] / px),
    )
    params = {
        "shape": shape,
        "pixel_size_angstrom": px,
        **{k: p[k] for k in given},
        "mtf_params": (c1, c2, c3),
        "bond_angstrom": float(bond_angstrom),
        "phase_per_atom": float(phase_per_atom),
        "voltage_kv": float(voltage_kv),
        "seed": int(seed),
    }
    return AtomImage(
        image=image.astype(np.float32),
        atoms=table,
        params=params,
        pixel_size_nm=px / 10.0,
        extras={
            "clean": clean.astype(np.float32),
            "polarity": polarity,
            "contrast": contrast,
            "holes": [
                {"y": hh["y"] - oy, "x": hh["x"] - ox, "radius": hh["radius"]} for hh in holes
            ],
            "pad_px": pad,
            "delocalization_angstrom": deloc,
        },
    )
