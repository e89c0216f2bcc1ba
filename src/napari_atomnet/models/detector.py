"""Atom-column detection with an ONNX model: tiled, any image size, bounded memory.

Model contract (written by ``napari_atomnet.training.export``; read from the model card):

- input ``image``: float32 (N, 1, H, W), the image after :func:`~napari_atomnet.core.preprocess.
  local_normalize` with the card's normalisation rule, negated when the atoms are dark (the
  network sees bright atoms); H and W multiples of ``pad_multiple``;
- output ``heatmap``: float32 (N, C, H/s, W/s), per-class centre probabilities in [0, 1]
  (s = ``stride``), Gaussian blobs at atom centres;
- output ``size`` (optional): float32 (N, 2, H/s, W/s), box height and width in input pixels;
- card keys: ``stride``, ``pad_multiple``, ``margin`` (context px ≥ half the receptive field),
  ``border`` (padding at the image's own borders, as in training; default ``margin``),
  ``border_fill`` (``"reflect"`` when a card does not say, or ``"zero"``: the padding is 0
  after normalisation, as the built-in model was trained),
  ``tile``, ``classes``, ``default_threshold``, ``normalization`` {``factor``, ``minimum``,
  ``maximum``, ``fallback``}; optional ``class_thresholds`` (:func:`class_thresholds`) and
  ``fit_check`` (:func:`fit_confirmed`, applied after refinement by
  :func:`napari_atomnet.pipeline.find_atoms`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.spatial import cKDTree

from ..core.detect import (
    SPACING_CROP,
    central_crop,
    decode_heatmap,
    estimate_spacing,
    merge_close_peaks,
    resolve_polarity,
)
from ..core.image import as_analysis_image
from ..core.preprocess import LocalNormalizer, normalization_sigma
from .registry import ModelCard, load_model
from .runtime import create_session, session_device
from .tiling import iter_windows, plan_tiles

#: Name of the built-in detector.
DEFAULT_DETECTOR = "atomnet-detect"
#: Side (px) of the central crop on which a model that tells the contrast itself runs both ways
#: (a larger image is then detected once, the likelier way).  A 512² crop of graphene at
#: 0.08-0.18 Å/px holds 600 or more atoms: on 30 random aligned 1024² images it was right as
#: often as the whole image (29 and 28 of 30), at a quarter of the cost of a 1024² crop.
CONTRAST_CROP = 512

#: Pixel sizes (Å) tried on an uncalibrated image by a model that learnt one sampling
#: (:func:`estimate_sampling`): 0.05-0.31 Å/px in steps of 12 %.
SAMPLING_GRID = tuple(round(0.05 * 1.12**k, 5) for k in range(17))
#: Side (px, after resampling to the model's sampling) of the central crop searched: about
#: 700 graphene atoms.
SAMPLING_CROP = 320
#: An atom counts for a pixel size when its nearest neighbour lies within this fraction of the
#: spacing the model learnt (a wrong pixel size moves every spacing by its own error).
SAMPLING_TOLERANCE = 0.15

ProgressCallback = Callable[[int, int], None]


def sampling_zoom(
    card: ModelCard, pixel_size_nm: float | None, *, estimated: bool = False
) -> tuple[float, dict[str, Any]]:
    """Return the zoom that brings an image to a model's sampling, and what to record of it.

    A model that learnt one physical scale (:attr:`ModelCard.sampling_angstrom`) sees images
    whose pixel size lies outside its range resampled to the range's middle; inside it, or
    for a model without a scale, the zoom is 1.  With the pixel size unknown the image is
    taken as it is, and the record says the model's range was assumed.

    Parameters
    ----------
    card : ModelCard
        The detection model.
    pixel_size_nm : float, optional
        The image's pixel size, nm.
    estimated : bool
        The pixel size was found from the image (:func:`estimate_sampling`), not known: the
        record says so.

    Returns
    -------
    zoom : float
        Output pixels per input pixel along each axis (> 1: upsampled).
    record : dict
        ``pixel_size_angstrom``, ``model_sampling_angstrom``, ``zoom``, and ``sampling`` (a
        sentence) when the pixel size was unknown; empty for a model without a scale.
    """
    sampling = card.sampling_angstrom
    if sampling is None:
        return 1.0, {}
    low, high = sampling
    record: dict[str, Any] = {"model_sampling_angstrom": [low, high]}
    if not known_pixel_size(pixel_size_nm):
        record["sampling"] = (
            "pixel size unknown and not found from the image: taken to lie within the "
            f"model's {low:g}-{high:g} Å/px"
        )
        return 1.0, record
    px = 10.0 * float(pixel_size_nm)
    zoom = 1.0 if low <= px <= high else px / card.sampling_centre
    record.update(pixel_size_angstrom=round(px, 6), zoom=round(zoom, 6))
    if estimated:
        record["sampling"] = (
            f"pixel size unknown: {px:.4g} Å/px, found from the spacing of the atoms the "
            f"model finds (it learnt {card.spacing_angstrom:g} Å)"
        )
    return zoom, record


def known_pixel_size(pixel_size_nm: float | None) -> bool:
    """Whether a pixel size is given (a finite, positive number)."""
    return pixel_size_nm is not None and bool(np.isfinite(pixel_size_nm)) and pixel_size_nm > 0


def estimate_sampling(
    image: ArrayLike,
    model: str | ModelCard | None = None,
    *,
    polarity: str = "auto",
    device: str = "auto",
    cancelled: Callable[[], bool] | None = None,
) -> float | None:
    """Find an uncalibrated image's sampling (Å/px) with a model that learnt one.

    A model trained on one material at one sampling (its card's ``sampling_angstrom`` and
    ``spacing_angstrom``, e.g. ``atomnet-hrtem`` on graphene's 1.42 Å bonds) is run on the
    image's central part resampled as if its pixel size were each of :data:`SAMPLING_GRID`.
    At the right one it finds atoms whose nearest neighbours sit at the learnt spacing; at a
    wrong one it finds few, or finds them at other distances.  The pixel size whose atoms at
    the learnt spacing (within :data:`SAMPLING_TOLERANCE`) have the largest summed score per
    pixel of the resampled crop wins; their median nearest-neighbour distance (the spacing as
    the training simulations set it) then refines it, and a second pass at the refined pixel
    size refines it once more.

    Parameters
    ----------
    image : array_like, shape (H, W)
        Grey image.
    model : str or ModelCard, optional
        The detection model; it must have both card entries.
    polarity : {"auto", "bright", "dark"}
        Contrast of the atoms, as for :func:`detect_atoms`.
    device : {"auto", "cuda", "cpu"}
        Where to run.
    cancelled : callable, optional
        Polled between model runs; when it returns True, :class:`InterruptedError` is raised.

    Returns
    -------
    float or None
        Å per pixel; None when no pixel size shows atoms at the learnt spacing (another
        material, or no atoms).

    Raises
    ------
    ValueError
        The model learnt no sampling or no spacing.
    """
    card = detection_card(model)
    if not card.finds_sampling:
        raise ValueError(f"model {card.name!r} learnt no sampling (its card has none)")
    img = as_analysis_image(image)
    centre = card.sampling_centre
    learnt = card.spacing_angstrom / centre  # the spacing in the model's pixels

    def atoms_at(pixel_size: float) -> tuple[float, float]:
        """Return the score density and median spacing (model px) of atoms at the learnt one."""
        zoom = pixel_size / centre
        crop = central_crop(img, int(np.ceil(SAMPLING_CROP / zoom)))
        scaled = resample_image(crop, zoom) if zoom != 1.0 else crop
        found = detect_atoms(
            scaled,
            card,
            polarity=polarity,
            device=device,
            cancelled=cancelled,
            pixel_size_nm=centre / 10.0,  # as resampled: no further zoom
        ).table
        if len(found) < 3:
            return 0.0, float("nan")
        points = found[["y", "x"]].to_numpy(float)
        # the median nearest-neighbour distance: how the simulations set graphene's bond
        nearest = cKDTree(points).query(points, k=2)[0][:, 1]
        near_learnt = np.abs(nearest / learnt - 1.0) < SAMPLING_TOLERANCE
        if not near_learnt.any():
            return 0.0, float("nan")
        # per model pixel: a small image resampled down offers fewer pixels than the crop
        density = float(found["score"].to_numpy()[near_learnt].sum()) / scaled.size
        return density, float(np.median(nearest[near_learnt]))

    tried = [atoms_at(px) for px in SAMPLING_GRID]
    best = int(np.argmax([score for score, _ in tried]))
    if tried[best][0] <= 0.0:
        return None
    pixel_size = SAMPLING_GRID[best] * learnt / tried[best][1]
    score, spacing = atoms_at(pixel_size)  # nearer the learnt sampling, the atoms sit truer
    return float(pixel_size * learnt / spacing) if score > 0.0 else float(pixel_size)


def resample_image(image: np.ndarray, zoom: float) -> np.ndarray:
    """Resample an image by ``zoom`` (cubic spline, pixel edges kept aligned; float32).

    Downsampling first blurs by the Gaussian that keeps the new grid free of aliasing.
    """
    from scipy import ndimage

    img = np.asarray(image, dtype=np.float32)
    if zoom < 1.0:
        img = ndimage.gaussian_filter(img, 0.5 * np.sqrt(1.0 / zoom**2 - 1.0))
    return ndimage.zoom(img, zoom, order=3, mode="grid-mirror", grid_mode=True, output=np.float32)


def _to_input_pixels(
    table: pd.DataFrame, zoom_yx: tuple[float, float], shape: tuple[int, int]
) -> pd.DataFrame:
    """Map a detection table found on a resampled image back to the input's pixels."""
    out = table.copy()
    for axis, columns in ((0, ("y", "y0", "y1")), (1, ("x", "x0", "x1"))):
        for column in columns:  # grid_mode: pixel edges align, centres at (i + 0.5) / z - 0.5
            out[column] = (out[column] + 0.5) / zoom_yx[axis] - 0.5
    inside = (
        (out["y"] >= -0.5)
        & (out["y"] < shape[0] - 0.5)
        & (out["x"] >= -0.5)
        & (out["x"] < shape[1] - 0.5)
    )
    return out[inside].reset_index(drop=True)


@dataclass
class Detections:
    """Detected atom columns.

    Attributes
    ----------
    table : pandas.DataFrame
        ``y, x, score, class, class_name, y0, x0, y1, x1`` (px, row/col, pixel-centre
        convention; the box spans [y0, y1] × [x0, x1]).
    card : ModelCard
        The model used.
    device : str
        ``"cuda"`` or ``"cpu"``, what the session really ran on.
    params : dict
        Threshold, resolved ``polarity`` ("bright" or "dark"), tile size, the lattice spacing
        used (``lattice_spacing``, px; None when the image shows no periodicity), normalisation
        sigma.
    """

    table: pd.DataFrame
    card: ModelCard
    device: str
    params: dict[str, Any]


def detection_card(model: str | ModelCard | None) -> ModelCard:
    """Return the card of a detection model.

    Parameters
    ----------
    model : str, ModelCard or None
        A card (returned as it is), a registry name or ``.onnx`` path (loaded), or None for the
        built-in default detector.

    Raises
    ------
    ModelError
        For a model that is missing, corrupt, or not a detection model.
    """
    if isinstance(model, ModelCard):
        return model
    return load_model(model or DEFAULT_DETECTOR, task="detection")


def model_polarity(card: ModelCard, polarity: str) -> str:
    """Return ``polarity``; for "auto", the atoms' contrast the model's card knows, if any.

    A model adapted to HRTEM conditions that image every atom one way records which
    (``"polarity"`` in its card): there the image's look is no guide, the conditions are.

    Parameters
    ----------
    card : ModelCard
        The detection model.
    polarity : {"auto", "bright", "dark"}
        What the caller asked for.
    """
    return (card.polarity or polarity) if polarity == "auto" else polarity


def detect_atoms(
    image: ArrayLike,
    model: str | ModelCard | None = None,
    *,
    threshold: float | None = None,
    polarity: str = "auto",
    spacing: float | None = None,
    tile: int | None = None,
    device: str | None = None,
    progress: ProgressCallback | None = None,
    cancelled: Callable[[], bool] | None = None,
    fit_checked: bool = False,
    pixel_size_nm: float | None = None,
) -> Detections:
    """Detect atom columns with a detection model, tile by tile.

    Parameters
    ----------
    image : array_like, shape (H, W)
        Grey image, any size and real dtype.
    model : str or ModelCard, optional
        Registry name or ``.onnx`` path; the built-in detector by default.
    threshold : float, optional
        Minimum confidence; the model card's default when omitted.
    polarity : {"auto", "bright", "dark"}
        Contrast of the atoms: bright (HAADF), dark (ABF, bright-field) or guessed from the
        image (:func:`~napari_atomnet.core.detect.resolve_polarity`; reliable for STEM, not
        for HRTEM).  The built-in detector sees bright atoms: a dark-atom image is negated
        before the network, which is what keeps it from taking the bright gaps between dark
        columns for atoms.  A model whose card knows its atoms' contrast (``"polarity"``: a
        model adapted to HRTEM conditions that image them one way) uses it for "auto".  A model
        for phase contrast (card ``"contrast_guess": "model"``, e.g. ``atomnet-hrtem``) guesses
        it itself for "auto": it runs on the image both ways and keeps the contrast under
        which its detections' scores add up to more (``params["polarity_evidence"]``); this
        costs a second pass (on a large image, of its central :data:`CONTRAST_CROP`² only).
    spacing : float, optional
        Lattice spacing (px) when the caller already knows it, e.g. estimated once for all the
        frames of a movie (NaN: no periodicity); otherwise estimated here, once, from the
        central 1024² crop
        (:func:`~napari_atomnet.core.detect.estimate_spacing`).  It sets the normalisation
        window and the smoothing of the polarity guess; passing the value the estimate gives
        changes nothing.
    tile : int, optional
        Core tile size (px); the card's default when omitted.  Memory grows with ``tile``², not
        with the image.
    device : {"auto", "cuda", "cpu"}, optional
        Where to run.
    progress : callable, optional
        ``progress(done, total)`` after each tile.
    cancelled : callable, optional
        Polled between tiles; when it returns True, :class:`InterruptedError` is raised.
    fit_checked : bool
        The detections will be refined and fit-checked (:func:`fit_check`), as
        :func:`napari_atomnet.pipeline.find_atoms` does by default: use the card's thresholds
        for that case when it has them (see :func:`class_thresholds`).
    pixel_size_nm : float, optional
        The image's pixel size.  A model that learnt one sampling (its card's
        ``sampling_angstrom``, e.g. ``atomnet-hrtem``: graphene at 0.108-0.132 Å/px) gets
        the image resampled into its range when the pixel size lies outside it
        (:func:`sampling_zoom`); the positions are given in the input's pixels.  Unknown, it
        is found from the image when the card also knows the material's spacing
        (:func:`estimate_sampling`, about 18 runs of the model on a 320² crop; pass the
        pixel size to skip it), else the image is taken to be sampled as the model learnt.
        ``params["sampling"]`` then says which.  No effect for other models.

    Returns
    -------
    Detections
    """
    img = as_analysis_image(image)
    card = detection_card(model)
    estimated = False
    if card.finds_sampling and not known_pixel_size(pixel_size_nm):
        found_px = estimate_sampling(
            img, card, polarity=polarity, device=device, cancelled=cancelled
        )
        if found_px is not None:
            pixel_size_nm, estimated = found_px / 10.0, True
    zoom, sampling = sampling_zoom(card, pixel_size_nm, estimated=estimated)
    if zoom != 1.0:
        scaled = resample_image(img, zoom)
        zoom_yx = (scaled.shape[0] / img.shape[0], scaled.shape[1] / img.shape[1])
        found = detect_atoms(
            scaled,
            card,
            threshold=threshold,
            polarity=polarity,
            spacing=None if spacing is None else spacing * zoom_yx[1],
            tile=tile,
            device=device,
            progress=progress,
            cancelled=cancelled,
            fit_checked=fit_checked,
            pixel_size_nm=card.sampling_centre / 10.0,  # now in the model's range
        )
        params = {**found.params, **sampling}
        if params.get("lattice_spacing"):
            params["lattice_spacing"] = round(params["lattice_spacing"] / zoom_yx[1], 4)
        table = _to_input_pixels(found.table, zoom_yx, img.shape)
        return Detections(table=table, card=found.card, device=found.device, params=params)
    # the image is at the model's sampling now (or taken to be): a crop needs no search
    as_sampled = (
        pixel_size_nm
        if known_pixel_size(pixel_size_nm) or card.sampling_centre is None
        else card.sampling_centre / 10.0
    )
    info = card.info
    stride = int(info.get("stride", 1))
    multiple = int(info.get("pad_multiple", 8))
    margin = int(info.get("margin", 32))
    border = int(info.get("border", margin))
    zero_fill = info.get("border_fill", "reflect") == "zero"
    tile = int(tile or info.get("tile", 512))
    thr = float(info.get("default_threshold", 0.3) if threshold is None else threshold)
    classes = list(info.get("classes", ["atom"]))
    class_thr = class_thresholds(info, thr, fit_checked=fit_checked)
    norm = info.get("normalization", {})
    if spacing is None:  # once: it serves the polarity guess and the normalisation window
        spacing = estimate_spacing(img, max_crop=SPACING_CROP)
    spacing = float(spacing)
    polarity = model_polarity(card, polarity)
    guess_by_model = polarity == "auto" and card.guesses_contrast
    sigma = normalization_sigma(
        img,
        factor=norm.get("factor", 3.0),
        minimum=norm.get("minimum", 16.0),
        maximum=norm.get("maximum", 120.0),
        fallback=norm.get("fallback", 48.0),
        spacing=spacing,
    )
    normalizer = LocalNormalizer(img, sigma)  # global maps, so tiles match a whole-image pass
    session = create_session(card.path, device=device)
    input_name = session.get_inputs()[0].name
    out_names = [o.name for o in session.get_outputs()]
    tiles, _ = plan_tiles(img.shape, tile, margin, multiple, border)
    contrasts: list[str] = (
        ["bright", "dark"] if guess_by_model else [resolve_polarity(img, polarity, spacing=spacing)]
    )
    evidence: dict[str, float] = {}
    if guess_by_model and max(img.shape) > CONTRAST_CROP:
        # a large image: both ways on its central part, then the whole once, the likelier way
        crop = central_crop(img, CONTRAST_CROP)
        for c in contrasts:
            found = detect_atoms(
                crop,
                card,
                threshold=threshold,
                polarity=c,
                spacing=spacing,
                device=device,
                cancelled=cancelled,
                pixel_size_nm=as_sampled,
            )
            evidence[c] = float(found.table["score"].sum())
        contrasts = [max(contrasts, key=lambda c: evidence[c])]
    total = len(tiles) * len(contrasts)

    def run(contrast: str, done_before: int) -> list[pd.DataFrame]:
        sign = -1.0 if contrast == "dark" else 1.0
        parts = []
        for done, (t, window) in enumerate(
            iter_windows(img, tile, margin, multiple, border), done_before + 1
        ):
            if cancelled is not None and cancelled():
                raise InterruptedError("detection cancelled")
            # windows are multiples of pad_multiple already (plan_tiles puts them on the grid)
            net_in = normalizer.apply(window, t.offset, scale=sign)
            if zero_fill:  # the network sees nothing beyond the image's own edges
                _zero_outside(net_in, t.offset, img.shape)
            outputs = dict(
                zip(
                    out_names, session.run(out_names, {input_name: net_in[None, None]}), strict=True
                )
            )
            peaks = decode_heatmap(
                outputs["heatmap"][0],
                threshold=float(class_thr.min()),
                size=outputs["size"][0] if "size" in outputs else None,
                stride=stride,
            )
            peaks = confident(peaks, class_thr)
            # window coordinates -> image coordinates; keep only the peaks in this tile's core
            oy, ox = t.offset
            peaks["y"] += oy
            peaks["x"] += ox
            r, c = t.core
            inside = (
                (peaks["y"] >= r.start - 0.5)
                & (peaks["y"] < r.stop - 0.5)
                & (peaks["x"] >= c.start - 0.5)
                & (peaks["x"] < c.stop - 0.5)
            )
            parts.append(peaks[inside])
            if progress is not None:
                progress(done, total)
        return parts

    runs = {contrast: run(contrast, k * len(tiles)) for k, contrast in enumerate(contrasts)}
    if guess_by_model and not evidence:
        # phase contrast: the contrast under which the model finds the most atoms, most surely
        evidence = {c: float(sum(p["score"].sum() for p in parts)) for c, parts in runs.items()}
    contrast = max(contrasts, key=lambda c: evidence.get(c, 0.0))
    parts = runs[contrast]
    table = (
        pd.concat(parts, ignore_index=True)
        if parts
        else decode_heatmap(np.zeros((1, 1, 1)), threshold=1.0)
    )
    if len(parts) > 1:  # peaks of one tile were merged by decode_heatmap already
        table = merge_close_peaks(table, 1.0)
    table = _finish_table(table, classes, img.shape)
    params = {
        "threshold": thr,
        "class_thresholds": dict(zip(classes, class_thr.round(4).tolist(), strict=False)),
        "polarity": contrast,
        **(
            {"polarity_evidence": {c: round(v, 3) for c, v in evidence.items()}}
            if guess_by_model
            else {}
        ),
        "tile": tile,
        "lattice_spacing": round(spacing, 4) if np.isfinite(spacing) else None,
        "normalization_sigma": sigma,
        **sampling,
    }
    return Detections(table=table, card=card, device=session_device(session), params=params)


def class_thresholds(
    info: dict[str, Any], threshold: float, *, fit_checked: bool = False
) -> np.ndarray:
    """Per-class confidence thresholds for an overall ``threshold``.

    A card may set ``class_thresholds`` (chosen on validation images by the training script):
    the built-in detector needs more confidence for "weak" columns, whose channel otherwise
    reports faint B sites at the centre of plain square cells (a prior learnt from perovskites).
    When the detections will be fit-checked, the card's ``fit_check`` rule may set its own
    ``class_thresholds``: the check drops such false weak columns, so a lower weak threshold
    can keep more real faint ones.  A class keeps its offset from the card's
    ``default_threshold`` when the caller moves the threshold, so one slider moves all classes
    together.

    Parameters
    ----------
    info : dict
        Model card.
    threshold : float
        Threshold of the classes the card does not list (the default class threshold).
    fit_checked : bool
        Use the fit-check rule's thresholds, where the card has them.

    Returns
    -------
    ndarray of float
        One threshold per class, in the card's class order, clipped to [0, 1].
    """
    classes = list(info.get("classes", ["atom"]))
    default = float(info.get("default_threshold", 0.3))
    per_class = info.get("class_thresholds", {}) or {}
    if fit_checked:
        per_class = (info.get("fit_check") or {}).get("class_thresholds") or per_class
    out = [threshold + float(per_class.get(name, default)) - default for name in classes]
    return np.clip(np.asarray(out, dtype=np.float64), 0.0, 1.0)


def confident(peaks: pd.DataFrame, thresholds: ArrayLike) -> pd.DataFrame:
    """Keep the peaks whose score reaches the threshold of their class.

    Parameters
    ----------
    peaks : pandas.DataFrame
        Decoded peaks with ``score`` and ``class``.
    thresholds : array_like of float
        One threshold per class (:func:`class_thresholds`).

    Returns
    -------
    pandas.DataFrame
    """
    per_class = np.asarray(thresholds, dtype=np.float64)
    cls = np.clip(peaks["class"].to_numpy(int), 0, len(per_class) - 1)
    return peaks[peaks["score"].to_numpy() >= per_class[cls]]


def fit_confirmed(
    atoms: pd.DataFrame,
    check: dict[str, Any],
    classes: list[str],
    empty_site_p: np.ndarray | None = None,
) -> np.ndarray:
    """Which refined detections the data confirm: a confident score or a significant fit.

    The network places a column partly from context (the lattice around it), which is how it
    finds faint columns, and also how it can propose a "weak" column at the empty centre of a
    cell where the training lattices often had one.  The Gaussian fit of a detection
    (:func:`napari_atomnet.pipeline.refine_atoms`) weighs the evidence in the pixels alone:
    ``amplitude_snr`` is the fitted amplitude over its standard error.  A detection is kept
    when either is convincing: its score reaches the class's ``sure_scores`` value, or its
    fitted amplitude is ``min_snr`` standard errors above zero (and, with ``fit_ok`` true in
    the rule, the fit succeeded).  With ``empty_site_alpha`` in the rule, a detection at an
    empty site of the strong columns' arrangement must also stand out from all those empty
    sites: its family-wise p-value (``empty_site_p``, from
    :func:`napari_atomnet.core.holes.empty_site_pvalues`) must not exceed ``empty_site_alpha``.
    Rows without a usable fit (``fit_status`` "not_gaussian": HRTEM phase contrast, where
    intensity extrema need not sit on the atoms) have only the score to go by: with
    ``relative_score`` in the rule, such a row is kept when its score is at least that fraction
    of the median score of those rows (the network scores the atoms of one image alike, and a
    false detection in a hole of the film or on a delocalised fringe lower); without it they are
    all kept.  The rule comes from the model card (chosen on validation images by the training
    script).  A table without ``amplitude_snr`` is kept whole.

    Parameters
    ----------
    atoms : pandas.DataFrame
        Refined detections with ``score``, ``class``, ``amplitude_snr`` and ``fit_status``.
    check : dict
        ``min_snr`` (float), ``sure_scores`` ({class name: score}; classes not listed are
        always checked), ``fit_ok`` (bool, default False: also require a successful fit) and
        optionally ``empty_site_alpha`` and ``relative_score`` (float).
    classes : list of str
        The model's class names, in class-index order.
    empty_site_p : ndarray, optional
        Per row, the family-wise p-value of a detection at an empty site (NaN where it does
        not apply); ignored unless the rule has ``empty_site_alpha``.

    Returns
    -------
    ndarray of bool
        True for the rows to keep.
    """
    n = len(atoms)
    if not n or "amplitude_snr" not in atoms or "score" not in atoms:
        return np.ones(n, dtype=bool)
    no_fit = _without_fit(atoms)
    snr = np.nan_to_num(atoms["amplitude_snr"].to_numpy(float), nan=0.0)
    fit_confirms = snr >= float(check.get("min_snr", 0.0))
    if check.get("fit_ok", False):
        fit_confirms &= (atoms["fit_status"] == "ok").to_numpy() if "fit_status" in atoms else True
    alpha = check.get("empty_site_alpha")
    if alpha is not None and empty_site_p is not None:
        fit_confirms &= ~(np.asarray(empty_site_p, dtype=float) > float(alpha))
    keep = _sure(atoms, check, classes) | fit_confirms
    relative = check.get("relative_score")
    if relative is None or not no_fit.any():
        return no_fit | keep
    # no fit to ask: the score must be a fair part of what this image's columns score
    score = atoms["score"].to_numpy(float)
    return np.where(no_fit, score >= float(relative) * np.median(score[no_fit]), keep)


def _without_fit(atoms: pd.DataFrame) -> np.ndarray:
    """Rows whose fit was not usable (``fit_status`` "not_gaussian": HRTEM phase contrast)."""
    if "fit_status" not in atoms:
        return np.zeros(len(atoms), dtype=bool)
    return (atoms["fit_status"] == "not_gaussian").to_numpy()


def _sure(atoms: pd.DataFrame, check: dict[str, Any], classes: list[str]) -> np.ndarray:
    """Rows whose score reaches their class's sure score (no fit check needed)."""
    sure_by_name = check.get("sure_scores", {}) or {}
    sure = np.array([float(sure_by_name.get(c, np.inf)) for c in classes] + [np.inf])
    cls = np.clip(atoms["class"].to_numpy(int), 0, len(classes)) if "class" in atoms else 0
    return atoms["score"].to_numpy(float) >= sure[cls]


def fit_check(
    image: np.ndarray,
    atoms: pd.DataFrame,
    check: dict[str, Any],
    classes: list[str],
    polarity: str,
) -> np.ndarray:
    """Apply a model card's fit-check rule to refined detections (see :func:`fit_confirmed`).

    The empty-site test (:func:`napari_atomnet.core.holes.empty_site_pvalues`), when the rule
    has one, is run only for the detections it could drop: those of the other classes than
    the first ("strong", whose holes are the sites) that neither score as sure nor lack a fit.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        The image the detections were refined on.
    atoms : pandas.DataFrame
        Refined detections (:func:`napari_atomnet.pipeline.refine_atoms`).
    check : dict
        The rule (the card's ``fit_check``).
    classes : list of str
        The model's class names.
    polarity : {"bright", "dark"}
        Atom contrast of the refinement.

    Returns
    -------
    ndarray of bool
        True for the rows to keep.
    """
    p = None
    if check.get("empty_site_alpha") is not None:
        p = empty_site_test(image, atoms, polarity, among=~_sure(atoms, check, classes))
    return fit_confirmed(atoms, check, classes, p)


def empty_site_test(
    image: np.ndarray, atoms: pd.DataFrame, polarity: str, among: np.ndarray | None = None
) -> np.ndarray | None:
    """Empty-site p-values of refined detections (see :mod:`napari_atomnet.core.holes`).

    The sites are the holes of the first class's columns ("strong"); the detections tested are
    those of the other classes with a usable fit (not ``not_gaussian``), and of those only the
    ``among`` rows when given.

    Returns
    -------
    ndarray or None
        Per row, the p-value (NaN where the test does not apply); None when no row is tested.
    """
    if not len(atoms) or "class" not in atoms:
        return None
    from ..core.holes import empty_site_pvalues

    strong = atoms["class"].to_numpy(int) == 0
    tested = ~strong & ~_without_fit(atoms)
    if among is not None:
        tested &= among
    if not tested.any():
        return None
    return empty_site_pvalues(image, atoms, strong, tested, polarity=polarity)


def _zero_outside(window: np.ndarray, offset: tuple[int, int], shape: tuple[int, int]) -> None:
    """Set the pixels of a window that lie outside the image to 0, in place."""
    oy, ox = offset
    window[: max(0, -oy)] = 0.0
    window[:, : max(0, -ox)] = 0.0
    window[max(0, shape[0] - oy) :] = 0.0
    window[:, max(0, shape[1] - ox) :] = 0.0


def _finish_table(table: pd.DataFrame, classes: list[str], shape: tuple[int, int]) -> pd.DataFrame:
    table = table.sort_values(["y", "x"], kind="stable").reset_index(drop=True)
    cls = table["class"].to_numpy(int)
    names = np.array([*classes, "?"])[np.clip(cls, 0, len(classes))]
    box_h = table["box_h"].to_numpy(float)
    box_w = table["box_w"].to_numpy(float)
    if len(table) and np.isnan(box_h).any():  # no size head: boxes from the local spacing
        from scipy.spatial import cKDTree

        pts = table[["y", "x"]].to_numpy()
        nn = cKDTree(pts).query(pts, k=2)[0][:, 1] if len(pts) > 1 else np.full(1, 8.0)
        box_h = np.where(np.isnan(box_h), 0.8 * nn, box_h)
        box_w = np.where(np.isnan(box_w), 0.8 * nn, box_w)
    out = pd.DataFrame(
        {
            "y": table["y"].to_numpy(float),
            "x": table["x"].to_numpy(float),
            "score": table["score"].to_numpy(float),
            "class": cls,
            "class_name": names,
            "y0": table["y"].to_numpy(float) - box_h / 2,
            "x0": table["x"].to_numpy(float) - box_w / 2,
            "y1": table["y"].to_numpy(float) + box_h / 2,
            "x1": table["x"].to_numpy(float) + box_w / 2,
        }
    )
    return out
