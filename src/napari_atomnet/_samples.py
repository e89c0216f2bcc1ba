"""The bundled sample images: how each is made, and where its files are.

One table serves the regeneration script (``scripts/make_sample_data.py``), the napari sample-data
contributions, the ``atomnet demo`` command and the tests, so the three cannot drift apart.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import synth


@dataclass(frozen=True)
class SampleSpec:
    """A bundled sample: a simulator call with fixed arguments and seed."""

    name: str
    kind: str  # "atoms" or "particles"
    description: str
    make: Callable[[], Any]


SAMPLES: dict[str, SampleSpec] = {
    spec.name: spec
    for spec in [
        SampleSpec(
            "perovskite_haadf",
            "atoms",
            "ABO3 perovskite HAADF-STEM, 512², 24 px cells, polarization with a domain wall, "
            "vacancies, an edge dislocation, 7° rotation, scan jitter; 200 counts per A peak",
            lambda: synth.perovskite_haadf(
                (512, 512),
                spacing=24.0,
                rotation_deg=7.0,
                dose=200.0,
                polarization=0.06,
                domain_wall=True,
                vacancy_fraction=0.01,
                dislocation=True,
                background_gradient=0.3,
                scan_jitter=0.1,
                seed=3,
            ),
        ),
        SampleSpec(
            "graphene_hrtem",
            "atoms",
            "graphene-like HRTEM (seed 003 recipe), 384², 0.12 Å/px, defocus −60 Å (bright "
            "atoms), Cs −10 µm, 1e4 e/Å², with holes",
            lambda: synth.graphene_hrtem(
                (384, 384),
                pixel_size_angstrom=0.12,
                defocus=-60.0,
                cs_um=-10.0,
                astig_angstrom=5.0,
                dose=1e4,
                seed=5,
            ),
        ),
        SampleSpec(
            "interface_abf",
            "atoms",
            "ABF-like dark columns: a square lattice meeting a hexagonal one at an interface, "
            "with a vacuum surface; 384²",
            lambda: synth.lattice_image(
                (384, 384),
                lattice="square",
                spacing=14.0,
                rotation_deg=12.0,
                polarity="dark",
                dose=150.0,
                interface={
                    "lattice": "hexagonal",
                    "spacing": 12.0,
                    "rotation_deg": -5.0,
                    "point_frac": (0.55, 0.5),
                    "normal_deg": 90.0,
                },
                surface={
                    "kind": "wavy",
                    "point_frac": (0.5, 0.8),
                    "normal_deg": 0.0,
                    "amplitude_px": 10.0,
                    "wavelength_px": 150.0,
                },
                seed=11,
            ),
        ),
        SampleSpec(
            "core_shell_particles",
            "particles",
            "core-shell nanoparticles in bright-field TEM (seed 001), 512², some touching",
            lambda: synth.core_shell_particles((512, 512), seed=7),
        ),
        SampleSpec(
            "haadf_particles",
            "particles",
            "bright nanoparticles on an amorphous support (HAADF), 512²",
            lambda: synth.haadf_particles((512, 512), seed=8),
        ),
    ]
}


def sample_dir() -> Path:
    """Folder of the bundled sample files (inside the installed package)."""
    return Path(str(importlib.resources.files("napari_atomnet") / "sample_data"))


def sample_files(name: str) -> dict[str, Path]:
    """Paths of one sample's files: ``image``, ``truth`` (CSV) and, for particles, ``labels``."""
    spec = SAMPLES[name]
    folder = sample_dir()
    files = {"image": folder / f"{name}.tif"}
    if spec.kind == "atoms":
        files["truth"] = folder / f"{name}_atoms.csv"
    else:
        files["truth"] = folder / f"{name}_particles.csv"
        files["labels"] = folder / f"{name}_labels.tif"
    return files


def image_for_file(image: np.ndarray) -> np.ndarray:
    """Convert a simulated image to the dtype it is stored in (counts as uint16 where they fit)."""
    if np.all(image >= 0) and np.all(image <= 65535) and np.allclose(image, np.round(image)):
        return np.round(image).astype(np.uint16)
    return image.astype(np.float32)


def load_sample(name: str) -> dict[str, Any]:
    """Read a bundled sample: ``image``, ``truth`` table, ``labels`` (particles) and metadata.

    Parameters
    ----------
    name : str
        A key of :data:`SAMPLES`.

    Returns
    -------
    dict
        ``{"image", "truth", "labels" (or None), "pixel_size_nm", "spec"}``.
    """
    from .io import read_image

    files = sample_files(name)
    img = read_image(files["image"])
    labels = read_image(files["labels"]).data if "labels" in files else None
    return {
        "image": img.data,
        "truth": pd.read_csv(files["truth"]),
        "labels": labels,
        "pixel_size_nm": img.pixel_size_nm,
        "spec": SAMPLES[name],
    }
