"""Training data for the atom-column detector, simulated with :mod:`napari_atomnet.synth` only.

Three simulators cover the parameter space (seed 003: train entirely on simulated images with a
large random component):

- ``lattice``: :func:`~napari_atomnet.synth.lattice_image` at a random point of
  :func:`~napari_atomnet.synth.lattice.random_lattice_params` (seven lattice types with bases,
  spacing 6-40 px, column width 0.08-0.5 spacing, bright or dark columns, interfaces, surfaces,
  vacancies, dose ~8-5000 counts per peak, detector MTF);
- ``perovskite``: :func:`~napari_atomnet.synth.perovskite_haadf` (A/B columns, polarization,
  domain walls, strain, dislocations, vacancies, rotation, scan noise; dose 8-2000);
- ``graphene``: :func:`~napari_atomnet.synth.graphene_hrtem` (seed 003 recipe: random CTF, MTF,
  Poisson dose 10-1e4 e/Å², so atoms come out bright or dark), at a random sampling
  0.08-0.18 Å/px (scale jitter).

Each simulated image is normalised exactly as inference normalises it
(:func:`~napari_atomnet.core.preprocess.normalization_sigma` on the whole image, then the local
normalisation with the whole image's statistics), then padded as tiles at an image
border are padded at inference.  Targets per column: a Gaussian blob of
``sigma_t = clip(0.12 * nn, 1, 3)`` px (``nn``: distance to the nearest other column) in the
channel of its class (``strong``; ``weak`` when its brightness is below 0.6 of the strongest
column type of its lattice), combined by maximum so every blob's peak stays exactly on its
column; box side ``min(5 * sigma_column, nn)``.  Columns too faint to be seen (matched-filter SNR
below :data:`MIN_SNR`) are neither positives nor negatives (their neighbourhood is masked out of
the heatmap loss).  The heatmap loss weight is raised near the image border
(:data:`BORDER_WEIGHT`) and, with ``hole_weight``, at the holes of the column arrangement
(:func:`hole_positions`: empty cell centres, hexagon centres, vacancies).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

__all__ = [
    "BORDER_FILLS",
    "CLASSES",
    "DEFAULT_GRAPHENE_DRAWS",
    "DEFAULT_MIX",
    "DEFAULT_NORMALIZATION",
    "HOLE_WEIGHT",
    "DevicePool",
    "Example",
    "hole_positions",
    "label_atoms",
    "labelled_example",
    "make_example",
    "make_pool",
    "normalize_image",
    "random_simulation",
    "render_targets",
    "sample_batch",
    "sim_polarity",
    "target_sigma",
]

#: Heatmap classes of the detector.
CLASSES: tuple[str, ...] = ("strong", "weak")
#: A column type is "weak" below this fraction of the strongest column type of its lattice.
WEAK_RATIO = 0.6
#: Columns whose matched-filter SNR is below this are ignored (not learnt either way).
MIN_SNR = 4.0
#: Heatmap loss weight of the pixels within 3 px of an image border (see Example.prerender).
BORDER_WEIGHT = 10.0
#: Heatmap loss weight near the "holes" of the column arrangement (see :func:`hole_positions`),
#: the recipe's default (card key ``hole_weight``).
HOLE_WEIGHT = 5.0
#: Pixels farther than this many lattice spacings from every column are vacuum (holes in a
#: film, beyond a surface) for ``vacuum_weight`` (see Example.prerender).
VACUUM_SPACINGS = 1.2
#: What a training image's padding holds, as inference fills the pixels beyond an image's edge
#: (card key ``border_fill``).  "reflect": the mirrored image, with mirrored labels.  "zero":
#: nothing (0 after normalisation), no labels.  With reflection a column d px inside the edge and
#: one d px outside it (a negative) give nearly the same padded image when d is below the column
#: width, and the reflection-trained model lost columns 1.6-2 px inside the edge.
BORDER_FILLS = ("reflect", "zero")
#: Normalisation rule written into the model card (keywords of ``normalization_sigma``).
DEFAULT_NORMALIZATION: dict[str, float] = {
    "factor": 3.0,
    "minimum": 16.0,
    "maximum": 120.0,
    "fallback": 48.0,
}
#: Share of each simulator in the training pool.
DEFAULT_MIX: dict[str, float] = {"lattice": 0.4, "perovskite": 0.2, "graphene": 0.4}

#: How the graphene simulator's random draws are made (card key ``config.graphene``):
#: ``holes``, the probability of 0, 1, 2, ... holes in an image, and ``aligned``, the share of
#: images at an aligned microscope (:func:`_good_ctf`; the rest draw seed 003's Table 1).
DEFAULT_GRAPHENE_DRAWS: dict[str, Any] = {
    "holes": (0.6, 0.3, 0.1),
    "aligned": 0.7,
    "sampling": (0.08, 0.18),  # Å/px, uniform (scale jitter)
}
#: HRTEM images whose clean image correlates less than this with the atom map (either sign)
#: show no recognisable atoms; their columns are ignored (not learnt either way).
MIN_HRTEM_CONTRAST = 0.25
#: HRTEM training dose range (e/Å²): below ~300 e/Å² at 0.08-0.18 Å/px the honeycomb is not
#: visible at all (seed 003 draws from 10), and such images only teach the network to guess.
HRTEM_DOSE = (300.0, 3.0e4)

# atom table columns (float32): y, x, class (-1 ignored), sigma_t, box side
_Y, _X, _CLS, _SIG, _SIZE = range(5)


@dataclass
class Example:
    """One normalised training image with its labelled columns.

    Attributes
    ----------
    image : ndarray of float32, shape (H + 2 pad, W + 2 pad)
        Locally normalised image, reflection-padded by ``pad`` px on every side.
    atoms : ndarray of float32, shape (n, 5)
        ``y, x, class, sigma_t, size`` in padded coordinates; mirrored copies of the columns
        near the border are included (they are what the padded image shows); class -1 marks
        columns too faint to learn from.
    truth : ndarray of float64, shape (m, 2)
        The simulator's true (y, x) positions in *unpadded* image coordinates.
    spacing : float
        Median nearest-neighbour distance of the columns (px).
    pad : int
        Padding width.
    source : str
        Simulator name.
    meta : dict
        Parameters (seed, dose, polarity, ...).
    targets : dict, optional
        Pre-rendered targets of the whole padded image (:meth:`prerender`): ``heat`` (C, H, W)
        float16, ``log_size`` (H, W) float16, ``weight`` (H, W) uint8.
    """

    image: NDArray[np.float32]
    atoms: NDArray[np.float32]
    truth: NDArray[np.float64]
    spacing: float
    pad: int
    source: str
    meta: dict[str, Any] = field(default_factory=dict)
    targets: dict[str, NDArray] | None = None

    def prerender(
        self,
        n_classes: int = 2,
        border_weight: float = BORDER_WEIGHT,
        hole_weight: float = 1.0,
        vacuum_weight: float = 1.0,
    ) -> Example:
        """Render the targets of the whole image once (crops then cost a slice).

        The heatmap loss weight is ``border_weight`` within 3 px of the image border (when the
        image is padded): a column just outside the image shows there as half a blob whose
        reflection looks much like a column on the border, and telling the two apart (only
        columns inside count) needs extra weight, as those pixels are few.

        It is ``hole_weight`` within ``1.5 sigma_t`` of the holes of the column arrangement
        (:func:`hole_positions`): the empty centres of square cells, hexagons and vacancies are
        where a network that learnt the perovskite's B site at every cell centre places weak
        columns that are not there (ABF rocksalt and square lattices at low dose).

        It is ``vacuum_weight`` in the image's vacuum (pixels farther than
        :data:`VACUUM_SPACINGS` spacings from every column: holes in a film, beyond a surface),
        where HRTEM's delocalised fringes at a hole's edge look like lattice to a network that
        rarely pays for placing columns there.
        """
        heat, log_size, _, weight = render_targets(self.image.shape, self.atoms, n_classes)
        if vacuum_weight != 1:
            weight[vacuum_mask(self.image.shape, self.atoms, self.spacing, self.pad)] *= (
                vacuum_weight
            )
        if hole_weight != 1:
            holes, radius = hole_positions(self.atoms)
            _scale_disks(weight, holes, 1.5 * radius, hole_weight)
        if self.pad and border_weight != 1:
            p = self.pad
            h, w = self.image.shape[0] - 2 * p, self.image.shape[1] - 2 * p
            band = np.zeros(self.image.shape, bool)
            for edge in (p, p + h):
                band[max(edge - 3, 0) : edge + 3, p - 3 : p + w + 3] = True
            for edge in (p, p + w):
                band[p - 3 : p + h + 3, max(edge - 3, 0) : edge + 3] = True
            weight = np.where(band, weight * border_weight, weight)
        self.targets = {
            "heat": heat.astype(np.float16),
            "log_size": log_size.astype(np.float16),
            "weight": weight.astype(np.uint8),
        }
        return self


def hole_positions(atoms: NDArray[np.float32]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Find the holes of a column arrangement: Voronoi vertices far from every column.

    A Voronoi vertex (the circumcentre of a Delaunay triangle of the columns) is a point of
    locally largest distance ``R`` to the columns: the centre of an empty square cell, of a
    hexagon, of a vacancy.  It counts as a hole when ``2 sigma_t <= R <= 1.05 nn`` of its nearest
    column (outside a column's blob; hull triangles with far-away circumcentres dropped).

    Parameters
    ----------
    atoms : ndarray, shape (n, 5)
        ``y, x, class, sigma_t, size`` (every class, ignored columns included).

    Returns
    -------
    holes : ndarray, shape (m, 2)
        (y, x) of the holes.
    sigma : ndarray, shape (m,)
        ``sigma_t`` of each hole's nearest column.
    """
    from ..core.holes import hole_sites

    sigma = atoms[:, _SIG].astype(np.float64)
    centres, nearest = hole_sites(atoms[:, :2], 2.0 * sigma, merge=False)
    return centres, sigma[nearest]


def vacuum_mask(
    shape: tuple[int, int], atoms: NDArray[np.float32], spacing: float, pad: int = 0
) -> NDArray[np.bool_]:
    """Pixels of the image (not its padding) farther than VACUUM_SPACINGS spacings from columns.

    Parameters
    ----------
    shape : tuple of int
        Padded image shape.
    atoms : ndarray, shape (n, 5)
        Columns (``y, x`` first) in padded coordinates, ignored ones included.
    spacing : float
        Lattice spacing (px).
    pad : int
        Padding width: the padding is never vacuum (it holds no labels either way).

    Returns
    -------
    ndarray of bool, shape ``shape``
    """
    from scipy import ndimage

    h, w = shape
    iy, ix = np.round(atoms[:, 0]).astype(int), np.round(atoms[:, 1]).astype(int)
    inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    if not inside.any() or not np.isfinite(spacing) or spacing <= 0:
        return np.zeros(shape, bool)
    free = np.ones(shape, bool)
    free[iy[inside], ix[inside]] = False
    far = ndimage.distance_transform_edt(free) > VACUUM_SPACINGS * spacing
    if pad:
        far[:pad], far[h - pad :], far[:, :pad], far[:, w - pad :] = False, False, False, False
    return far


def _scale_disks(
    weight: NDArray[np.float32], centres: NDArray, radius: NDArray, factor: float
) -> None:
    """Multiply ``weight`` by ``factor`` within ``radius`` of each centre (once per pixel)."""
    h, w = weight.shape
    hit = np.zeros((h, w), bool)
    for (y, x), r in zip(centres, radius, strict=True):
        r0, r1 = max(int(np.floor(y - r)), 0), min(int(np.ceil(y + r)) + 1, h)
        c0, c1 = max(int(np.floor(x - r)), 0), min(int(np.ceil(x + r)) + 1, w)
        if r0 >= r1 or c0 >= c1:
            continue
        yy = np.arange(r0, r1)[:, None] - y
        xx = np.arange(c0, c1)[None, :] - x
        hit[r0:r1, c0:c1] |= yy**2 + xx**2 <= r * r
    weight[hit] *= factor


def target_sigma(nn: NDArray | float) -> NDArray[np.float64]:
    """Target blob width (px) for a column with nearest-neighbour distance ``nn`` (px)."""
    return np.clip(0.12 * np.asarray(nn, dtype=np.float64), 1.0, 3.0)


def normalize_image(
    image: NDArray,
    normalization: Mapping[str, float] | None = None,
    *,
    pad: int = 0,
    fill: str = "reflect",
) -> NDArray[np.float32]:
    """Normalise an image as inference does, optionally padded by ``pad`` px.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Raw image.
    normalization : dict, optional
        Keywords of :func:`~napari_atomnet.core.preprocess.normalization_sigma`
        (default :data:`DEFAULT_NORMALIZATION`).
    pad : int
        Padding on every side (statistics are those of the unpadded image).
    fill : {"reflect", "zero"}
        What the padding holds: the normalised reflection of the image, or 0 (the normalised
        mean: the network sees nothing beyond the image's edge; see :data:`BORDER_FILLS`).

    Returns
    -------
    ndarray of float32, shape (H + 2 pad, W + 2 pad)
    """
    if fill not in BORDER_FILLS:
        raise ValueError(f"fill must be one of {', '.join(BORDER_FILLS)}; got {fill!r}")
    from ..core import preprocess

    img = np.asarray(image, dtype=np.float32)
    norm = dict(DEFAULT_NORMALIZATION if normalization is None else normalization)
    sigma = preprocess.normalization_sigma(img, **norm)
    padded = np.pad(img, pad, mode="reflect") if pad else img
    out = preprocess.LocalNormalizer(img, sigma).apply(padded, (-pad, -pad))
    if pad and fill == "zero":
        out[:pad] = out[-pad:] = 0.0
        out[:, :pad] = out[:, -pad:] = 0.0
    return out


def label_atoms(
    atoms: Any, *, clean: NDArray | None = None, all_strong: bool = False
) -> NDArray[np.float32]:
    """Per-column labels from a simulator's atom table.

    Parameters
    ----------
    atoms : pandas.DataFrame
        ``y, x, class, amplitude, sigma`` (and ``domain`` when there is an interface).
    clean : ndarray, optional
        The noise-free expected image (counts); with it, columns whose matched-filter SNR
        ``|amplitude| sqrt(pi) sigma / sqrt(expected counts)`` is below :data:`MIN_SNR` get
        class -1.
    all_strong : bool
        Every column is "strong" (e.g. graphene).

    Returns
    -------
    ndarray of float32, shape (n, 5)
        ``y, x, class, sigma_t, size``.
    """
    n = len(atoms)
    out = np.zeros((n, 5), np.float32)
    if n == 0:
        return out
    y = atoms["y"].to_numpy(np.float64)
    x = atoms["x"].to_numpy(np.float64)
    pts = np.column_stack([y, x])
    if n > 1:
        nn = cKDTree(pts).query(pts, k=2)[0][:, 1]
    else:
        nn = np.full(1, 20.0)
    amp = np.abs(atoms["amplitude"].to_numpy(np.float64))
    sig_col = atoms["sigma"].to_numpy(np.float64)
    cls = np.zeros(n, np.float32)
    if not all_strong:
        domain = atoms["domain"].to_numpy() if "domain" in atoms else np.zeros(n, int)
        kind = atoms["class"].to_numpy()
        for d in np.unique(domain):
            in_d = domain == d
            types = np.unique(kind[in_d])
            med = {k: float(np.median(amp[in_d & (kind == k)])) for k in types}
            top = max(med.values()) or 1.0
            for k in types:
                if med[k] < WEAK_RATIO * top:
                    cls[in_d & (kind == k)] = 1.0
    if clean is not None:
        h, w = clean.shape
        iy = np.clip(np.round(y).astype(int), 0, h - 1)
        ix = np.clip(np.round(x).astype(int), 0, w - 1)
        var = np.maximum(np.asarray(clean, np.float64)[iy, ix], 1.0)
        snr = amp * np.sqrt(np.pi) * sig_col / np.sqrt(var)
        cls[snr < MIN_SNR] = -1.0
    out[:, _Y] = y
    out[:, _X] = x
    out[:, _CLS] = cls
    out[:, _SIG] = target_sigma(nn)
    out[:, _SIZE] = np.minimum(5.0 * sig_col, nn)
    return out


def _mirror(
    atoms: NDArray[np.float32], shape: tuple[int, int], pad: int, reflect: bool = True
) -> NDArray[np.float32]:
    """Shift labels into padded coordinates and (``reflect``) add their mirror images."""
    h, w = shape
    out = []
    flips_y = (None, 0, h - 1) if reflect else (None,)
    flips_x = (None, 0, w - 1) if reflect else (None,)
    for fy in flips_y:
        for fx in flips_x:
            a = atoms.copy()
            if fy is not None:
                a[:, _Y] = 2 * fy - a[:, _Y]
            if fx is not None:
                a[:, _X] = 2 * fx - a[:, _X]
            if fy is not None or fx is not None:
                keep = (
                    (a[:, _Y] > -pad - 4)
                    & (a[:, _Y] < h + pad + 4)
                    & (a[:, _X] > -pad - 4)
                    & (a[:, _X] < w + pad + 4)
                )
                a = a[keep]
            out.append(a)
    res = np.concatenate(out)
    res[:, _Y] += pad
    res[:, _X] += pad
    return res


def render_targets(
    shape: tuple[int, int],
    atoms: NDArray[np.float32],
    n_classes: int = len(CLASSES),
    *,
    offset: tuple[float, float] = (0.0, 0.0),
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
    """Render the training targets of a crop.

    Parameters
    ----------
    shape : tuple of int
        (h, w) of the crop.
    atoms : ndarray, shape (n, 5)
        ``y, x, class, sigma_t, size`` (class -1: ignored column).
    n_classes : int
        Heatmap channels.
    offset : tuple of float
        Image coordinates of the crop's first pixel (subtracted from the positions).

    Returns
    -------
    heat : ndarray of float32, shape (C, h, w)
        Per-class maximum of the Gaussian blobs (peak 1 at each column centre, sampled at pixel
        centres, so a blob's maximum and its log-parabola vertex lie exactly on the column).
    log_size : ndarray of float32, shape (h, w)
        log(box side) of the column whose blob dominates each pixel.
    size_mask : ndarray of float32, shape (h, w)
        1 where the dominating blob exceeds 0.5 (the size loss is applied there).
    weight : ndarray of float32, shape (h, w)
        0 within 2 sigma_t of ignored columns (no heatmap loss there), else 1.
    """
    h, w = int(shape[0]), int(shape[1])
    heat = np.zeros((n_classes, h, w), np.float32)
    best = np.zeros((h, w), np.float32)
    log_size = np.zeros((h, w), np.float32)
    weight = np.ones((h, w), np.float32)
    if len(atoms) == 0:
        return heat, log_size, np.zeros((h, w), np.float32), weight
    y = atoms[:, _Y].astype(np.float64) - offset[0]
    x = atoms[:, _X].astype(np.float64) - offset[1]
    sig = atoms[:, _SIG].astype(np.float64)
    rad = np.ceil(4.0 * sig).astype(int)
    keep = (y > -rad - 1) & (y < h + rad) & (x > -rad - 1) & (x < w + rad)
    for i in np.nonzero(keep)[0]:
        r = rad[i]
        cy, cx = round(y[i]), round(x[i])
        r0, r1 = max(cy - r, 0), min(cy + r + 1, h)
        c0, c1 = max(cx - r, 0), min(cx + r + 1, w)
        if r0 >= r1 or c0 >= c1:
            continue
        gy = np.exp(-0.5 * ((np.arange(r0, r1) - y[i]) / sig[i]) ** 2)
        gx = np.exp(-0.5 * ((np.arange(c0, c1) - x[i]) / sig[i]) ** 2)
        g = (gy[:, None] * gx[None, :]).astype(np.float32)
        k = int(atoms[i, _CLS])
        if k < 0:
            weight[r0:r1, c0:c1][g > np.exp(-2.0)] = 0.0
            continue
        win = heat[k, r0:r1, c0:c1]
        np.maximum(win, g, out=win)
        bwin = best[r0:r1, c0:c1]
        higher = g > bwin
        bwin[higher] = g[higher]
        log_size[r0:r1, c0:c1][higher] = np.log(max(float(atoms[i, _SIZE]), 1.0))
    # an ignored column never hides a real one
    weight[best > 0.5] = 1.0
    return heat, log_size, (best > 0.5).astype(np.float32), weight


# --------------------------------------------------------------------------------------------
# simulators with random parameters
# --------------------------------------------------------------------------------------------
def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def random_simulation(
    kind: str,
    rng: np.random.Generator,
    shape: tuple[int, int],
    graphene: Mapping[str, Any] | None = None,
) -> Any:
    """Simulate one image of a kind with random parameters.

    Parameters
    ----------
    kind : {"lattice", "perovskite", "graphene"}
        Simulator.
    rng : numpy.random.Generator
        Source of the parameters (and of the simulator's seed).
    shape : tuple of int
        Image size.
    graphene : dict, optional
        How graphene images are drawn (default :data:`DEFAULT_GRAPHENE_DRAWS`): ``holes``, the
        probabilities of 0, 1, 2, ... holes; ``aligned``, the share of aligned microscopes.

    Returns
    -------
    napari_atomnet.synth.AtomImage
    """
    from .. import synth

    if kind == "lattice":
        from ..synth.lattice import random_lattice_params

        return synth.lattice_image(shape, **random_lattice_params(rng))
    if kind == "perovskite":
        spacing = _loguniform(rng, 8.0, 40.0)
        return synth.perovskite_haadf(
            shape,
            spacing,
            rotation_deg=float(rng.uniform(0, 360)),
            dose=_loguniform(rng, 8.0, 2000.0),
            b_ratio=float(rng.uniform(0.15, 0.6)),
            sigma=float(rng.uniform(0.08, 0.2)) * spacing,
            polarization=float(rng.uniform(0.0, 0.1)),
            domain_wall=bool(rng.random() < 0.5),
            wall_angle=int(rng.choice([90, 180])),
            strain=float(rng.uniform(0.0, 0.03)) if rng.random() < 0.3 else 0.0,
            vacancy_fraction=float(rng.uniform(0.0, 0.05)) if rng.random() < 0.4 else 0.0,
            dislocation=bool(rng.random() < 0.3),
            background=float(rng.uniform(0.0, 0.5)),
            background_gradient=float(rng.uniform(0.0, 0.3)) if rng.random() < 0.5 else 0.0,
            scan_jitter=float(rng.uniform(0.0, 0.4)) if rng.random() < 0.3 else 0.0,
            drift=(float(rng.normal(0, 2)), float(rng.normal(0, 2))),
            amplitude_spread=float(rng.uniform(0.0, 0.1)),
            seed=int(rng.integers(0, 2**31 - 1)),
        )
    if kind == "graphene":
        draws = {**DEFAULT_GRAPHENE_DRAWS, **(graphene or {})}
        holes = np.asarray(draws["holes"], dtype=np.float64)
        good = rng.random() < float(draws["aligned"])  # most draws at good imaging conditions
        return synth.graphene_hrtem(
            shape,
            pixel_size_angstrom=float(rng.uniform(*draws["sampling"])),
            n_holes=int(rng.choice(len(holes), p=holes / holes.sum())),
            dose=_loguniform(rng, *HRTEM_DOSE),
            **(_good_ctf(rng) if good else {}),
            seed=int(rng.integers(0, 2**31 - 1)),
        )
    raise ValueError(f"unknown simulator {kind!r}")


def _good_ctf(rng: np.random.Generator) -> dict[str, float]:
    """Graphene imaging conditions of an aligned aberration-corrected TEM (a subset of Table 1).

    Defocus and Cs are drawn from seed 003's ranges, but the two-fold astigmatism is kept below
    10 Å (Table 1: up to 100 Å, which smears most images beyond recognition).
    """
    return {
        "defocus": float(rng.uniform(-120.0, 120.0)),
        "cs_um": float(rng.uniform(-20.0, 20.0)),
        "astig_angstrom": float(rng.uniform(0.0, 10.0)),
    }


def sim_polarity(sim: Any) -> int:
    """Return +1 when a simulation's atoms are bright, -1 when they are dark.

    HRTEM simulations say it in ``extras["polarity"]`` (the sign of the CTF's contrast at the
    atoms), the lattice simulator in ``params["polarity"]``; HAADF simulations are bright.
    """
    if "polarity" in sim.extras:
        return 1 if int(sim.extras["polarity"]) >= 0 else -1
    return -1 if sim.params.get("polarity", "bright") == "dark" else 1


def make_example(
    kind: str,
    rng: np.random.Generator,
    *,
    shape: tuple[int, int] = (256, 256),
    pad: int = 32,
    normalization: Mapping[str, float] | None = None,
    augment: bool = True,
    sim: Any = None,
    border_fill: str = "reflect",
    graphene: Mapping[str, Any] | None = None,
) -> Example:
    """Simulate, augment, normalise and label one training image.

    Every example is *oriented*: images whose atoms are dark (ABF, dark lattices, HRTEM at the
    other sign of the CTF) are negated after normalisation, so the network only ever learns
    bright atoms, and inference is told the contrast (``detect_atoms(polarity=...)``).  A network
    that learnt both contrasts found the bright gaps between dark columns too (ABF rocksalt
    precision 0.78, overlapping columns 0.53): on a lattice the gaps form a lattice of their own,
    and only the contrast, which the microscopist knows, tells the two apart.

    Augmentation (``augment=True``): contrast gamma 0.7-1.4 on 30 % of the images (before
    normalisation; linear contrast and offset are removed by the normalisation anyway).  Flips
    and 90° rotations are applied per crop in :func:`sample_batch`.

    Parameters
    ----------
    kind : {"lattice", "perovskite", "graphene"}
        Simulator.
    rng : numpy.random.Generator
        Source of every random choice.
    shape : tuple of int
        Simulated image size.
    pad : int
        Reflection padding (px), as tiles at an image border see it.
    normalization : dict, optional
        Normalisation rule (default :data:`DEFAULT_NORMALIZATION`).
    augment : bool
        Apply the gamma augmentation.
    sim : AtomImage, optional
        Use this simulation instead of drawing one.
    graphene : dict, optional
        How graphene images are drawn (see :func:`random_simulation`).

    Returns
    -------
    Example
    """
    if sim is None:
        sim = random_simulation(kind, rng, shape, graphene)
    shape = sim.image.shape
    hrtem = kind == "graphene"
    # HRTEM contrast is delocalised by the CTF: the per-column SNR test does not apply there
    clean = None if hrtem else sim.extras.get("clean")
    atoms = label_atoms(sim.atoms, clean=clean, all_strong=hrtem)
    if hrtem and abs(float(sim.extras.get("contrast", 1.0))) < MIN_HRTEM_CONTRAST:
        # the CTF smears the atoms so much that neither contrast shows a honeycomb: no labels
        atoms[:, _CLS] = -1.0
    img = np.asarray(sim.image, dtype=np.float64)
    gamma = 1.0
    if augment and rng.random() < 0.3:
        gamma = float(np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
        lo = float(img.min())
        img = (img - lo) ** gamma
    polarity = sim_polarity(sim)
    meta = {
        "seed": int(sim.params.get("seed", -1)),
        "dose": float(sim.params.get("dose", np.nan) or np.nan),
        "polarity": polarity,
        "gamma": gamma,
    }
    return labelled_example(
        img,
        atoms,
        sim.atoms[["y", "x"]].to_numpy(np.float64),
        polarity=polarity,
        pad=pad,
        normalization=normalization,
        source=kind,
        meta=meta,
        border_fill=border_fill,
    )


def labelled_example(
    image: NDArray,
    atoms: NDArray[np.float32],
    truth: NDArray[np.float64],
    *,
    polarity: int = 1,
    pad: int = 32,
    normalization: Mapping[str, float] | None = None,
    source: str = "labels",
    meta: dict[str, Any] | None = None,
    border_fill: str = "reflect",
) -> Example:
    """Normalise, orient and pad one labelled image (simulated or a user's corrected labels).

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Raw image.
    atoms : ndarray of float32, shape (n, 5)
        Labels ``y, x, class, sigma_t, size`` in image coordinates (:func:`label_atoms`).
    truth : ndarray, shape (m, 2)
        True (y, x) positions.
    polarity : {1, -1}
        -1 when the atoms are dark: the normalised image is negated (the network sees bright
        atoms).
    pad : int
        Reflection padding (px); the labels are mirrored with the image.
    normalization : dict, optional
        Normalisation rule (default :data:`DEFAULT_NORMALIZATION`).
    source : str
        Where the image came from.
    meta : dict, optional
        Recorded in the example.
    border_fill : {"reflect", "zero"}
        What the padding holds (:data:`BORDER_FILLS`); labels are mirrored with a reflection.

    Returns
    -------
    Example
    """
    shape = np.shape(image)
    norm = normalize_image(image, normalization, pad=pad, fill=border_fill) * polarity
    truth = np.asarray(truth, dtype=np.float64).reshape(-1, 2)
    nn = cKDTree(truth).query(truth, k=2)[0][:, 1] if len(truth) > 1 else np.full(1, 20.0)
    return Example(
        image=np.ascontiguousarray(norm, dtype=np.float32),
        atoms=_mirror(
            np.asarray(atoms, dtype=np.float32).reshape(-1, 5),
            shape,
            pad,
            reflect=border_fill == "reflect",
        ),
        truth=truth,
        spacing=float(np.median(nn)),
        pad=pad,
        source=source,
        meta=dict(meta or {}),
    )


def make_pool(
    n: int,
    seed: int | np.random.SeedSequence,
    *,
    mix: Mapping[str, float] | None = None,
    shape: tuple[int, int] = (256, 256),
    pad: int = 32,
    normalization: Mapping[str, float] | None = None,
    prerender: bool = True,
    workers: int = 1,
    progress: Any = None,
    border_fill: str = "reflect",
    hole_weight: float = 1.0,
    vacuum_weight: float = 1.0,
    graphene: Mapping[str, Any] | None = None,
) -> list[Example]:
    """Pre-generate a fixed, seeded pool of training images.

    Parameters
    ----------
    n : int
        Number of images.
    seed : int or numpy.random.SeedSequence
        The pool is a pure function of it (whatever ``workers`` is).
    mix : dict, optional
        Share of each simulator (default :data:`DEFAULT_MIX`); the counts are rounded and the
        images interleaved.
    shape, pad, normalization, border_fill
        See :func:`make_example`.
    prerender : bool
        Render each image's targets once (:meth:`Example.prerender`).
    hole_weight, vacuum_weight : float
        Heatmap loss weights at the holes of the column arrangement and in vacuum
        (:meth:`Example.prerender`).
    graphene : dict, optional
        How graphene images are drawn (see :func:`random_simulation`).
    workers : int
        Processes to simulate in (1: in this process).
    progress : callable, optional
        ``progress(done, total)``.

    Returns
    -------
    list of Example
    """
    mix = dict(DEFAULT_MIX if mix is None else mix)
    kinds = _allocate(n, mix)
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(int(seed))
    norm = dict(DEFAULT_NORMALIZATION if normalization is None else normalization)
    weights = {"hole_weight": hole_weight, "vacuum_weight": vacuum_weight}
    jobs = [
        (kind, child, tuple(shape), int(pad), norm, bool(prerender), border_fill, weights, graphene)
        for kind, child in zip(kinds, ss.spawn(n), strict=True)
    ]
    pool: list[Example] = []
    if workers <= 1:
        for job in jobs:
            pool.append(_pool_item(job))
            if progress is not None:
                progress(len(pool), n)
        return pool
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
        for item in ex.map(_pool_item, jobs, chunksize=8):
            pool.append(item)
            if progress is not None:
                progress(len(pool), n)
    return pool


def _pool_item(job: tuple) -> Example:
    kind, child, shape, pad, norm, prerender, fill, weights, graphene = job
    ex = make_example(
        kind,
        np.random.default_rng(child),
        shape=shape,
        pad=pad,
        normalization=norm,
        border_fill=fill,
        graphene=graphene,
    )
    return ex.prerender(**weights) if prerender else ex


def _allocate(n: int, mix: Mapping[str, float]) -> list[str]:
    names = [k for k, v in mix.items() if v > 0]
    weights = np.array([mix[k] for k in names], dtype=np.float64)
    weights /= weights.sum()
    counts = np.floor(weights * n).astype(int)
    for j in np.argsort(-(weights * n - counts))[: n - counts.sum()]:
        counts[j] += 1
    # interleave deterministically, so any prefix of the pool has the same mix
    order = np.argsort(
        np.concatenate([(np.arange(c) + 0.5) / max(c, 1) for c in counts]), kind="stable"
    )
    labels = np.concatenate([[k] * c for k, c in zip(names, counts, strict=True)])
    return [str(s) for s in labels[order]]


def sample_batch(
    pool: Sequence[Example],
    rng: np.random.Generator,
    batch: int,
    crop: int,
    n_classes: int = len(CLASSES),
) -> dict[str, NDArray[np.float32]]:
    """Draw a batch of random crops with random flips and 90° rotations.

    Parameters
    ----------
    pool : sequence of Example
        Training images.
    rng : numpy.random.Generator
        Source of the choices.
    batch : int
        Crops per batch.
    crop : int
        Crop side (px).
    n_classes : int
        Heatmap channels.

    Returns
    -------
    dict
        ``image`` (B, 1, c, c), ``heat`` (B, C, c, c), ``log_size`` (B, 1, c, c),
        ``size_mask`` (B, 1, c, c), ``weight`` (B, 1, c, c), all float32.
    """
    out = {
        "image": np.zeros((batch, 1, crop, crop), np.float32),
        "heat": np.zeros((batch, n_classes, crop, crop), np.float32),
        "log_size": np.zeros((batch, 1, crop, crop), np.float32),
        "size_mask": np.zeros((batch, 1, crop, crop), np.float32),
        "weight": np.zeros((batch, 1, crop, crop), np.float32),
    }
    for b in range(batch):
        index, oy, ox, k, flip = _crop_draw(rng, len(pool), lambda i: pool[i].image.shape, crop)
        ex = pool[index]
        img = ex.image[oy : oy + crop, ox : ox + crop]
        if ex.targets is not None:
            win = (slice(oy, oy + crop), slice(ox, ox + crop))
            heat = ex.targets["heat"][(slice(None), *win)].astype(np.float32)
            log_size = ex.targets["log_size"][win].astype(np.float32)
            weight = ex.targets["weight"][win].astype(np.float32)
            mask = (heat.max(axis=0) > 0.5).astype(np.float32)
        else:
            heat, log_size, mask, weight = render_targets(
                img.shape, ex.atoms, n_classes, offset=(oy, ox)
            )
        stack = np.concatenate([img[None], heat, log_size[None], mask[None], weight[None]])
        stack = np.rot90(stack, k, axes=(1, 2))
        if flip:
            stack = stack[:, :, ::-1]
        ch, cw = stack.shape[1:]
        out["image"][b, 0, :ch, :cw] = stack[0]
        out["heat"][b, :, :ch, :cw] = stack[1 : 1 + n_classes]
        out["log_size"][b, 0, :ch, :cw] = stack[1 + n_classes]
        out["size_mask"][b, 0, :ch, :cw] = stack[2 + n_classes]
        out["weight"][b, 0, :ch, :cw] = stack[3 + n_classes]
    return out


def _crop_draw(
    rng: np.random.Generator, n: int, shape_of: Any, crop: int
) -> tuple[int, int, int, int, bool]:
    """Draw one crop's choices: image index, top-left offset, 90° rotations, flip.

    The one place that fixes the order of the random calls, so :func:`sample_batch` and
    :meth:`DevicePool.sample` draw the same batches from the same ``rng``.
    """
    index = int(rng.integers(n))
    h, w = shape_of(index)
    oy = int(rng.integers(0, max(h - crop, 0) + 1))
    ox = int(rng.integers(0, max(w - crop, 0) + 1))
    return index, oy, ox, int(rng.integers(4)), bool(rng.random() < 0.5)


class DevicePool:
    """A training pool held as tensors on one device, cropped there (training on a GPU).

    :func:`sample_batch` crops on the CPU in numpy, at about 5 ms per 16 crops: nothing next to
    a CPU training step, a bottleneck next to a GPU's.  This class stacks the pool's images and
    pre-rendered targets (all of one shape) into tensors on ``device`` and draws the same
    batches, from the same random numbers in the same order, with one gather per batch.

    Parameters
    ----------
    pool : sequence of Example
        Training images of one shape, their targets pre-rendered (:meth:`Example.prerender`).
    device : str or torch.device
        Where the tensors live ("cuda", or "cpu" for tests).
    n_classes : int
        Heatmap channels.

    Raises
    ------
    ValueError
        An empty pool, images of several shapes, or an image without pre-rendered targets.
    """

    def __init__(self, pool: Sequence[Example], device: Any, n_classes: int = len(CLASSES)):
        import torch

        if not pool:
            raise ValueError("the training pool is empty")
        shapes = {ex.image.shape for ex in pool}
        if len(shapes) != 1:
            raise ValueError(f"a device pool needs images of one shape, got {sorted(shapes)}")
        if any(ex.targets is None for ex in pool):
            raise ValueError("a device pool needs pre-rendered targets (Example.prerender)")
        self.n_classes = int(n_classes)
        self.shape: tuple[int, int] = next(iter(shapes))
        self.device = torch.device(device)

        def stacked(get: Any) -> Any:
            # one image at a time onto the device: no second host copy of the whole pool
            first = torch.from_numpy(np.ascontiguousarray(get(pool[0])))
            out = torch.empty((len(pool), *first.shape), dtype=first.dtype, device=self.device)
            for i, ex in enumerate(pool):
                out[i] = torch.from_numpy(np.ascontiguousarray(get(ex)))
            return out

        # the stored dtypes (float16 targets, uint8 weights) keep the device memory at 11 B/px
        self.image = stacked(lambda ex: ex.image)
        self.heat = stacked(lambda ex: ex.targets["heat"][:n_classes])
        self.log_size = stacked(lambda ex: ex.targets["log_size"])
        self.weight = stacked(lambda ex: ex.targets["weight"])

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def sample(self, rng: np.random.Generator, batch: int, crop: int) -> dict[str, Any]:
        """Draw a batch as :func:`sample_batch` draws it from the same ``rng`` state.

        Parameters
        ----------
        rng : numpy.random.Generator
            Source of the choices (the same calls, in the same order, as
            :func:`sample_batch`).
        batch, crop : int
            Crops per batch and crop side (px, at most the images' side).

        Returns
        -------
        dict
            ``image``, ``heat``, ``log_size``, ``size_mask``, ``weight``: float32 tensors on
            the device, shaped as :func:`sample_batch`'s arrays.
        """
        import torch

        h, w = self.shape
        if crop > min(h, w):
            raise ValueError(f"crop {crop} exceeds the pool's images ({h}x{w})")
        draws = [_crop_draw(rng, len(self), lambda _: self.shape, crop) for _ in range(batch)]
        table = torch.tensor([d[:3] for d in draws], dtype=torch.long).to(self.device)
        span = torch.arange(crop, device=self.device)
        n = table[:, 0, None, None]
        rows = (table[:, 1, None] + span)[:, :, None]
        cols = (table[:, 2, None] + span)[:, None, :]
        classes = torch.arange(self.n_classes, device=self.device)[:, None, None]
        heat = self.heat[n[:, None], classes, rows[:, None], cols[:, None]]
        parts = [
            self.image[n, rows, cols][:, None].float(),
            heat.float(),
            self.log_size[n, rows, cols][:, None].float(),
            (heat.amax(dim=1, keepdim=True) > 0.5).float(),
            self.weight[n, rows, cols][:, None].float(),
        ]
        stack = torch.cat(parts, dim=1)
        # the same rotation and flip per crop as sample_batch, one group of crops at a time
        for k in range(4):
            for flip in (False, True):
                chosen = [b for b, d in enumerate(draws) if d[3] == k and d[4] == flip]
                if not chosen:
                    continue
                sel = torch.tensor(chosen, device=self.device)
                moved = torch.rot90(stack[sel], k, dims=(2, 3))
                stack[sel] = moved.flip(3) if flip else moved
        c = self.n_classes
        return {
            "image": stack[:, :1],
            "heat": stack[:, 1 : 1 + c],
            "log_size": stack[:, 1 + c : 2 + c],
            "size_mask": stack[:, 2 + c : 3 + c],
            "weight": stack[:, 3 + c : 4 + c],
        }


# --------------------------------------------------------------------------------------------
# held-out validation images
# --------------------------------------------------------------------------------------------
#: Sampling of the graphene validation images, Å/px (the simulator's default).
VALIDATION_SAMPLING = 0.12

#: Validation cases: name -> description (the parameters are in :func:`validation_image`).
VALIDATION_CASES: dict[str, str] = {
    "perovskite_dose200": "perovskite_haadf, spacing 14-28 px, dose 200, dislocation / vacancies",
    "perovskite_dose20": "perovskite_haadf, spacing 14-28 px, dose 20",
    "perovskite_dose8": "perovskite_haadf, spacing 14-28 px, dose 8-10 counts per A peak",
    "haadf_dose20+": "lattice_image bright, 7 lattice types, default bases, sigma 0.1-0.2 "
    "spacing, dose 20-2000",
    "abf_dose20+": "lattice_image dark (ABF-like), as haadf_dose20+",
    "lattice_dose8": "lattice_image bright or dark, as haadf_dose20+ at dose 8-10",
    "overlapping": "lattice_image square / rectangular / hexagonal / honeycomb / oblique (all "
    "columns alike), sigma 0.3-0.4 spacing (strongly overlapping), dose 200-2000",
    "graphene_bright_1e4": "graphene_hrtem 0.12 Å/px, 1e4 e/Å², seed 003 CTF ranges with "
    "astigmatism < 10 Å, bright atoms (contrast > 0.5)",
    "graphene_dark_1e4": "graphene_hrtem, as above with dark atoms (contrast < -0.5)",
}


_ALIKE = ("square", "rectangular", "hexagonal", "honeycomb", "oblique")


def case_simulator(case: str) -> str:
    """Name the simulator (a key of :data:`DEFAULT_MIX`) a validation case draws from.

    Examples
    --------
    >>> case_simulator("graphene_dark_1e4"), case_simulator("abf_dose20+")
    ('graphene', 'lattice')
    """
    if case not in VALIDATION_CASES:
        raise ValueError(f"unknown validation case {case!r}")
    for kind in ("perovskite", "graphene"):
        if case.startswith(kind):
            return kind
    return "lattice"


def validation_sample(
    case: str, seed: int, shape: tuple[int, int] = (256, 256), border: int = 16
) -> tuple[NDArray[np.float32], NDArray[np.float64], NDArray[np.float64]]:
    """Simulate a validation image with its truth and the columns just outside it.

    The image is cut from a simulation ``border`` px larger on every side, so the columns whose
    centres lie just outside the image are known: half of such a column is visible at the edge,
    and a detection of it is neither right nor wrong (a "don't care" column).

    Parameters
    ----------
    case : str
        A key of :data:`VALIDATION_CASES`.
    seed : int
        Seed of the parameter draw.
    shape : tuple of int
        Image size.
    border : int
        Extra simulated margin (px).

    Returns
    -------
    image : ndarray of float32, shape ``shape``
        Oriented (negated when the atoms are dark), as detection told the contrast sees it.
    truth : ndarray, shape (n, 2)
        Columns with centres inside the image (y, x).
    dont_care : ndarray, shape (m, 2)
        Columns with centres outside the image, within ``border`` px.
    """
    h, w = int(shape[0]), int(shape[1])
    sim = validation_image(case, seed, (h + 2 * border, w + 2 * border))
    pos = sim.atoms[["y", "x"]].to_numpy(np.float64) - border
    inside = (
        (pos[:, 0] >= -0.5) & (pos[:, 0] < h - 0.5) & (pos[:, 1] >= -0.5) & (pos[:, 1] < w - 0.5)
    )
    image = sim.image[border : border + h, border : border + w] * np.float32(sim_polarity(sim))
    return np.ascontiguousarray(image, dtype=np.float32), pos[inside], pos[~inside]


def validation_image(case: str, seed: int, shape: tuple[int, int] = (256, 256)) -> Any:
    """Simulate one held-out validation image of a named case (see :data:`VALIDATION_CASES`).

    Parameters
    ----------
    case : str
        A key of :data:`VALIDATION_CASES`.
    seed : int
        Seed of the parameter draw (use seeds not used in training).
    shape : tuple of int
        Image size.

    Returns
    -------
    napari_atomnet.synth.AtomImage
    """
    from .. import synth
    from ..synth.lattice import LATTICE_TYPES

    kind = case_simulator(case)  # raises for an unknown case
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xA70]))
    if kind == "perovskite":
        dose = {"perovskite_dose200": 200.0, "perovskite_dose20": 20.0}.get(
            case, float(rng.uniform(8.0, 10.0))
        )
        return synth.perovskite_haadf(
            shape,
            float(rng.uniform(14.0, 28.0)),
            rotation_deg=float(rng.uniform(0, 360)),
            dose=dose,
            dislocation=bool(rng.random() < 0.5),
            vacancy_fraction=0.02,
            background_gradient=0.1,
            seed=int(rng.integers(2**31 - 1)),
        )
    if kind == "lattice":
        overlap = case == "overlapping"
        # overlapping: lattices whose columns are all alike (a weak column under the tails of
        # strong neighbours half a spacing away is not "overlapping", it is invisible)
        lattice = str(rng.choice(_ALIKE if overlap else LATTICE_TYPES))
        if case == "lattice_dose8":
            dose = float(rng.uniform(8.0, 10.0))
        elif overlap:
            dose = _loguniform(rng, 200.0, 2000.0)
        else:
            dose = _loguniform(rng, 20.0, 2000.0)
        polarity = {"haadf_dose20+": "bright", "abf_dose20+": "dark"}.get(
            case, "bright" if rng.random() < 0.5 else "dark"
        )
        return synth.lattice_image(
            shape,
            lattice=lattice,
            spacing=float(rng.uniform(8.0, 30.0)),
            aspect=float(rng.uniform(0.7, 1.4)),
            angle_deg=float(rng.uniform(70.0, 110.0)),
            rotation_deg=float(rng.uniform(0.0, 360.0)),
            sigma_frac=float(rng.uniform(0.3, 0.4) if overlap else rng.uniform(0.1, 0.2)),
            dose=dose,
            polarity=polarity,
            background=float(rng.uniform(0.1, 0.4)),
            vacancy_fraction=0.02,
            position_jitter=0.01,
            amplitude_spread=0.05,
            seed=int(rng.integers(2**31 - 1)),
        )
    want = 1 if "bright" in case else -1  # a graphene case
    for _ in range(200):
        sim = synth.graphene_hrtem(
            shape,
            pixel_size_angstrom=VALIDATION_SAMPLING,
            dose=1e4,
            n_holes=int(rng.integers(0, 2)),
            **_good_ctf(rng),
            seed=int(rng.integers(2**31 - 1)),
        )
        if want * sim.extras["contrast"] > 0.5 and len(sim.atoms) > 20:
            return sim
    raise RuntimeError("no graphene image of the requested contrast found")
