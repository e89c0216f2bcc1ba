"""Image simulators with exact ground truth.

Every simulator is seeded and reproducible: the same arguments give the same image, bit for bit.
Positions are napari (row, col) = (y, x) pixels with the pixel-centre convention.

Simulators
----------
perovskite_haadf
    ABO3 perovskite in HAADF-STEM: bright A and weak B columns, polarization field with a domain
    wall displacing the B sites, optional strain field, vacancies, an edge dislocation, lattice
    rotation, background gradient, Poisson dose, scan-line jitter and drift.
lattice_image
    The general parameter space for training and benchmarks: any 2D Bravais lattice with a
    basis, spacing 6-40 px, column width, dose, bright or dark contrast (HAADF / ABF-like),
    interfaces between two lattices, surfaces (vacuum regions), vacancies.
dumbbell_image
    ⟨110⟩ dumbbells (Si, GaAs) at the resolution limit, a lattice_image with a two-column basis.
graphene_hrtem
    Graphene-like HRTEM after seed 003: Poisson-disc points, Voronoi vertices, Lloyd relaxation,
    holes; contrast from a CTF with random defocus / Cs / astigmatism / focal spread, the MTF of
    seed 003 Eq. 5 and Poisson dose 10-1e4 e/Å², so atoms come out bright or dark.
core_shell_particles, haadf_particles
    Nanoparticle TEM images with instance masks (seed 001): dark cores in lighter shells, and bright
    particles on a support.
"""

from ._render import apply_mtf, mtf, poisson_counts, render_gaussians
from ._types import AtomImage, ParticleImage
from .hrtem import ctf, graphene_hrtem, graphene_structure
from .lattice import LATTICE_TYPES, dumbbell_image, lattice_image, random_lattice_params
from .particles import core_shell_particles, haadf_particles
from .perovskite import perovskite_haadf

__all__ = [
    "LATTICE_TYPES",
    "AtomImage",
    "ParticleImage",
    "apply_mtf",
    "core_shell_particles",
    "ctf",
    "dumbbell_image",
    "graphene_hrtem",
    "graphene_structure",
    "haadf_particles",
    "lattice_image",
    "mtf",
    "perovskite_haadf",
    "poisson_counts",
    "random_lattice_params",
    "render_gaussians",
]
