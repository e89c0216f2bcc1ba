"""Nanoparticle TEM simulators with instance masks (seed 001).

Seed 001 (Liu et al. 2021) segments TEM images of core-shell catalyst nanoparticles: the lightest
part of the image is the background, the black parts are the noble-metal catalyst cores, "i.e.
the nanoparticles", and each core is wrapped in a lighter SiO2 shell that keeps the cores from
agglomerating.  The shell is named as a distractor ("besides the background there is also the
interference of the shell"), and the reported particle sizes (1.2-2.5 nm) are core sizes.  So the
segmented foreground of seed 001 is the **metal core**, and :func:`core_shell_particles` labels
the cores by default (``target="core"``); ``target="particle"`` labels the whole particle (core
plus shell) instead.  Both masks are always returned in ``extras``.

Geometry
--------
Every object is a star-shaped outline around its centre: an ellipse of axis ratio ``q`` (area
``pi R**2``, so ``R`` is the equivalent radius) times a small random radial modulation (harmonics
3-8, the edge roughness).  Projected thickness is that of a sphere-like body,
``t = 2 sqrt(max(r(theta)**2 - d**2, 0))``.  All bodies are centred in one plane, so the thickness
of overlapping bodies along a ray is the *maximum* of their thicknesses (the union of nested
intervals); this is how contacts are rendered.

Touching particles
------------------
With probability ``touching_fraction`` each new particle is put in contact with an already placed
one (its labelled object overlaps the neighbour's by ``contact_overlap``); all other particles
keep a gap of at least ``min_gap`` px from everything.  For the core target, two touching cores
share a fused silica shell (a dimer in one envelope).  Pixels covered by two objects go to the one
with the larger value of ``r(theta)**2 - d**2`` (the smaller power distance), i.e. to the one that
is thicker there: this is the object whose thickness the rendered image shows at that pixel, and
for round objects the split line is the radical line through the two contour intersections.

Images
------
Bright-field TEM (:func:`core_shell_particles`): transmission
``T = illumination * exp(-(tau_support + mu_shell * t_silica + mu_core * t_metal))`` (mass-thickness
contrast), so cores are darker than shells, which are darker than the support.  HAADF
(:func:`haadf_particles`): ``I = support + intensity_per_px * t_particle`` (intensity proportional
to thickness).  The support is a slightly textured amorphous film (smooth plus fine-grain random
thickness).  The noise-free image is blurred (Gaussian PSF and/or the seed 003 detector MTF), then
Poisson counts are drawn at ``dose`` and optional Gaussian read noise is added.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy import ndimage

from ._render import apply_mtf
from ._types import ParticleImage

__all__ = ["core_shell_particles", "haadf_particles"]

_HARMONICS = np.arange(3, 9)


@dataclass
class _Outline:
    """A star-shaped outline: ellipse of equivalent radius ``radius`` times a radial modulation."""

    cy: float
    cx: float
    radius: float
    axis_ratio: float
    orientation: float
    amp: NDArray[np.float64]  # harmonic amplitudes (relative radius)
    phase: NDArray[np.float64]

    def r(self, theta: NDArray[np.float64] | float) -> NDArray[np.float64]:
        """Radius of the outline along direction ``theta`` (atan2(dy, dx))."""
        theta = np.asarray(theta, dtype=np.float64)
        a = self.radius / np.sqrt(self.axis_ratio)
        b = self.radius * np.sqrt(self.axis_ratio)
        tp = theta - self.orientation
        r_e = a * b / np.sqrt((b * np.cos(tp)) ** 2 + (a * np.sin(tp)) ** 2)
        mod = 1.0 + np.sum(
            self.amp[:, None]
            * np.cos(_HARMONICS[:, None] * theta.reshape(1, -1) + self.phase[:, None]),
            axis=0,
        ).reshape(theta.shape)
        return r_e * mod

    @property
    def r_max(self) -> float:
        """Radius of a circle around the centre that contains the outline."""
        return float(self.radius / np.sqrt(self.axis_ratio) * (1.0 + np.abs(self.amp).sum()))

    def value(self, yy: NDArray, xx: NDArray) -> NDArray[np.float64]:
        """``r(theta)**2 - d**2`` at the pixel centres (positive inside the outline)."""
        dy = yy - self.cy
        dx = xx - self.cx
        return self.r(np.arctan2(dy, dx)) ** 2 - (dy**2 + dx**2)

    def shifted(self, cy: float, cx: float) -> _Outline:
        return _Outline(
            cy, cx, self.radius, self.axis_ratio, self.orientation, self.amp, self.phase
        )


def _random_outline(
    rng: np.random.Generator, radius: float, ellipticity: float, roughness: float
) -> _Outline:
    q = 1.0 - rng.uniform(0.0, ellipticity) if ellipticity > 0 else 1.0
    orientation = rng.uniform(0.0, np.pi)
    w = 1.0 / _HARMONICS
    w = w / np.sqrt(np.sum(w**2) / 2.0)  # rms of the modulation = roughness (in expectation)
    amp = roughness * w * rng.standard_normal(_HARMONICS.size)
    phase = rng.uniform(0.0, 2.0 * np.pi, _HARMONICS.size)
    return _Outline(0.0, 0.0, float(radius), float(q), float(orientation), amp, phase)


@dataclass
class _Particle:
    outer: _Outline
    core: _Outline | None
    core_offset: tuple[float, float]  # core centre minus outer centre


def _target(p: _Particle, target: str) -> _Outline:
    return p.core if (target == "core" and p.core is not None) else p.outer


def _place(p: _Particle, target: str, ty: float, tx: float) -> _Particle:
    """Move particle ``p`` so its target object is centred at (ty, tx)."""
    oy, ox = p.core_offset
    if target == "core" and p.core is not None:
        cy, cx = ty - oy, tx - ox
    else:
        cy, cx = ty, tx
    core = None if p.core is None else p.core.shifted(cy + oy, cx + ox)
    return _Particle(p.outer.shifted(cy, cx), core, p.core_offset)


def _bounding(p: _Particle) -> tuple[float, float, float]:
    """Return a circle (cy, cx, r) containing the whole particle."""
    r = p.outer.r_max
    if p.core is not None:
        oy, ox = p.core_offset
        r = max(r, np.hypot(oy, ox) + p.core.r_max)
    return p.outer.cy, p.outer.cx, r


def _arrange(
    rng: np.random.Generator,
    shape: tuple[int, int],
    proto: list[_Particle],
    target: str,
    touching_fraction: float,
    contact_overlap: float,
    min_gap: float,
    max_tries: int = 200,
) -> tuple[list[_Particle], list[tuple[int, int]]]:
    """Place particles without unwanted overlaps; some in contact with a placed neighbour."""
    h, w = shape
    placed: list[_Particle] = []
    pairs: list[tuple[int, int]] = []
    circles = np.zeros((0, 3))

    def clear(cand: _Particle, skip: int | None) -> bool:
        if not len(circles):
            return True
        cy, cx, r = _bounding(cand)
        d = np.hypot(circles[:, 0] - cy, circles[:, 1] - cx) - circles[:, 2] - r
        if skip is not None:
            d[skip] = np.inf
        return bool(np.all(d >= min_gap))

    for p in proto:
        want_touch = len(placed) > 0 and rng.random() < touching_fraction
        result, partner = None, None
        if want_touch:
            for _ in range(max_tries):
                j = int(rng.integers(len(placed)))
                tj = _target(placed[j], target)
                tk = _target(p, target)
                alpha = rng.uniform(-np.pi, np.pi)
                small = min(tj.radius, tk.radius)
                overlap = rng.uniform(1.5, max(2.0, contact_overlap * small))
                dist = float(tj.r(alpha) + tk.r(alpha + np.pi)) - overlap
                ty = tj.cy + dist * np.sin(alpha)
                tx = tj.cx + dist * np.cos(alpha)
                if not (0 <= ty <= h - 1 and 0 <= tx <= w - 1):
                    continue
                cand = _place(p, target, ty, tx)
                if clear(cand, skip=j):
                    result, partner = cand, j
                    break
        if result is None:
            for _ in range(max_tries):
                cand = _place(p, target, rng.uniform(0, h - 1), rng.uniform(0, w - 1))
                if clear(cand, skip=None):
                    result = cand
                    break
        if result is None:
            continue  # the image is full
        if partner is not None:
            pairs.append((partner, len(placed)))
        placed.append(result)
        circles = np.vstack([circles, _bounding(result)])
    return placed, pairs


def _rasterize(
    shape: tuple[int, int], outlines: list[_Outline]
) -> tuple[NDArray[np.float64], NDArray[np.int32]]:
    """Max projected thickness and the instance mask (labels 1..n in list order)."""
    h, w = shape
    best = np.zeros(shape)  # largest r**2 - d**2 so far (thickness = 2 sqrt(best))
    labels = np.zeros(shape, dtype=np.int32)
    for k, o in enumerate(outlines, start=1):
        rm = o.r_max + 1.0
        y0, y1 = max(int(np.floor(o.cy - rm)), 0), min(int(np.ceil(o.cy + rm)) + 1, h)
        x0, x1 = max(int(np.floor(o.cx - rm)), 0), min(int(np.ceil(o.cx + rm)) + 1, w)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        v = o.value(yy, xx)
        sub_best = best[y0:y1, x0:x1]
        win = v > sub_best
        sub_best[win] = v[win]
        labels[y0:y1, x0:x1][win] = k
    return 2.0 * np.sqrt(best), labels


def _support_field(rng: np.random.Generator, shape: tuple[int, int]) -> NDArray[np.float64]:
    """Amorphous-film thickness variation: smooth plus fine grain, zero mean, unit std."""
    smooth = ndimage.gaussian_filter(rng.standard_normal(shape), 6.0, mode="wrap")
    fine = ndimage.gaussian_filter(rng.standard_normal(shape), 0.8, mode="wrap")
    f = 0.8 * smooth / smooth.std() + 0.6 * fine / fine.std()
    return (f - f.mean()) / f.std()


def _ramp(rng: np.random.Generator, shape: tuple[int, int]) -> NDArray[np.float64]:
    """Return a linear ramp in a random direction, from -1 to 1 across the image."""
    ang = rng.uniform(0.0, 2.0 * np.pi)
    yy = np.linspace(-1.0, 1.0, shape[0])[:, None]
    xx = np.linspace(-1.0, 1.0, shape[1])[None, :]
    r = np.sin(ang) * yy + np.cos(ang) * xx
    return r / max(np.abs(r).max(), 1e-12)


def _blur(
    img: NDArray[np.float64], blur_sigma: float, mtf: tuple[float, float, float] | None
) -> NDArray[np.float64]:
    out = ndimage.gaussian_filter(img, blur_sigma, mode="nearest") if blur_sigma > 0 else img
    if mtf is not None:
        out = apply_mtf(out, *mtf)
    return out


def _detect(
    rng: np.random.Generator,
    clean_rel: NDArray[np.float64],
    dose: float | None,
    read_noise: float,
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Poisson counts at ``dose`` (counts per unit intensity) plus Gaussian read noise."""
    if dose is None:
        clean = clean_rel
        image = clean.copy()
    else:
        if dose <= 0:
            raise ValueError("dose must be positive (or None for no shot noise)")
        clean = np.clip(clean_rel, 0.0, None) * dose
        image = rng.poisson(clean).astype(np.float64)
    if read_noise > 0:
        image = image + rng.normal(0.0, read_noise, image.shape)
    return image.astype(np.float32), clean.astype(np.float32)


def _default_count(
    shape: tuple[int, int], radius_range: tuple[float, float], coverage: float
) -> int:
    a, b = radius_range
    mean_r2 = (a * a + a * b + b * b) / 3.0
    return max(1, round(coverage * shape[0] * shape[1] / (np.pi * mean_r2)))


def _check_common(shape, radius_range, touching_fraction, ellipticity, roughness) -> None:
    if len(shape) != 2 or min(shape) < 8:
        raise ValueError(f"shape must be (H, W) with H, W >= 8, got {shape}")
    lo, hi = radius_range
    if not 0 < lo <= hi:
        raise ValueError(f"radius_range must satisfy 0 < min <= max, got {radius_range}")
    if not 0 <= touching_fraction <= 1:
        raise ValueError("touching_fraction must be in [0, 1]")
    if not 0 <= ellipticity < 1:
        raise ValueError("ellipticity must be in [0, 1)")
    if not 0 <= roughness < 0.2:
        raise ValueError("roughness must be in [0, 0.2)")


def _table(
    placed: list[_Particle],
    pairs: list[tuple[int, int]],
    labels: NDArray[np.int32],
    target: str,
    pixel_size_nm: float | None,
    with_core: bool,
) -> pd.DataFrame:
    n = len(placed)
    area = np.bincount(labels.ravel(), minlength=n + 1)[1 : n + 1]
    border = np.zeros(n + 1, dtype=bool)
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    border[np.unique(edge)] = True
    neigh: list[list[int]] = [[] for _ in range(n)]
    for a, b in pairs:
        neigh[a].append(b + 1)
        neigh[b].append(a + 1)
    rows: list[dict[str, Any]] = []
    for k, p in enumerate(placed):
        t = _target(p, target)
        row: dict[str, Any] = {
            "label": k + 1,
            "y": t.cy,
            "x": t.cx,
            "radius_px": p.outer.radius,
            "core_radius_px": p.core.radius if p.core is not None else 0.0,
            "mask_radius_px": t.radius,
            "area_px": int(area[k]),
            "equivalent_diameter_px": float(2.0 * np.sqrt(area[k] / np.pi)),
            "touches_border": bool(border[k + 1]),
            "touching": tuple(sorted(neigh[k])),
            "n_touching": len(neigh[k]),
            "axis_ratio": t.axis_ratio,
            "orientation": t.orientation,
        }
        if with_core:
            row.update(
                shell_y=p.outer.cy,
                shell_x=p.outer.cx,
                core_y=p.core.cy if p.core is not None else np.nan,
                core_x=p.core.cx if p.core is not None else np.nan,
            )
        rows.append(row)
    columns = [
        "label",
        "y",
        "x",
        "radius_px",
        "core_radius_px",
        "mask_radius_px",
        "area_px",
        "equivalent_diameter_px",
        "touches_border",
        "touching",
        "n_touching",
        "axis_ratio",
        "orientation",
    ]
    if with_core:
        columns += ["shell_y", "shell_x", "core_y", "core_x"]
    df = pd.DataFrame(rows, columns=columns)
    df = df.astype({"label": np.int32, "area_px": np.int64, "touches_border": bool})
    if pixel_size_nm is not None:
        df["area_nm2"] = df["area_px"] * pixel_size_nm**2
        df["equivalent_diameter_nm"] = df["equivalent_diameter_px"] * pixel_size_nm
    return df


def core_shell_particles(
    shape: tuple[int, int] = (512, 512),
    *,
    n_particles: int | None = None,
    radius_range: tuple[float, float] = (8.0, 30.0),
    shell_range: tuple[float, float] = (0.15, 0.4),
    touching_fraction: float = 0.3,
    ellipticity: float = 0.15,
    roughness: float = 0.03,
    core_offset: float = 0.15,
    target: Literal["core", "particle"] = "core",
    coverage: float = 0.25,
    contact_overlap: float = 0.12,
    min_gap: float = 3.0,
    mu_core: float = 0.04,
    mu_shell: float = 0.012,
    support_density: float = 0.05,
    support_texture: float = 0.3,
    illumination_gradient: float = 0.03,
    blur_sigma: float = 1.0,
    mtf: tuple[float, float, float] | None = None,
    dose: float | None = 200.0,
    read_noise: float = 0.0,
    seed: int = 0,
    pixel_size_nm: float | None = 0.5,
) -> ParticleImage:
    """Bright-field TEM image of core-shell nanoparticles with an instance mask (seed 001).

    Dark metal cores inside lighter SiO2 shells on a slightly textured amorphous support.
    By default the mask labels the **cores**, the foreground seed 001 segments (see the module
    docstring); ``target="particle"`` labels whole particles.  A fraction of the particles is
    placed in contact with a neighbour (labelled objects overlapping slightly), so an instance
    segmentation must split them; particles may cross the image border.

    Parameters
    ----------
    shape : (int, int)
        Image size (H, W).
    n_particles : int, optional
        Particles to place; default from ``coverage``.  Fewer are placed if the image is full.
    radius_range : (float, float)
        Range of the outer (shell) equivalent radius in px, drawn uniformly.
    shell_range : (float, float)
        Shell thickness as a fraction of the outer radius (core radius = R * (1 - s)).
    touching_fraction : float
        Probability that a new particle is placed touching an already placed one.
    ellipticity : float
        Largest 1 - (axis ratio); each particle draws its own in [0, ellipticity].
    roughness : float
        RMS relative radial edge roughness (harmonics 3-8).
    core_offset : float
        Largest off-centring of the core, as a fraction of the shell thickness.
    target : {"core", "particle"}
        Object the instance mask labels.
    coverage : float
        Fraction of the image covered by particles (outer discs) when ``n_particles`` is None.
    contact_overlap : float
        Largest overlap depth of touching objects as a fraction of the smaller radius (at
        least 1.5 px, so touching objects are adjacent in the mask).
    min_gap : float
        Smallest gap (px) between the bounding circles of particles that do not touch.
    mu_core, mu_shell : float
        Attenuation per px of projected thickness of the metal core and of the silica shell.
    support_density : float
        Mean optical density of the support film; ``support_texture`` its relative variation.
    support_texture : float
        Relative standard deviation of the support thickness.
    illumination_gradient : float
        Relative illumination change from the image centre to its edge along a random direction.
    blur_sigma : float
        Gaussian PSF standard deviation in px (0: none).
    mtf : (c1, c2, c3), optional
        Also apply the seed 003 detector MTF (:func:`napari_atomnet.synth.apply_mtf`).
    dose : float or None
        Electron counts per px of unattenuated beam; Poisson noise.  None: no shot noise, and the
        image is the transmission (vacuum = 1).
    read_noise : float
        Standard deviation of added Gaussian read noise, in image units.
    seed : int
        Random seed; the same arguments give the same image bit for bit.
    pixel_size_nm : float or None
        Calibration; adds ``area_nm2`` and ``equivalent_diameter_nm`` columns.

    Returns
    -------
    ParticleImage
        ``image`` (float32 counts), ``labels`` (int32 instance mask of the ``target``),
        ``particles`` (one row per label: ``label``, ``y``, ``x`` (centre of the labelled object),
        ``radius_px`` (outer), ``core_radius_px``, ``mask_radius_px`` (equivalent radius of the
        labelled outline), ``area_px`` (mask pixels after splitting),
        ``equivalent_diameter_px`` (2 sqrt(area / pi), seed 001 Eq. 7), ``touches_border``
        (the mask has a pixel in the first or last row or column: an incomplete particle, which
        seed 001 leaves out of its statistics), ``touching`` (labels it touches),
        ``n_touching``, ``axis_ratio``, ``orientation``, ``shell_y``, ``shell_x``, ``core_y``,
        ``core_x``), ``params`` and ``extras``:
        ``clean`` (noise-free image, same units), ``core_labels``, ``particle_labels`` (both
        instance masks, same label numbers), ``touching_pairs`` (K, 2) label pairs,
        ``thickness_core`` and ``thickness_shell`` (px).

    Examples
    --------
    >>> sim = core_shell_particles((128, 128), n_particles=6, seed=1)
    >>> int(sim.labels.max()) == len(sim.particles)
    True
    """
    params = dict(locals())
    params["shape"] = list(shape)
    _check_common(shape, radius_range, touching_fraction, ellipticity, roughness)
    if target not in ("core", "particle"):
        raise ValueError(f"target must be 'core' or 'particle', got {target!r}")
    if not 0 <= shell_range[0] <= shell_range[1] < 1:
        raise ValueError(f"shell_range must satisfy 0 <= min <= max < 1, got {shell_range}")
    shape = (int(shape[0]), int(shape[1]))
    rng = np.random.default_rng(seed)
    n = n_particles if n_particles is not None else _default_count(shape, radius_range, coverage)

    proto = []
    for _ in range(n):
        r_out = rng.uniform(*radius_range)
        s = rng.uniform(*shell_range)
        r_core = r_out * (1.0 - s)
        outer = _random_outline(rng, r_out, ellipticity, roughness)
        core = _random_outline(rng, r_core, 0.0, roughness * 0.5)
        core.axis_ratio, core.orientation = outer.axis_ratio, outer.orientation
        ang = rng.uniform(0, 2 * np.pi)
        off = rng.uniform(0, core_offset) * (r_out - r_core)
        proto.append(_Particle(outer, core, (off * np.sin(ang), off * np.cos(ang))))
    placed, pairs = _arrange(rng, shape, proto, target, touching_fraction, contact_overlap, min_gap)

    t_outer, lab_outer = _rasterize(shape, [p.outer for p in placed])
    t_core, lab_core = _rasterize(shape, [p.core for p in placed])  # type: ignore[misc]
    t_shell = np.clip(t_outer - t_core, 0.0, None)

    support = support_density * (1.0 + support_texture * _support_field(rng, shape))
    illum = 1.0 + illumination_gradient * _ramp(rng, shape)
    trans = illum * np.exp(-(np.clip(support, 0, None) + mu_shell * t_shell + mu_core * t_core))
    clean_rel = _blur(trans, blur_sigma, mtf)
    image, clean = _detect(rng, clean_rel, dose, read_noise)

    labels = lab_core if target == "core" else lab_outer
    table = _table(placed, pairs, labels, target, pixel_size_nm, with_core=True)
    params["n_particles_placed"] = len(placed)
    extras = {
        "clean": clean,
        "core_labels": lab_core,
        "particle_labels": lab_outer,
        "touching_pairs": np.array([(a + 1, b + 1) for a, b in pairs], dtype=np.int32).reshape(
            -1, 2
        ),
        "thickness_core": t_core.astype(np.float32),
        "thickness_shell": t_shell.astype(np.float32),
        "target": target,
    }
    return ParticleImage(image, labels, table, params, pixel_size_nm, extras)


def haadf_particles(
    shape: tuple[int, int] = (512, 512),
    *,
    n_particles: int | None = None,
    radius_range: tuple[float, float] = (4.0, 20.0),
    touching_fraction: float = 0.3,
    ellipticity: float = 0.15,
    roughness: float = 0.03,
    coverage: float = 0.15,
    contact_overlap: float = 0.12,
    min_gap: float = 3.0,
    intensity_per_px: float = 0.025,
    support_level: float = 0.1,
    support_texture: float = 0.3,
    background_gradient: float = 0.05,
    blur_sigma: float = 1.0,
    mtf: tuple[float, float, float] | None = None,
    dose: float | None = 100.0,
    read_noise: float = 0.0,
    seed: int = 0,
    pixel_size_nm: float | None = 0.2,
) -> ParticleImage:
    """HAADF-STEM-like image of bright nanoparticles on an amorphous support, with instance mask.

    The intensity is proportional to the projected thickness (``intensity_per_px`` per px of
    thickness) on a weak, textured support background; particles are round to slightly
    elliptical with rough edges, some touching a neighbour, some crossing the image border.

    Parameters
    ----------
    shape : (int, int)
        Image size (H, W).
    n_particles : int, optional
        Particles to place; default from ``coverage``.
    radius_range : (float, float)
        Range of the equivalent radius in px.
    touching_fraction, ellipticity, roughness, coverage, contact_overlap, min_gap
        As in :func:`core_shell_particles`.
    intensity_per_px : float
        Signal per px of projected particle thickness (image units before ``dose``).
    support_level : float
        Mean support signal; ``support_texture`` its relative standard deviation.
    support_texture : float
        Relative standard deviation of the support signal.
    background_gradient : float
        Relative change of the support signal from the centre to the edge (random direction).
    blur_sigma : float
        Gaussian probe / PSF standard deviation in px.
    mtf : (c1, c2, c3), optional
        Also apply the seed 003 detector MTF.
    dose : float or None
        Counts per image unit; Poisson noise.  None: no shot noise.
    read_noise : float
        Standard deviation of added Gaussian noise, in image units.
    seed : int
        Random seed.
    pixel_size_nm : float or None
        Calibration.

    Returns
    -------
    ParticleImage
        As :func:`core_shell_particles` (``core_radius_px`` is 0, labels are whole particles);
        ``extras``: ``clean``, ``touching_pairs``, ``thickness``.

    Examples
    --------
    >>> sim = haadf_particles((128, 128), n_particles=5, seed=2)
    >>> bool(sim.image[sim.labels > 0].mean() > sim.image[sim.labels == 0].mean())
    True
    """
    params = dict(locals())
    params["shape"] = list(shape)
    _check_common(shape, radius_range, touching_fraction, ellipticity, roughness)
    shape = (int(shape[0]), int(shape[1]))
    rng = np.random.default_rng(seed)
    n = n_particles if n_particles is not None else _default_count(shape, radius_range, coverage)
    proto = [
        _Particle(
            _random_outline(rng, rng.uniform(*radius_range), ellipticity, roughness), None, (0, 0)
        )
        for _ in range(n)
    ]
    placed, pairs = _arrange(
        rng, shape, proto, "particle", touching_fraction, contact_overlap, min_gap
    )
    thick, labels = _rasterize(shape, [p.outer for p in placed])
    support = support_level * (1.0 + support_texture * _support_field(rng, shape))
    support = np.clip(support, 0.0, None) * (1.0 + background_gradient * _ramp(rng, shape))
    clean_rel = _blur(support + intensity_per_px * thick, blur_sigma, mtf)
    image, clean = _detect(rng, clean_rel, dose, read_noise)
    table = _table(placed, pairs, labels, "particle", pixel_size_nm, with_core=False)
    params["n_particles_placed"] = len(placed)
    extras = {
        "clean": clean,
        "touching_pairs": np.array([(a + 1, b + 1) for a, b in pairs], dtype=np.int32).reshape(
            -1, 2
        ),
        "thickness": thick.astype(np.float32),
    }
    return ParticleImage(image, labels, table, params, pixel_size_nm, extras)
