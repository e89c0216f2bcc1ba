"""Nanoparticle segmentation with an ONNX model: tiled, any image size, bounded memory.

Model contract (written by :mod:`napari_atomnet.training.seg_export`; read from the model card):

- input ``image``: float32 (N, 1, H, W), the image after :func:`normalize_image` (the whole
  image's robust mean and standard deviation); H and W multiples of ``pad_multiple``;
- output ``probability``: float32 (N, C, H, W) in [0, 1] (sigmoid inside), channels named by the
  card's ``classes``: ``foreground`` (the particle, or the metal core of a core-shell particle)
  and optionally ``boundary`` (the inner rim of every particle, which separates touching ones);
- card keys: ``task`` = ``"segmentation"``, ``classes``, ``pad_multiple``, ``margin`` (context
  px read around each tile), ``tile``, ``threshold``, ``boundary_threshold``, ``min_area``,
  ``split``, ``normalization``.

Normalisation is global (one mean and standard deviation for the whole image, computed before
tiling), so every tile sees exactly the values a whole-image pass would see.  A local
normalisation (:class:`~napari_atomnet.core.preprocess.LocalNormalizer`) was not used: its window
must be much larger than the largest particle or it flattens big particles, and particle sizes
are not known in advance; the network learns the remaining slow illumination gradients.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from ..core.image import as_analysis_image
from ..core.segment import label_particles, particle_table, size_statistics
from .registry import ModelCard, load_model
from .runtime import create_session, session_device
from .tiling import iter_windows, plan_tiles

__all__ = [
    "DEFAULT_SEGMENTER",
    "Segmentation",
    "normalize_image",
    "predict_probability",
    "segment_particles",
]

#: Name of the built-in particle segmenter.
DEFAULT_SEGMENTER = "atomnet-particles"

#: Percentiles clipped before the mean and standard deviation are taken (hot pixels, zingers).
CLIP_PERCENTILES = (0.1, 99.9)
#: Median particle diameter (nm) below which a segmentation is flagged as atoms: the smallest
#: metal clusters (e.g. Au13) are about 0.8 nm across, a single atom's image 0.1-0.3 nm.
SMALLEST_PARTICLE_NM = 0.5

ProgressCallback = Callable[[int, int], None]


def normalize_image(image: ArrayLike, *, max_samples: int = 1 << 20) -> NDArray[np.float32]:
    """Standardise an image with its robust global mean and standard deviation.

    The statistics are taken on the values clipped to their 0.1-99.9 percentiles (on a regular
    subsample of at most ``max_samples`` pixels for large images), so a few hot pixels do not
    change the scale.

    Parameters
    ----------
    image : array_like, shape (H, W)
        Grey image.
    max_samples : int
        Most pixels used for the statistics.

    Returns
    -------
    ndarray of float32
        ``(image - mean) / std``.

    Examples
    --------
    >>> out = normalize_image(np.arange(100.0).reshape(10, 10))
    >>> abs(float(out.mean())) < 1e-6, round(float(out.std()), 2)
    (True, 1.0)
    """
    img = np.asarray(image, dtype=np.float32)
    step = max(1, int(np.ceil(np.sqrt(img.size / max_samples))))
    sample = img[::step, ::step].astype(np.float64).ravel()
    lo, hi = np.percentile(sample, CLIP_PERCENTILES)
    sample = np.clip(sample, lo, hi)
    mean = float(sample.mean())
    std = float(sample.std())
    if not std > 0:
        std = float(img.std()) or 1.0
    return ((img - np.float32(mean)) * np.float32(1.0 / std)).astype(np.float32, copy=False)


@dataclass
class Segmentation:
    """Particles found in an image.

    Attributes
    ----------
    labels : ndarray of int32, shape (H, W)
        Instance labels 1..n (0 background).
    table : pandas.DataFrame
        One row per label (:func:`napari_atomnet.core.segment.particle_table`).
    probability : ndarray of float32, shape (C, H, W) or None
        The network's output (``card.info["classes"]`` names the channels).
    card : ModelCard
        The model used.
    device : str
        ``"cuda"`` or ``"cpu"``: what the session really ran on.
    params : dict
        Threshold, split method, tile, margin, pixel size, timings.
    """

    labels: NDArray[np.int32]
    table: pd.DataFrame
    probability: NDArray[np.float32] | None
    card: ModelCard
    device: str
    params: dict[str, Any] = field(default_factory=dict)

    def size_warning(self) -> str | None:
        """Say so when the "particles" are atom-sized (calibrated images only); else None.

        On an atomic-resolution image the segmenter outlines the atom columns as particles a
        few ångström across, whose sizes mean nothing.
        """
        if "equivalent_diameter_nm" not in self.table or len(self.table) < 10:
            return None
        d = float(np.median(self.table["equivalent_diameter_nm"]))
        if d >= SMALLEST_PARTICLE_NM:
            return None
        return (
            f"the {len(self.table)} particles found are {d:.2g} nm across (median): the size of "
            "atoms, not of nanoparticles; on an atomic-resolution image use Detect atoms"
        )

    def statistics(self, *, include_border: bool = False) -> pd.DataFrame:
        """Return the size statistics without the border particles.

        See :func:`napari_atomnet.core.segment.size_statistics`.
        """
        return size_statistics(self.table, include_border=include_border)


def _resolve(model: str | ModelCard | None) -> ModelCard:
    if isinstance(model, ModelCard):
        if model.task != "segmentation":
            raise ValueError(f"{model.name} is a {model.task} model, not a segmentation model")
        return model
    return load_model(model or DEFAULT_SEGMENTER, task="segmentation")


def predict_probability(
    image: ArrayLike,
    model: str | ModelCard | None = None,
    *,
    tile: int | None = None,
    device: str | None = None,
    progress: ProgressCallback | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> tuple[NDArray[np.float32], ModelCard, str]:
    """Run a segmentation model over an image tile by tile.

    Parameters
    ----------
    image : array_like, shape (H, W)
        Grey image, any size and real dtype.
    model : str or ModelCard, optional
        Registry name or ``.onnx`` path; the built-in segmenter by default.
    tile : int, optional
        Core tile size (px); the card's default when omitted.
    device : {"auto", "cuda", "cpu"}, optional
        Where to run.
    progress : callable, optional
        ``progress(done, total)`` after each tile.
    cancelled : callable, optional
        Polled between tiles; when it returns True, :class:`InterruptedError` is raised.

    Returns
    -------
    probability : ndarray of float32, shape (C, H, W)
    card : ModelCard
    device : str
        What the session really ran on.
    """
    img = as_analysis_image(image)
    card = _resolve(model)
    info = card.info
    multiple = int(info.get("pad_multiple", 32))
    margin = int(info.get("margin", 160))
    tile = int(tile or info.get("tile", 1024))
    n_classes = len(info.get("classes", ["foreground"]))
    session = create_session(card.path, device=device)
    input_name = session.get_inputs()[0].name
    output_name = "probability"
    if output_name not in [o.name for o in session.get_outputs()]:
        output_name = session.get_outputs()[0].name
    norm = normalize_image(img)
    # windows on the U-Net's pooling grid (tiles reproduce one pass), mirrored as in training
    tiles, _ = plan_tiles(img.shape, tile, margin, multiple, border=margin)
    h, w = img.shape
    prob = np.zeros((n_classes, h, w), dtype=np.float32)
    windows = iter_windows(norm, tile, margin, multiple, border=margin, mode="symmetric")
    for done, (t, window) in enumerate(windows, 1):
        if cancelled is not None and cancelled():
            raise InterruptedError("segmentation cancelled")
        x = np.ascontiguousarray(window, dtype=np.float32)[None, None]
        out = session.run([output_name], {input_name: x})[0][0]
        if out.shape[0] != n_classes or out.shape[1:] != window.shape:
            raise ValueError(
                f"{card.name}: output shape {out.shape} does not match the card "
                f"({n_classes} classes) and the input window {window.shape}"
            )
        prob[(slice(None), *t.core)] = out[(slice(None), *t.core_in_window())]
        if progress is not None:
            progress(done, len(tiles))
    return prob, card, session_device(session)


def segment_particles(
    image: ArrayLike,
    model: str | ModelCard | None = None,
    *,
    pixel_size_nm: float | None = None,
    tile: int | None = None,
    threshold: float | None = None,
    split: str | None = None,
    min_area: int | None = None,
    keep_probability: bool = True,
    device: str | None = None,
    progress: ProgressCallback | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Segmentation:
    """Segment nanoparticles: network probability, instances with touching particles split, table.

    Parameters
    ----------
    image : array_like, shape (H, W)
        Grey image (bright-field TEM or HAADF), any size and real dtype.
    model : str or ModelCard, optional
        Registry name or ``.onnx`` path; the built-in ``atomnet-particles`` by default.
    pixel_size_nm : float, optional
        Calibration; adds the ``_nm`` / ``_nm2`` columns to the table.
    tile : int, optional
        Core tile size (px); the card's default when omitted.  Memory grows with ``tile``².
    threshold : float, optional
        Foreground probability threshold (the card's default when omitted).
    split : {"boundary", "distance", "none"}, optional
        How touching particles are split (:func:`~napari_atomnet.core.segment.label_particles`;
        the card's default, ``"boundary"`` when the model has a boundary output).
    min_area : int, optional
        Smallest particle kept (px; the card's default when omitted).
    keep_probability : bool
        Keep the probability maps in the result.
    device : {"auto", "cuda", "cpu"}, optional
        Where to run.
    progress : callable, optional
        ``progress(done, total)``: one step per tile, one for the instances.
    cancelled : callable, optional
        Polled between steps; when it returns True, :class:`InterruptedError` is raised.

    Returns
    -------
    Segmentation

    Raises
    ------
    InvalidImageError
        For RGB, stacks, NaN, empty or constant images.
    ModelError
        For a missing or corrupt model, or one that is not a segmentation model.
    """
    t0 = time.perf_counter()
    img = as_analysis_image(image)
    card = _resolve(model)
    info = card.info
    tile_used = int(tile or info.get("tile", 1024))
    multiple = int(info.get("pad_multiple", 32))
    margin = int(info.get("margin", 160))
    n_tiles = len(plan_tiles(img.shape, tile_used, margin, multiple, border=margin)[0])
    total = n_tiles + 1

    def tile_progress(done: int, _total: int) -> None:
        if progress is not None:
            progress(done, total)

    prob, card, used = predict_probability(
        img, card, tile=tile_used, device=device, progress=tile_progress, cancelled=cancelled
    )
    t1 = time.perf_counter()
    if cancelled is not None and cancelled():
        raise InterruptedError("segmentation cancelled")
    classes = list(info.get("classes", ["foreground"]))
    fg = prob[classes.index("foreground")] if "foreground" in classes else prob[0]
    bnd = prob[classes.index("boundary")] if "boundary" in classes else None
    thr = float(info.get("threshold", 0.5) if threshold is None else threshold)
    method = split or info.get("split") or ("boundary" if bnd is not None else "distance")
    area = int(info.get("min_area", 8) if min_area is None else min_area)
    labels = label_particles(
        fg,
        bnd,
        threshold=thr,
        boundary_threshold=float(info.get("boundary_threshold", 0.5)),
        min_area=area,
        split=method,
        h=float(info.get("h", 1.0)),
    )
    table = particle_table(labels, pixel_size_nm=pixel_size_nm)
    if progress is not None:
        progress(total, total)
    t2 = time.perf_counter()
    params = {
        "threshold": thr,
        "boundary_threshold": float(info.get("boundary_threshold", 0.5)),
        "split": method,
        "min_area": area,
        "tile": tile_used,
        "margin": margin,
        "pixel_size_nm": pixel_size_nm,
        "seconds": {
            "network": round(t1 - t0, 4),
            "instances": round(t2 - t1, 4),
            "total": round(t2 - t0, 4),
        },
    }
    return Segmentation(
        labels=labels,
        table=table,
        probability=prob if keep_probability else None,
        card=card,
        device=used,
        params=params,
    )
