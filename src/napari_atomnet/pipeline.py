"""Whole analyses, shared by the CLI, the batch tools and the dock widgets.

Nothing here imports napari or Qt: the widgets call these functions from a worker thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from ._provenance import make_provenance
from .core.detect import (
    POLARITIES,
    atom_polarity,
    detect_peaks_classical,
    estimate_spacing,
    resolve_polarity,
)
from .core.image import as_analysis_image

ProgressCallback = Callable[[int, int], None]
CancelledCallback = Callable[[], bool]

#: ``detector=`` value that selects the classical baseline instead of a model.
CLASSICAL = "classical"


@dataclass
class AtomsResult:
    """Atoms found in an image.

    Attributes
    ----------
    atoms : pandas.DataFrame
        One row per atom: ``y, x`` (px, row/col, pixel-centre convention), ``score``, ``class``,
        ``class_name``, the box ``y0, x0, y1, x1`` and, after refinement, the fitted Gaussian
        (``amplitude, sigma_y, sigma_x, theta, background``), ``fit_ok``, ``fit_status`` and the
        detected position ``y_init, x_init``.
    provenance : dict
        What made the table (see :func:`napari_atomnet._provenance.make_provenance`).
    spacing : float
        Median nearest-neighbour distance of the atoms found (px).
    """

    atoms: pd.DataFrame
    provenance: dict[str, Any] = field(default_factory=dict)
    spacing: float = float("nan")


def refines_by_default(detector: Any) -> bool:
    """Say whether :func:`find_atoms` refines a detector's peaks when not told.

    Parameters
    ----------
    detector : str, ModelCard or None
        As in :func:`find_atoms`.

    Returns
    -------
    bool
        The model card's :attr:`~napari_atomnet.models.registry.ModelCard.refine_default`;
        True for the classical detector.
    """
    resolved = resolve_detector(detector)
    return resolved == CLASSICAL or resolved.refine_default


def card_defaults(detector: Any, refine: bool | None, polarity: str) -> tuple[Any, bool, str]:
    """Resolve a detector once and fill in what its card decides for a run of many images.

    Parameters
    ----------
    detector : str, ModelCard or None
        As in :func:`find_atoms`.
    refine : bool, optional
        None: the card's :attr:`~napari_atomnet.models.registry.ModelCard.refine_default`.
    polarity : {"auto", "bright", "dark"}
        "auto": the contrast the card knows, if any
        (:func:`~napari_atomnet.models.detector.model_polarity`).

    Returns
    -------
    detector : ModelCard or str
        :func:`resolve_detector`'s.
    refine : bool
    polarity : str
    """
    resolved = resolve_detector(detector)
    if refine is None:
        refine = refines_by_default(resolved)
    if resolved != CLASSICAL:
        from .models.detector import model_polarity

        polarity = model_polarity(resolved, polarity)
    return resolved, refine, polarity


def resolve_detector(detector: Any) -> Any:
    """Load a detection model's card once (not once per frame); pass the classical through.

    Parameters
    ----------
    detector : str, ModelCard or None
        As in :func:`find_atoms`.

    Returns
    -------
    ModelCard or str
        The card (:func:`~napari_atomnet.models.detector.detection_card`), or
        :data:`CLASSICAL`.
    """
    if isinstance(detector, str) and detector == CLASSICAL:
        return CLASSICAL
    from .models.detector import detection_card

    return detection_card(detector)


def find_atoms(
    image: ArrayLike,
    *,
    detector: Any = None,
    threshold: float | None = None,
    refine: bool | None = None,
    polarity: str = "auto",
    spacing: float | None = None,
    gaussian: str = "auto",
    fit_check: bool = True,
    source: str | None = None,
    device: str | None = None,
    progress: ProgressCallback | None = None,
    cancelled: CancelledCallback | None = None,
    pixel_size_nm: float | None = None,
) -> AtomsResult:
    """Detect atom columns and refine each by a 2D Gaussian fit.

    Parameters
    ----------
    image : array_like, shape (H, W)
        Grey image; validated by :func:`napari_atomnet.core.image.as_analysis_image`.
    detector : str, ModelCard or None
        A detection model (registry name, ``.onnx`` path or card); None for the built-in model;
        ``"classical"`` for the Gaussian-filter + local-maximum baseline.
    threshold : float, optional
        Detection confidence threshold (the model card's default when omitted).
    refine : bool, optional
        Refine every peak by a 2D Gaussian fit.  By default the model card decides
        (:attr:`~napari_atomnet.models.registry.ModelCard.refine_default`: off for a model of
        HRTEM phase-contrast images, where the fits would be judged not Gaussian and the
        detected positions kept anyway); the classical detector refines.
    polarity : {"auto", "bright", "dark"}
        Atom contrast: bright (HAADF), dark (ABF, bright-field) or guessed from the image
        (:func:`napari_atomnet.core.detect.resolve_polarity`: right for STEM, not reliable for
        HRTEM, where the caller should say).  The contrast is resolved once and used by both
        the detection and the refinement; the provenance records it (``params["polarity"]``;
        what was asked for in ``params["polarity_requested"]``).
    spacing : float, optional
        Lattice spacing (px) when the caller knows it (e.g. estimated once for a whole movie);
        estimated from the image otherwise.  Passing the value the estimate gives changes
        nothing.
    gaussian : {"auto", "isotropic", "elliptical"}
        Gaussian model of the refinement (see :func:`refine_atoms`); "auto" decides from the
        image.  Recorded as ``params["gaussian_model"]``.
    fit_check : bool
        After refinement, drop the detections that neither the model is sure of nor the fit
        confirms (the model card's ``fit_check`` rule, see
        :func:`napari_atomnet.models.detector.fit_confirmed`); the provenance records the rule
        and how many were dropped (``params["fit_check"]``).  No effect without refinement or
        for a model whose card has no such rule.
    source : str, optional
        Name of the image, recorded in the provenance.
    device : {"auto", "cuda", "cpu"}, optional
        Where the model runs.
    progress : callable, optional
        ``progress(done, total)``; detection tiles count first, then refinement.
    cancelled : callable, optional
        Polled between steps; True raises :class:`InterruptedError`.
    pixel_size_nm : float, optional
        The image's pixel size, for a model that learnt one sampling (``atomnet-hrtem``):
        see :func:`napari_atomnet.models.detector.detect_atoms`.

    Returns
    -------
    AtomsResult

    Raises
    ------
    ValueError
        For an invalid image or ``polarity``.
    """
    if polarity not in POLARITIES:
        raise ValueError(f"polarity must be one of {', '.join(POLARITIES)}, got {polarity!r}")
    img = as_analysis_image(image)
    t0 = time.perf_counter()
    detector = resolve_detector(detector)
    classical = detector == CLASSICAL
    if refine is None:
        refine = refines_by_default(detector)
    params: dict[str, Any] = {"refine": refine, "polarity_requested": polarity}
    model_info = None
    check_rule: dict[str, Any] | None = None
    classes: list[str] = []
    run_device = "cpu"
    if classical:
        if spacing is None:
            spacing = estimate_spacing(img)
        contrast = resolve_polarity(img, polarity, spacing=spacing)
        peaks = detect_peaks_classical(img, polarity=contrast, spacing=spacing)
        peaks["class"] = 0
        peaks["class_name"] = "atom"
        half = 0.4 * spacing
        for col, ref, sign in (("y0", "y", -1), ("x0", "x", -1), ("y1", "y", 1), ("x1", "x", 1)):
            peaks[col] = peaks[ref] + sign * half
        params.update(
            detector=CLASSICAL,
            polarity=contrast,
            lattice_spacing=round(float(spacing), 4) if np.isfinite(spacing) else None,
        )
        if progress:
            progress(1, 2 if refine else 1)
    else:
        from .models.detector import detect_atoms

        tiles_done = {"total": 1}

        def tile_progress(done: int, total: int) -> None:
            tiles_done["total"] = total
            if progress:
                progress(done, total + (1 if refine else 0))

        det = detect_atoms(
            img,
            detector,
            threshold=threshold,
            polarity=polarity,
            spacing=spacing,
            device=device,
            progress=tile_progress,
            cancelled=cancelled,
            fit_checked=refine and fit_check,
            pixel_size_nm=pixel_size_nm,
        )
        peaks = det.table
        params.update(det.params)
        contrast = det.params["polarity"]
        model_info = det.card.provenance()
        run_device = det.device
        check_rule = det.card.info.get("fit_check")
        classes = list(det.card.info.get("classes", ["atom"]))
    if cancelled is not None and cancelled():
        raise InterruptedError("cancelled")

    atoms = peaks
    if refine and len(peaks):
        atoms = refine_atoms(img, peaks, polarity=contrast, model=gaussian)
        if fit_check and check_rule:
            from .models.detector import fit_check as apply_fit_check

            keep = apply_fit_check(img, atoms, check_rule, classes, atoms.attrs["polarity"])
            params["fit_check"] = {**check_rule, "dropped": int((~keep).sum())}
            atoms = atoms[keep]
        atoms = atoms.reset_index(drop=True)
        if len(atoms):
            params["gaussian_model"] = str(atoms["model"].iloc[0])
        if progress:
            total = tiles_done["total"] + 1 if model_info else 2
            progress(total, total)
    found_spacing = _median_spacing(atoms)
    provenance = make_provenance("find_atoms", params, model=model_info, source=source)
    provenance.update(
        device=run_device,
        seconds=round(time.perf_counter() - t0, 4),
        n_atoms=len(atoms),
        spacing_px=found_spacing,
    )
    return AtomsResult(atoms=atoms, provenance=provenance, spacing=found_spacing)


def refine_atoms(
    image: np.ndarray,
    peaks: pd.DataFrame,
    *,
    polarity: str = "auto",
    model: str = "auto",
    min_fit_fraction: float = 0.5,
) -> pd.DataFrame:
    """Refine detected peaks by 2D Gaussian fits and merge the fit into the detection table.

    Boxes keep their size and follow the refined centres.  Rows whose fits merged into another
    (duplicates converging on one peak) are dropped; the kept rows keep their input index.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        The image (float).
    peaks : pandas.DataFrame
        Detections with ``y, x`` and optionally ``score, class, class_name, y0, x0, y1, x1``.
    polarity : {"auto", "bright", "dark"}
        Atom contrast; dark atoms are fitted on the negated image.  Pass what is known (e.g. the
        contrast the detection used); "auto" compares the image at the given positions with
        their surroundings (:func:`napari_atomnet.core.detect.atom_polarity`).
    model : {"auto", "elliptical", "isotropic"}
        Gaussian model.  "auto" fits the isotropic model unless the columns are measurably
        elliptical (see :func:`napari_atomnet.core.refine.columns_are_elliptical`).
    min_fit_fraction : float
        If fewer peaks than this fraction fit a Gaussian, the image is not made of Gaussian-like
        columns (e.g. HRTEM phase contrast, where peaks need not sit on the atoms): the detected
        positions are kept, every row gets ``fit_ok = False`` and ``fit_status = "not_gaussian"``.

    Returns
    -------
    pandas.DataFrame
        ``attrs["polarity"]`` is the contrast that was fitted ("bright" or "dark").
    """
    from .core.refine import fit_gaussians

    if model not in ("auto", "elliptical", "isotropic"):
        raise ValueError(f"model must be 'auto', 'elliptical' or 'isotropic', got {model!r}")
    coords = peaks[["y", "x"]].to_numpy(float)
    if polarity == "auto":
        contrast = atom_polarity(image, coords)
    else:
        contrast = resolve_polarity(image, polarity)
    signal = image if contrast == "bright" else -image
    if model == "auto":
        model = gaussian_model(signal, coords)
    isotropic = model == "isotropic"
    fit = fit_gaussians(signal, coords, isotropic=isotropic)
    if signal is not image:  # report amplitudes and backgrounds in the image's own units
        fit["amplitude"] = -fit["amplitude"]
        fit["background"] = -fit["background"]
    fit["model"] = "isotropic" if isotropic else "elliptical"
    # fit rows are positions in ``coords``; carry the caller's index over
    kept = peaks.iloc[fit.index.to_numpy()]
    fit.index = kept.index
    if len(fit) and fit["fit_ok"].mean() < min_fit_fraction:
        fit["y"] = kept["y"].to_numpy()
        fit["x"] = kept["x"].to_numpy()
        fit["fit_ok"] = False
        fit["fit_status"] = "not_gaussian"
    # the new fit replaces the detected position and any earlier fit values (a refined CSV)
    atoms = kept.drop(columns=[c for c in fit.columns if c in kept.columns]).join(fit)
    # a half-visible column at the edge is detected, and its fit puts the centre outside the
    # image: the table lists the columns whose centres lie in the image
    h, w = np.shape(image)[-2:]
    inside = atoms["y"].between(-0.5, h - 0.5) & atoms["x"].between(-0.5, w - 0.5)
    atoms, kept = atoms[inside], kept[inside]
    if {"y0", "x0", "y1", "x1"} <= set(atoms.columns):
        dy = atoms["y"] - kept["y"]
        dx = atoms["x"] - kept["x"]
        atoms["y0"] += dy
        atoms["y1"] += dy
        atoms["x0"] += dx
        atoms["x1"] += dx
    front = [c for c in ("y", "x", "score", "class", "class_name") if c in atoms]
    atoms = atoms[front + [c for c in atoms.columns if c not in front]]
    atoms.attrs["polarity"] = contrast
    return atoms


def gaussian_model(signal: np.ndarray, coords: np.ndarray) -> str:
    """Return the Gaussian model ``model="auto"`` fits: "elliptical" or "isotropic".

    Isotropic unless the columns are measurably elliptical
    (:func:`napari_atomnet.core.refine.columns_are_elliptical`).

    Parameters
    ----------
    signal : ndarray, shape (H, W)
        The image with the atoms bright (dark-atom images negated).
    coords : ndarray, shape (N, 2)
        Column positions (y, x).
    """
    from .core.refine import columns_are_elliptical

    return "elliptical" if columns_are_elliptical(signal, coords) else "isotropic"


def _median_spacing(atoms: pd.DataFrame) -> float:
    if len(atoms) < 2:
        return float("nan")
    from scipy.spatial import cKDTree

    pts = atoms[["y", "x"]].to_numpy(float)
    return float(np.median(cKDTree(pts).query(pts, k=2)[0][:, 1]))


def find_cells(
    image: ArrayLike,
    atoms: pd.DataFrame | None = None,
    *,
    detector: Any = None,
    threshold: float | None = None,
    polarity: str = "auto",
    bsites: bool = True,
    basis: tuple[ArrayLike, ArrayLike] | None = None,
    reference: ArrayLike | None = None,
    reference_region: Sequence[ArrayLike] | None = None,
    tolerance: float = 0.3,
    pixel_size_nm: float | None = None,
    source: str | None = None,
    progress: ProgressCallback | None = None,
    cancelled: CancelledCallback | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Find unit cells, B sites, displacements and strain (detecting atoms if none are given).

    Parameters
    ----------
    image : array_like, shape (H, W)
        The image.
    atoms : pandas.DataFrame, optional
        Refined atoms (``y, x`` …); detected and refined with :func:`find_atoms` when omitted.
        Atoms without Gaussian fit values are refined first.
    detector, threshold, polarity
        Passed to :func:`find_atoms` when atoms are detected here (``polarity`` also to
        :func:`refine_atoms` when given atoms are refined).
    bsites, basis, reference, reference_region, tolerance, pixel_size_nm
        Passed to :func:`napari_atomnet.core.lattice.analyze_lattice`.
    source : str, optional
        Name of the image, for the provenance.
    progress, cancelled : callable, optional
        Progress callback and cancel poll.

    Returns
    -------
    lattice : napari_atomnet.core.lattice.Lattice
    provenance : dict
    """
    from .core.lattice import analyze_lattice

    img = as_analysis_image(image)
    t0 = time.perf_counter()
    model = None
    if atoms is None:
        found = find_atoms(
            img,
            detector=detector,
            threshold=threshold,
            refine=True,  # the B-site fits subtract the A columns' Gaussians
            polarity=polarity,
            source=source,
            cancelled=cancelled,
        )
        atoms, model = found.atoms, found.provenance.get("model")
        contrast = found.provenance["params"].get("polarity")
    elif "amplitude" not in atoms or "fit_ok" not in atoms:
        atoms = refine_atoms(img, atoms.reset_index(drop=True), polarity=polarity)
        contrast = atoms.attrs.get("polarity")
    else:
        contrast = None if polarity == "auto" else polarity
    lattice = analyze_lattice(
        img,
        atoms,
        basis=basis,
        reference=reference,
        reference_region=reference_region,
        tolerance=tolerance,
        bsites=bsites,
        polarity=contrast or "auto",
        pixel_size_nm=pixel_size_nm,
        progress=progress,
        cancelled=cancelled,
    )
    params = {
        "polarity_requested": polarity,
        "polarity": contrast,
        "bsites": bsites,
        "tolerance": tolerance,
        "basis_given": basis is not None,
        "basis": None if basis is None else np.asarray(basis, dtype=float).tolist(),
        "reference_given": reference is not None or reference_region is not None,
        "reference_region": None
        if reference_region is None
        else [np.asarray(p, dtype=float).round(3).tolist() for p in reference_region],
    }
    provenance = make_provenance("cells", params, model=model, source=source)
    provenance.update(
        lattice.info, seconds=round(time.perf_counter() - t0, 4), pixel_size_nm=pixel_size_nm
    )
    return lattice, provenance


def match_imaging_conditions(
    image: ArrayLike,
    pixel_size_angstrom: float,
    *,
    detector: Any = "atomnet-hrtem",
    voltage_kv: float = 80.0,
    progress: ProgressCallback | None = None,
    cancelled: CancelledCallback | None = None,
) -> Any:
    """Find the HRTEM imaging conditions a graphene image is consistent with.

    The detector's atoms (contrast on "auto": ``atomnet-hrtem`` tells it itself) are the
    structure model that :func:`napari_atomnet.core.optics.fit_imaging_conditions` images
    through candidate CTFs and compares with the image.

    Parameters
    ----------
    image : array_like, shape (H, W)
        The HRTEM image, in counts.
    pixel_size_angstrom : float
        Sampling, Å per pixel.
    detector : str or ModelCard
        Model that finds the atoms.
    voltage_kv : float
        Acceleration voltage, kV.
    progress, cancelled : callable, optional
        Progress over the grid points, and cancel poll.

    Returns
    -------
    napari_atomnet.core.optics.ConditionsFit
    """
    from .core.optics import fit_imaging_conditions

    img = as_analysis_image(image)
    atoms = find_atoms(
        img,
        detector=detector,
        polarity="auto",
        cancelled=cancelled,
        pixel_size_nm=pixel_size_angstrom / 10.0,
    ).atoms
    return fit_imaging_conditions(
        img,
        atoms[["y", "x"]].to_numpy(float),
        pixel_size_angstrom,
        voltage_kv=voltage_kv,
        progress=progress,
        cancelled=cancelled,
    )
