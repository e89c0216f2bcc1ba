"""ABO3 perovskite projected along [001], imaged by HAADF-STEM, with exact ground truth.

A columns sit on a square lattice of period ``spacing`` (bright), B columns at the cell centres
(``b_ratio`` times dimmer), oxygen is invisible. On top of the ideal lattice the simulator can add
a polarization field that displaces the B sites (with a 180° or 90° domain wall), a smooth strain
field, an edge dislocation, vacancies, lattice rotation, a background gradient, scan-line jitter
and linear drift; the image is Poisson counts of the expected image.

Conventions
-----------
Positions are napari (row, col) = (y, x) px; angles are measured from +x towards +y, i.e. clockwise
on screen, because y points down. The lattice vector a points along ``rotation_deg``, b along
``rotation_deg + 90°``.

Strain columns describe the material displacement field u(r) (strain bump + dislocation; not the
lattice rotation ``rotation_deg`` and not the scan drift) at the atom's reference position::

    exx = du_x/dx,  eyy = du_y/dy,  exy = (du_x/dy + du_y/dx) / 2,
    rotation = (du_y/dx - du_x/dy) / 2   (radians; > 0 turns the lattice from +x towards +y)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from ._types import AtomImage
from .lattice import _inside, _ramp, _splat_isotropic, _table

__all__ = ["CLASS_NAMES", "perovskite_haadf"]

CLASS_NAMES = ("A", "B")
_POISSON_NU = 0.3  # Poisson ratio of the isotropic dislocation field


def _wrap(angle: NDArray) -> NDArray:
    """Wrap angles to (-pi, pi]."""
    return np.pi - np.mod(np.pi - angle, 2 * np.pi)


class _Field:
    """Material displacement field u(r) = strain bump + edge dislocation, (y, x) px."""

    def __init__(self) -> None:
        self.bumps: list[dict[str, Any]] = []
        self.disl: dict[str, Any] | None = None

    def displacement(
        self, r: NDArray, theta_ref: NDArray | None = None, *, with_dislocation: bool = True
    ) -> NDArray:
        """Return u at positions ``r`` (N, 2); ``theta_ref`` picks the dislocation's branch."""
        u = np.zeros_like(r, dtype=np.float64)
        for bump in self.bumps:
            d = r - bump["centre"]
            g = np.exp(-0.5 * (d[:, 0] ** 2 + d[:, 1] ** 2) / bump["length"] ** 2)
            if bump["kind"] == "expansion":
                u += bump["amount"] * g[:, None] * d
            else:  # pure shear at the centre: u_y ~ x, u_x ~ y
                u += bump["amount"] * g[:, None] * d[:, ::-1]
        if self.disl is not None and with_dislocation:
            u += self._dislocation(r, theta_ref)
        return u

    def _dislocation(self, r: NDArray, theta_ref: NDArray | None) -> NDArray:
        """Isotropic elastic edge dislocation (Hirth & Lothe), Burgers vector b along ex."""
        dd = self.disl
        assert dd is not None
        d = r - dd["core"]
        ex, ey = dd["ex"], dd["ey"]
        xl = d @ ex
        yl = d @ ey
        r2 = np.maximum(xl**2 + yl**2, 1e-12)
        theta = np.arctan2(yl, xl)
        if theta_ref is not None:
            theta = theta_ref + _wrap(theta - theta_ref)
        b, nu = dd["b"], _POISSON_NU
        ux = b / (2 * np.pi) * (theta + xl * yl / (2 * (1 - nu) * r2))
        uy = (
            -b
            / (2 * np.pi)
            * (
                (1 - 2 * nu) / (4 * (1 - nu)) * np.log(r2 / b**2)
                + (xl**2 - yl**2) / (4 * (1 - nu) * r2)
            )
        )
        return ux[:, None] * ex + uy[:, None] * ey

    def theta(self, r: NDArray) -> NDArray | None:
        """Dislocation angle at ``r`` (used to evaluate neighbours on the same branch)."""
        if self.disl is None:
            return None
        d = r - self.disl["core"]
        return np.arctan2(d @ self.disl["ey"], d @ self.disl["ex"])

    def gradient(self, r: NDArray, h: float = 1e-3) -> NDArray:
        """Displacement gradient G[n, i, j] = du_i / dr_j by central differences."""
        grad = np.empty((r.shape[0], 2, 2))
        th = self.theta(r)
        for j in range(2):
            step = np.zeros(2)
            step[j] = h
            grad[:, :, j] = (self.displacement(r + step, th) - self.displacement(r - step, th)) / (
                2 * h
            )
        return grad


def perovskite_haadf(
    shape: tuple[int, int] = (512, 512),
    spacing: float = 24.0,
    *,
    rotation_deg: float = 0.0,
    dose: float = 500.0,
    b_ratio: float = 0.35,
    sigma: float | None = None,
    polarization: float = 0.06,
    domain_wall: bool = True,
    wall_angle: int = 180,
    wall_width: float = 1.5,
    modulation: float = 0.1,
    strain: float = 0.0,
    vacancy_fraction: float = 0.0,
    dislocation: bool = False,
    background: float = 0.1,
    background_gradient: float = 0.0,
    scan_jitter: float = 0.0,
    drift: tuple[float, float] = (0.0, 0.0),
    amplitude_spread: float = 0.0,
    pixel_size_nm: float | None = 0.0165,
    seed: int = 0,
) -> AtomImage:
    """Simulate a HAADF-STEM image of an ABO3 perovskite along [001] with exact ground truth.

    Parameters
    ----------
    shape : tuple of int
        (H, W) of the image.
    spacing : float
        Lattice period (A-A distance), px.
    rotation_deg : float
        Direction of the lattice vector a, degrees from +x towards +y (clockwise on screen).
    dose : float
        Expected counts at the centre of an A peak above the background.
    b_ratio : float
        Amplitude of a B column relative to an A column.
    sigma : float, optional
        Gaussian sigma of every column, px; default ``0.12 * spacing``.
    polarization : float
        Magnitude of the B-site displacement, as a fraction of ``spacing``.
    domain_wall : bool
        Put a domain wall across the field of view (near its centre).
    wall_angle : {180, 90}
        180: the polarization reverses across a wall parallel to it (tanh profile through zero);
        90: it turns by 90° across a head-to-tail {110} wall.
    wall_width : float
        Half-width of the tanh wall profile, in unit cells.
    modulation : float
        Relative amplitude of a smooth long-wavelength modulation of the polarization magnitude.
    strain : float
        Peak magnitude of the smooth strain field (0.01 = 1 %): a Gaussian bump of isotropic
        expansion plus a Gaussian bump of pure shear of half that size. 0 disables it.
    vacancy_fraction : float
        Fraction of A and of B columns removed (exactly that fraction, rounded, of the columns
        inside the image; columns just outside are removed with that probability).
    dislocation : bool
        Add one edge dislocation near the centre (Burgers vector a); of any two columns closer
        than 0.3 spacing one is dropped.
    background : float
        Background level as a fraction of the A amplitude.
    background_gradient : float
        Change of the background across the image (fraction of the A amplitude) in a random
        direction.
    scan_jitter : float
        RMS of a random x shift of every scan line, px (the truth positions exclude it).
    drift : tuple of float
        Specimen drift in px per 512 scan lines, (y, x); the truth positions include it.
    amplitude_spread : float
        Relative RMS scatter of the column amplitudes.
    pixel_size_nm : float, optional
        Calibration stored with the result.
    seed : int
        Random seed; the same arguments give the same image bit for bit.

    Returns
    -------
    AtomImage
        ``image``: Poisson counts (float32). ``atoms``: one row per column whose centre is
        inside the image, columns ``y, x, class, class_name, amplitude, sigma, disp_y, disp_x,
        exx, eyy, exy, rotation, i, j`` (class 0 = "A", 1 = "B"; ``disp_*``: for B, its position
        minus the mean of its four A neighbours, as seen in the image (NaN for the one cell that
        contains a dislocation core); 0 for A; ``i, j``: unit
        cell indices along a and b; strain columns: see the module docstring). ``extras``:
        ``clean`` (expected image, float32), ``vacancies`` (y, x, class, class_name),
        ``polarization`` (wall ``normal`` and ``point``, ``width_px``, and the polarization
        vectors ``p1`` / ``p2`` (px) far on the sides where ``(r - point) · normal`` < 0 / > 0),
        ``lattice`` (a, b, origin), ``row_shift_x`` (per-row jitter shifts, px),
        ``dislocation`` (y, x, burgers, removed) when requested, ``strain_field``.

    Examples
    --------
    >>> sim = perovskite_haadf((128, 128), 24.0, seed=3)
    >>> sim.image.shape, sorted(sim.atoms["class_name"].unique())
    ((128, 128), ['A', 'B'])
    """
    shape = (int(shape[0]), int(shape[1]))
    h, w = shape
    if min(shape) < 2:
        raise ValueError("shape must be at least 2 x 2")
    if not spacing > 1:
        raise ValueError("spacing must be > 1 px")
    if dose < 0 or background < 0 or b_ratio < 0:
        raise ValueError("dose, background and b_ratio must be >= 0")
    if not 0.0 <= vacancy_fraction <= 1.0:
        raise ValueError("vacancy_fraction must lie in [0, 1]")
    if wall_angle not in (90, 180):
        raise ValueError("wall_angle must be 180 or 90")
    drift_y, drift_x = (float(d) for d in drift)
    if abs(drift_y) >= 256:
        raise ValueError("|drift[0]| must be < 256 px per 512 rows")
    sig = 0.12 * spacing if sigma is None else float(sigma)
    if not sig > 0:
        raise ValueError("sigma must be > 0")

    ss = np.random.SeedSequence(int(seed))
    r_geo, r_pol, r_str, r_dis, r_vac, r_amp, r_jit, r_noise = (
        np.random.default_rng(s) for s in ss.spawn(8)
    )

    # ---- ideal lattice ------------------------------------------------------------------
    phi = np.deg2rad(rotation_deg)
    ea = np.array([np.sin(phi), np.cos(phi)])  # unit a, (y, x)
    eb = np.array([np.cos(phi), -np.sin(phi)])  # unit b = a turned by +90°
    a_vec, b_vec = spacing * ea, spacing * eb
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    origin = centre + r_geo.uniform(0, 1) * a_vec + r_geo.uniform(0, 1) * b_vec
    pad = 6.0 * sig + 2.0 * spacing + abs(drift_x) * h / 512.0 + abs(drift_y) * h / 512.0
    radius = 0.5 * np.hypot(h, w) + pad
    n = int(np.ceil(radius / spacing)) + 2
    ii, jj = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1), indexing="ij")
    ii, jj = ii.ravel(), jj.ravel()
    ref_a = origin + ii[:, None] * a_vec + jj[:, None] * b_vec
    ref_b = ref_a + 0.5 * (a_vec + b_vec)
    keep_a = np.hypot(*(ref_a - centre).T) <= radius
    keep_b = np.hypot(*(ref_b - centre).T) <= radius

    # ---- polarization of the B sites -----------------------------------------------------
    p0 = polarization * spacing
    axes = [ea, eb, -ea, -eb]
    k1 = int(r_pol.integers(0, 4))
    p1 = axes[k1]
    turn = 1 if r_pol.random() < 0.5 else -1
    p2_90 = axes[(k1 + turn) % 4]
    if wall_angle == 180:
        normal = np.array([p1[1], -p1[0]]) * (1 if r_pol.random() < 0.5 else -1)
    else:
        normal = (p2_90 - p1) / np.sqrt(2.0)
    wall_point = centre + normal * r_pol.uniform(-0.15, 0.15) * min(h, w)
    mod_dir = r_pol.uniform(0, 2 * np.pi)
    mod_k = np.array([np.sin(mod_dir), np.cos(mod_dir)]) / max(h, w)
    mod_phase = r_pol.uniform(0, 2 * np.pi)
    width_px = wall_width * spacing

    def polarization_at(r: NDArray) -> NDArray:
        mag = p0 * (1.0 + modulation * np.sin(2 * np.pi * (r @ mod_k) + mod_phase))
        if not domain_wall:
            return mag[:, None] * p1
        t = np.tanh(((r - wall_point) @ normal) / width_px)
        if wall_angle == 180:
            return (mag * t)[:, None] * p1
        # 90°: the direction turns from p1 (t = -1) to p2 (t = +1)
        alpha1 = np.arctan2(p1[0], p1[1])
        alpha = alpha1 + turn * (np.pi / 2) * (1 + t) / 2
        return mag[:, None] * np.column_stack([np.sin(alpha), np.cos(alpha)])

    pol_info = {
        "wall": (f"{wall_angle}" if domain_wall else None),
        "normal": tuple(normal),
        "point": tuple(wall_point),
        "width_px": width_px,
        # polarization (px) far on the side where (r - point) . normal < 0 (p1) and > 0 (p2)
        "p1": tuple(p0 * (-p1 if domain_wall and wall_angle == 180 else p1)),
        "p2": tuple(p0 * (p2_90 if domain_wall and wall_angle == 90 else p1)),
        "modulation": modulation,
    }

    # ---- material displacement field ------------------------------------------------------
    field = _Field()
    if strain != 0:
        length = 0.18 * min(h, w)
        for kind, amount in (
            ("expansion", strain),
            ("shear", 0.5 * strain * r_str.choice([-1, 1])),
        ):
            field.bumps.append(
                {
                    "kind": kind,
                    "amount": float(amount),
                    "length": length,
                    "centre": centre + r_str.uniform(-0.2, 0.2, 2) * np.array([h, w]),
                }
            )
    disl_info: dict[str, Any] | None = None
    if dislocation:
        # core between an A row and a B row (1/4 period from each), never on a lattice row
        fi = np.floor((centre - origin) @ ea / spacing) + r_dis.uniform(0, 1)
        fj = np.floor((centre - origin) @ eb / spacing) + 0.25
        core = origin + fi * a_vec + fj * b_vec
        field.disl = {"core": core, "ex": ea, "ey": eb, "b": float(spacing)}

    def material(r: NDArray, theta_ref: NDArray | None = None) -> NDArray:
        return r + field.displacement(r, theta_ref)

    def scan(r: NDArray) -> NDArray:
        # the scan reaches row y' at a time proportional to y'; by then the specimen has moved
        # by drift * y' / 512: y' = y + dy y' / 512, x' = x + dx y' / 512
        yp = r[:, 0] / (1.0 - drift_y / 512.0)
        return np.column_stack([yp, r[:, 1] + drift_x * yp / 512.0])

    ref_a, ia, ja = ref_a[keep_a], ii[keep_a], jj[keep_a]
    ref_b0, ib, jb = ref_b[keep_b], ii[keep_b], jj[keep_b]
    pol = polarization_at(ref_b0)
    ref_b = ref_b0 + pol
    pos_a = scan(material(ref_a))
    pos_b = scan(material(ref_b))
    # B displacement from the centre of its four A neighbours, on the same dislocation branch
    th_b = field.theta(ref_b)
    corners = np.zeros_like(ref_b)
    for da, db in ((0, 0), (1, 0), (0, 1), (1, 1)):
        corners += scan(material(ref_b0 + (da - 0.5) * a_vec + (db - 0.5) * b_vec, th_b))
    disp_b = pos_b - corners / 4.0
    if dislocation:
        # the cell that contains the dislocation core has no meaningful centre
        core_cell = (ib == np.floor(fi)) & (jb == np.floor(fj))
        disp_b[core_cell] = np.nan
    grad_a = field.gradient(ref_a)
    grad_b = field.gradient(ref_b)

    pos = np.vstack([pos_a, pos_b])
    cls = np.concatenate([np.zeros(len(pos_a), int), np.ones(len(pos_b), int)])
    disp = np.vstack([np.zeros_like(pos_a), disp_b])
    grad = np.concatenate([grad_a, grad_b])
    cell_i = np.concatenate([ia, ib])
    cell_j = np.concatenate([ja, jb])
    alive = np.ones(len(pos), bool)

    if dislocation:
        assert field.disl is not None
        core_ref = field.disl["core"][None, :]
        # the core moves with the strain field only
        core_img = scan(core_ref + field.displacement(core_ref, with_dislocation=False))[0]
        removed = []
        for p, q in sorted(cKDTree(pos).query_pairs(0.3 * spacing)):
            if alive[p] and alive[q]:
                drop = q if cls[q] >= cls[p] else p  # prefer dropping the weaker B column
                alive[drop] = False
                removed.append(drop)
        rem = np.asarray(removed, dtype=int)
        rin = _inside(pos[rem, 0], pos[rem, 1], shape)
        disl_info = {
            "y": float(core_img[0]),
            "x": float(core_img[1]),
            "burgers": (float(a_vec[0]), float(a_vec[1])),
            "removed": _table(pos[rem[rin], 0], pos[rem[rin], 1], cls[rem[rin]], CLASS_NAMES),
            "poisson_ratio": _POISSON_NU,
        }

    # ---- vacancies ------------------------------------------------------------------------
    inside = _inside(pos[:, 0], pos[:, 1], shape)
    missing = np.zeros(len(pos), bool)
    if vacancy_fraction > 0:
        for c in (0, 1):
            cand = np.nonzero(inside & alive & (cls == c))[0]
            k = round(vacancy_fraction * cand.size)
            missing[r_vac.choice(cand, size=k, replace=False)] = True
            outer = np.nonzero(~inside & alive & (cls == c))[0]
            missing[outer[r_vac.random(outer.size) < vacancy_fraction]] = True
    vac = missing & inside
    vacancies = _table(pos[vac, 0], pos[vac, 1], cls[vac], CLASS_NAMES)
    alive &= ~missing

    # ---- render ---------------------------------------------------------------------------
    amp = np.where(cls == 0, 1.0, b_ratio) * dose
    if amplitude_spread > 0:
        amp = np.clip(amp * (1 + amplitude_spread * r_amp.normal(size=amp.size)), 0.0, None)
    row_shift = r_jit.normal(0.0, scan_jitter, h) if scan_jitter > 0 else np.zeros(h)
    jit = row_shift if scan_jitter > 0 else None
    grad_angle = r_geo.uniform(0, 2 * np.pi)
    bg = np.clip(background + background_gradient * _ramp(shape, grad_angle, jit), 0.0, None)
    clean = dose * bg + _splat_isotropic(
        shape, pos[alive, 0], pos[alive, 1], amp[alive], sig, row_shift=jit
    )
    counts = r_noise.poisson(clean)

    listed = alive & inside
    g = grad[listed]
    atoms = _table(
        pos[listed, 0],
        pos[listed, 1],
        cls[listed],
        CLASS_NAMES,
        amplitude=amp[listed],
        sigma=np.full(int(listed.sum()), sig),
        disp_y=disp[listed, 0],
        disp_x=disp[listed, 1],
        exx=g[:, 1, 1],
        eyy=g[:, 0, 0],
        exy=0.5 * (g[:, 0, 1] + g[:, 1, 0]),
        rotation=0.5 * (g[:, 0, 1] - g[:, 1, 0]),
        i=cell_i[listed],
        j=cell_j[listed],
    )
    params = {
        "shape": shape,
        "spacing": float(spacing),
        "rotation_deg": float(rotation_deg),
        "dose": float(dose),
        "b_ratio": float(b_ratio),
        "sigma": sig,
        "polarization": float(polarization),
        "domain_wall": bool(domain_wall),
        "wall_angle": int(wall_angle),
        "wall_width": float(wall_width),
        "modulation": float(modulation),
        "strain": float(strain),
        "vacancy_fraction": float(vacancy_fraction),
        "dislocation": bool(dislocation),
        "background": float(background),
        "background_gradient": float(background_gradient),
        "background_gradient_angle": float(grad_angle),
        "scan_jitter": float(scan_jitter),
        "drift": (drift_y, drift_x),
        "amplitude_spread": float(amplitude_spread),
        "pixel_size_nm": pixel_size_nm,
        "seed": int(seed),
    }
    extras: dict[str, Any] = {
        "clean": clean.astype(np.float32),
        "vacancies": vacancies,
        "polarization": pol_info,
        "lattice": {"a": tuple(a_vec), "b": tuple(b_vec), "origin": tuple(origin)},
        "row_shift_x": row_shift,
        "strain_field": [dict(b) for b in field.bumps],
    }
    if disl_info is not None:
        extras["dislocation"] = disl_info
    return AtomImage(
        image=counts.astype(np.float32),
        atoms=atoms,
        params=params,
        pixel_size_nm=pixel_size_nm,
        extras=extras,
    )
