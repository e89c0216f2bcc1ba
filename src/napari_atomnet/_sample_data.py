"""napari sample-data contributions: each bundled simulated image with its ground truth."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._samples import SAMPLES, load_sample

LayerData = tuple[Any, dict[str, Any], str]


def _atoms_sample(name: str) -> list[LayerData]:
    sample = load_sample(name)
    scale = _scale(sample["pixel_size_nm"])
    truth = sample["truth"]
    classes = truth["class"].to_numpy() if "class" in truth else np.zeros(len(truth), int)
    size = max(2.0, 0.25 * _spacing(truth))
    return [
        (sample["image"], {"name": name, "scale": scale, "metadata": _meta(name)}, "image"),
        (
            truth[["y", "x"]].to_numpy(),
            {
                "name": f"Truth ({name})",
                "features": truth,
                "scale": scale,
                "size": size,
                "face_color": "transparent",
                "border_color": np.where(
                    classes[:, None] == 0, [[1, 0.3, 0.3, 1]], [[0.3, 0.8, 1, 1]]
                ),
                "border_width": 0.15,
                "visible": False,
            },
            "points",
        ),
    ]


def _particles_sample(name: str) -> list[LayerData]:
    sample = load_sample(name)
    scale = _scale(sample["pixel_size_nm"])
    return [
        (sample["image"], {"name": name, "scale": scale, "metadata": _meta(name)}, "image"),
        (
            sample["labels"],
            {
                "name": f"Truth ({name})",
                "features": sample["truth"],
                "scale": scale,
                "opacity": 0.4,
                "visible": False,
            },
            "labels",
        ),
    ]


def _scale(pixel_size_nm: float | None) -> tuple[float, float]:
    return (pixel_size_nm, pixel_size_nm) if pixel_size_nm else (1.0, 1.0)


def _meta(name: str) -> dict[str, Any]:
    return {"napari_atomnet": {"sample": name, "description": SAMPLES[name].description}}


def _spacing(truth) -> float:
    from scipy.spatial import cKDTree

    pts = truth[["y", "x"]].to_numpy()
    if len(pts) < 2:
        return 8.0
    d, _ = cKDTree(pts).query(pts, k=2)
    return float(np.median(d[:, 1]))


def perovskite_haadf_sample() -> list[LayerData]:
    """Return the simulated perovskite HAADF-STEM image with its true A and B columns."""
    return _atoms_sample("perovskite_haadf")


def graphene_hrtem_sample() -> list[LayerData]:
    """Return the simulated graphene-like HRTEM image (seed 003 recipe) with its true atoms."""
    return _atoms_sample("graphene_hrtem")


def interface_lattice_sample() -> list[LayerData]:
    """Return the simulated ABF-like interface of two lattices, with a surface, and its truth."""
    return _atoms_sample("interface_abf")


def core_shell_particles_sample() -> list[LayerData]:
    """Return the simulated core-shell nanoparticles (bright-field TEM) with the true mask."""
    return _particles_sample("core_shell_particles")


def haadf_particles_sample() -> list[LayerData]:
    """Return the simulated bright nanoparticles on a support (HAADF) with the true mask."""
    return _particles_sample("haadf_particles")
