"""Training data for the particle segmenter, simulated with :mod:`napari_atomnet.synth` only.

Two simulators, both contrasts:

- ``core_shell``: :func:`~napari_atomnet.synth.core_shell_particles` (bright-field TEM, dark metal
  cores in lighter silica shells; the target is the *core*, as in seed 001); 20 % of these are
  drawn without a shell (bare dark particles in bright field);
- ``haadf``: :func:`~napari_atomnet.synth.haadf_particles` (bright particles on a textured
  support).

Every simulator parameter that sets the look of an image is drawn at random (sizes, shell
thickness, ellipticity, edge roughness, coverage, share of touching particles, contrast, support
texture, illumination gradient, blur, detector MTF, dose), which is the "scale" and "intensity"
augmentation done exactly (the truth is re-rendered, never interpolated).  On top of that:

- intensity: gamma 0.75-1.33 on 30 % of the images, an extra linear illumination ramp of up to
  ±15 % on 30 %;
- geometry, per crop (:func:`sample_batch`): random crop position (shift), a random zoom of
  0.8-1.25 on 30 % of the crops (image bilinear, labels nearest), flips and 90° rotations.

Images are normalised as inference normalises them (:func:`napari_atomnet.models.segmenter.
normalize_image`: the whole image's robust mean and standard deviation), then reflection-padded
(mirrored labels), as tiles at an image border are padded at inference.

Targets per pixel: ``foreground`` (inside a particle) and ``boundary`` (inside a particle and
within :data:`BOUNDARY_WIDTH` px of a pixel that is not in the same particle: the inner rim, so two
touching particles are separated by a band of twice that width).

Seeds: training images use seeds ``TRAIN_SEED_BASE + 100_000 * run_seed + i`` (below 500 000);
validation images :data:`VAL_SEED` + i; benchmarks use seeds >= 900 000, never seen in training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

__all__ = [
    "BOUNDARY_WIDTH",
    "KINDS",
    "VALIDATION_CASES",
    "VAL_SEED",
    "SegExample",
    "boundary_target",
    "contact_target",
    "make_example",
    "make_pool",
    "random_simulation",
    "sample_batch",
    "validation_image",
]

#: Simulators of the training set.
KINDS: tuple[str, ...] = ("core_shell", "haadf")
#: Width (px) of the boundary rim target.
BOUNDARY_WIDTH = 2.0
#: Weight of the contact pixels (rim pixels next to another particle) in the boundary loss.
CONTACT_WEIGHT = 5.0
#: Seeds of the validation images (threshold choice during training).
VAL_SEED = 500_000
#: Training images use seeds TRAIN_SEED_BASE + 100_000 * run seed + index.
TRAIN_SEED_BASE = 10_000

#: Held-out evaluation cases: simulator and fixed arguments (defaults plus harder variants).
VALIDATION_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "core_shell": ("core_shell", {}),
    "core_shell_low_dose": ("core_shell", {"dose": 40.0, "touching_fraction": 0.5}),
    "haadf": ("haadf", {}),
    "haadf_low_dose": ("haadf", {"dose": 25.0, "touching_fraction": 0.5}),
}


@dataclass
class SegExample:
    """One normalised, padded training image and its instance labels.

    Attributes
    ----------
    image : ndarray of float32, shape (H + 2 pad, W + 2 pad)
        Normalised image, reflection-padded.
    labels : ndarray of int32
        Instance labels, mirrored like the image.
    source : str
        Simulator kind.
    meta : dict
        Seed and drawn parameters.
    """

    image: NDArray[np.float32]
    labels: NDArray[np.int32]
    source: str
    meta: dict[str, Any] = field(default_factory=dict)


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def random_simulation(
    kind: str, rng: np.random.Generator, shape: tuple[int, int], seed: int
) -> Any:
    """Simulate one particle image at a random point of the parameter space.

    Parameters
    ----------
    kind : {"core_shell", "haadf"}
        Simulator.
    rng : numpy.random.Generator
        Draws the parameters.
    shape : tuple of int
        Image size.
    seed : int
        Seed of the simulator call (its noise and particle placement).

    Returns
    -------
    ParticleImage
    """
    from .. import synth

    mtf = (0.3, 0.6, 2.5) if rng.random() < 0.3 else None
    if kind == "core_shell":
        r_lo = rng.uniform(5.0, 16.0)
        r_hi = min(40.0, r_lo * rng.uniform(1.3, 3.0))
        if rng.random() < 0.2:
            shell = (0.0, 0.0)
        else:
            s_lo = rng.uniform(0.1, 0.3)
            shell = (s_lo, min(0.6, s_lo + rng.uniform(0.05, 0.25)))
        mu_core = rng.uniform(0.025, 0.08)
        return synth.core_shell_particles(
            shape,
            radius_range=(r_lo, r_hi),
            shell_range=shell,
            touching_fraction=rng.uniform(0.1, 0.6),
            ellipticity=rng.uniform(0.0, 0.3),
            roughness=rng.uniform(0.0, 0.06),
            coverage=rng.uniform(0.08, 0.4),
            mu_core=mu_core,
            mu_shell=mu_core * rng.uniform(0.15, 0.5),
            support_density=rng.uniform(0.02, 0.15),
            support_texture=rng.uniform(0.1, 0.45),
            illumination_gradient=rng.uniform(0.0, 0.12),
            blur_sigma=rng.uniform(0.5, 1.8),
            mtf=mtf,
            dose=_loguniform(rng, 25.0, 2000.0),
            seed=seed,
        )
    if kind == "haadf":
        r_lo = rng.uniform(3.5, 10.0)
        r_hi = min(30.0, r_lo * rng.uniform(1.3, 3.5))
        return synth.haadf_particles(
            shape,
            radius_range=(r_lo, r_hi),
            touching_fraction=rng.uniform(0.1, 0.6),
            ellipticity=rng.uniform(0.0, 0.3),
            roughness=rng.uniform(0.0, 0.06),
            coverage=rng.uniform(0.05, 0.35),
            intensity_per_px=rng.uniform(0.015, 0.05),
            support_level=rng.uniform(0.05, 0.25),
            support_texture=rng.uniform(0.1, 0.4),
            background_gradient=rng.uniform(0.0, 0.2),
            blur_sigma=rng.uniform(0.5, 1.8),
            mtf=mtf,
            dose=_loguniform(rng, 15.0, 1000.0),
            seed=seed,
        )
    raise ValueError(f"unknown simulator {kind!r}; choose from {KINDS}")


def boundary_target(labels: NDArray, width: float = BOUNDARY_WIDTH) -> NDArray[np.bool_]:
    """Inner rim of every particle: pixels within ``width`` px of a pixel of another label.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
        Instance labels (0 background).
    width : float
        Rim width (px, Euclidean: the footprint is a disc of this radius).

    Returns
    -------
    ndarray of bool
    """
    r = int(np.floor(width))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disc = yy**2 + xx**2 <= width**2
    lab = np.asarray(labels)
    hi = ndimage.maximum_filter(lab, footprint=disc, mode="nearest")
    lo = ndimage.minimum_filter(lab, footprint=disc, mode="nearest")
    return (lab > 0) & ((hi != lab) | (lo != lab))


def contact_target(labels: NDArray, width: float = BOUNDARY_WIDTH) -> NDArray[np.bool_]:
    """Pixels of a particle within ``width`` px of a pixel of *another particle* (not background).

    These are the rim pixels that separate touching particles; the boundary loss weights them
    (:data:`CONTACT_WEIGHT`), because missing a few of them merges two particles, while missing
    a few rim pixels against the background costs nothing.
    """
    r = int(np.floor(width))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disc = yy**2 + xx**2 <= width**2
    lab = np.asarray(labels)
    big = np.iinfo(np.int32).max
    hi = ndimage.maximum_filter(lab, footprint=disc, mode="nearest")
    lo = ndimage.minimum_filter(np.where(lab > 0, lab, big), footprint=disc, mode="nearest")
    return (lab > 0) & ((hi > lab) | (lo < lab))


def _ramp(rng: np.random.Generator, shape: tuple[int, int]) -> NDArray[np.float64]:
    ang = rng.uniform(0.0, 2.0 * np.pi)
    yy = np.linspace(-1.0, 1.0, shape[0])[:, None]
    xx = np.linspace(-1.0, 1.0, shape[1])[None, :]
    return np.sin(ang) * yy + np.cos(ang) * xx


def make_example(
    kind: str,
    seed: int,
    *,
    shape: tuple[int, int] = (320, 320),
    pad: int = 32,
    augment: bool = True,
) -> SegExample:
    """Simulate, augment (intensity), normalise and pad one training image.

    Parameters
    ----------
    kind : {"core_shell", "haadf"}
        Simulator.
    seed : int
        Seeds both the parameter draw and the simulation.
    shape : tuple of int
        Simulated image size.
    pad : int
        Reflection padding (px).
    augment : bool
        Apply the intensity augmentations (gamma, extra illumination ramp).

    Returns
    -------
    SegExample
    """
    from ..models.segmenter import normalize_image

    rng = np.random.default_rng([seed, 7])
    sim = random_simulation(kind, rng, shape, seed)
    img = np.asarray(sim.image, dtype=np.float64)
    meta: dict[str, Any] = {"seed": int(seed), "gamma": 1.0, "ramp": 0.0}
    if augment:
        if rng.random() < 0.3:
            meta["gamma"] = gamma = _loguniform(rng, 0.75, 1.33)
            lo, hi = float(img.min()), float(img.max())
            img = ((img - lo) / max(hi - lo, 1e-12)) ** gamma
        if rng.random() < 0.3:
            meta["ramp"] = amp = rng.uniform(0.0, 0.15)
            img = img * (1.0 + amp * _ramp(rng, img.shape))
    norm = normalize_image(img)
    labels = sim.labels.astype(np.int32)
    if pad:
        norm = np.pad(norm, pad, mode="symmetric")
        labels = np.pad(labels, pad, mode="symmetric")
    return SegExample(np.ascontiguousarray(norm, np.float32), labels, kind, meta)


def make_pool(
    n: int,
    run_seed: int = 0,
    *,
    shape: tuple[int, int] = (320, 320),
    pad: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> list[SegExample]:
    """Simulate a fixed pool of training images, alternating the two simulators.

    Parameters
    ----------
    n : int
        Number of images (half of each kind).
    run_seed : int
        Seed of the training run; image ``i`` has seed
        ``TRAIN_SEED_BASE + 100_000 * run_seed + i``.
    shape, pad
        See :func:`make_example`.
    progress : callable, optional
        ``progress(done, total)``.

    Returns
    -------
    list of SegExample
    """
    base = TRAIN_SEED_BASE + 100_000 * int(run_seed)
    if base + n >= VAL_SEED:
        raise ValueError("training seeds would reach the validation seeds; lower n or run_seed")
    pool = []
    for i in range(n):
        pool.append(make_example(KINDS[i % len(KINDS)], base + i, shape=shape, pad=pad))
        if progress is not None:
            progress(i + 1, n)
    return pool


def sample_batch(
    pool: Sequence[SegExample],
    rng: np.random.Generator,
    batch: int,
    crop: int,
    *,
    zoom_p: float = 0.3,
    zoom_range: tuple[float, float] = (0.8, 1.25),
) -> dict[str, NDArray[np.float32]]:
    """Draw a batch of random crops with zoom, flips and 90° rotations, and their targets.

    Parameters
    ----------
    pool : sequence of SegExample
        Training images.
    rng : numpy.random.Generator
        Source of every choice.
    batch : int
        Crops per batch.
    crop : int
        Crop side (px).
    zoom_p : float
        Share of crops that are zoomed.
    zoom_range : tuple of float
        Zoom factors (log-uniform).

    Returns
    -------
    dict
        ``image`` (B, 1, crop, crop), ``target`` (B, 2, crop, crop): foreground, boundary, and
        ``weight`` (B, 1, crop, crop): per-pixel weight of the boundary loss (1, or
        :data:`CONTACT_WEIGHT` on the contact pixels of :func:`contact_target`).
    """
    images = np.empty((batch, 1, crop, crop), np.float32)
    targets = np.empty((batch, 2, crop, crop), np.float32)
    weights = np.empty((batch, 1, crop, crop), np.float32)
    for b in range(batch):
        ex = pool[int(rng.integers(len(pool)))]
        zoom = 1.0
        if rng.random() < zoom_p:
            zoom = _loguniform(rng, *zoom_range)
        side = min(int(np.ceil(crop / zoom)) + 1, *ex.image.shape)
        y0 = int(rng.integers(0, ex.image.shape[0] - side + 1))
        x0 = int(rng.integers(0, ex.image.shape[1] - side + 1))
        img = ex.image[y0 : y0 + side, x0 : x0 + side]
        lab = ex.labels[y0 : y0 + side, x0 : x0 + side]
        if zoom != 1.0 or side != crop:
            f = crop / side if zoom == 1.0 else zoom
            coords = (np.arange(crop) + 0.5) / f - 0.5
            grid = np.meshgrid(coords, coords, indexing="ij")
            img = ndimage.map_coordinates(img, grid, order=1, mode="mirror")
            lab = ndimage.map_coordinates(lab, grid, order=0, mode="mirror")
        k = int(rng.integers(4))
        img, lab = np.rot90(img, k), np.rot90(lab, k)
        if rng.random() < 0.5:
            img, lab = img[:, ::-1], lab[:, ::-1]
        images[b, 0] = img
        targets[b, 0] = lab > 0
        targets[b, 1] = boundary_target(lab)
        weights[b, 0] = np.where(contact_target(lab), CONTACT_WEIGHT, 1.0)
    return {"image": images, "target": targets, "weight": weights}


def validation_image(case: str, seed: int, shape: tuple[int, int] = (512, 512)) -> Any:
    """Simulate a held-out evaluation image of one of :data:`VALIDATION_CASES`.

    Parameters
    ----------
    case : str
        A key of :data:`VALIDATION_CASES`.
    seed : int
        Simulator seed (validation: :data:`VAL_SEED` + i; benchmarks: >= 900 000).
    shape : tuple of int
        Image size.

    Returns
    -------
    ParticleImage
    """
    from .. import synth

    kind, kwargs = VALIDATION_CASES[case]
    fn = synth.core_shell_particles if kind == "core_shell" else synth.haadf_particles
    return fn(shape, seed=seed, **kwargs)
