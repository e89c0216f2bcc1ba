r"""Train the built-in atom-column detector on simulated images and export it to ONNX.

Run (from the repository root)::

    python -m napari_atomnet.training.train_detector \
        --out src/napari_atomnet/models/builtin --seed 0

Everything is seeded (numpy, torch, the simulated pool), uses two CPU threads, and runs a fixed
number of steps, so a run is reproducible.  On a GPU (``--device cuda``, where a lent machine
has one) ``--time-budget`` fixes the step count from the first steps' speed and the card records
it, so ``--steps`` repeats that run too; ``--train-only`` there and ``--weights``/``--record``
here split training from evaluation and export (``scripts/train_hrtem_gpu.sh``).  The script

1. simulates a fixed pool of training images (:func:`napari_atomnet.training.data.make_pool`),
2. trains :class:`~napari_atomnet.training.nets.AtomDetector` on random crops with a
   penalty-reduced focal loss on the centre heatmap (soft Gaussian targets) and an L1 loss on the
   log box size,
3. validates on held-out simulated images (seeds never used in training): F1 of
   :func:`napari_atomnet.core.metrics.detection_scores` at a matching radius of 0.25 x the
   nearest-neighbour spacing, peaks decoded by :func:`napari_atomnet.core.detect.decode_heatmap`,
4. exports ONNX + model card (:func:`napari_atomnet.training.export.export_detector`), picks the
   default threshold on the validation images, and measures the held-out test F1 per case and
   the CPU inference time through :func:`napari_atomnet.models.detector.detect_atoms`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.optics import BOND_ANGSTROM
from ..io._atomic import write_text_atomic
from . import data

__all__ = [
    "BF16_TEXT",
    "DEVICES",
    "PRECISIONS",
    "PRECISION_CHOICES",
    "TrainConfig",
    "evaluate_model",
    "lr_schedule",
    "main",
    "resolve_precision",
    "train",
    "train_step",
    "training_device",
    "use_precision",
]

NAME = "atomnet-detect"
#: Training precisions (TrainConfig.precision).
PRECISIONS = ("fp32", "bf16")
#: Steps between which a run with a time budget times its steps (from warm steps, before the
#: learning-rate warm-up of the recipes ends).
BUDGET_PROBE = (100, 300)
#: Where a detector can train (TrainConfig.device).
DEVICES = ("cpu", "cuda")
#: What a fine-tuning or adaptation may ask for: "auto" resolves to one of PRECISIONS.
PRECISION_CHOICES = ("auto", *PRECISIONS)
#: How a model card describes bfloat16 training.
BF16_TEXT = (
    "forward passes under bfloat16 autocast, channels-last (weights, optimiser and export float32)"
)
VERSION = "1.0"
#: Seeds of the held-out images: validation (threshold choice) and test (reported metrics).
VAL_SEED = 1_000_000
TEST_SEED = 2_000_000

DESIGN = (
    "Centre-heatmap detector (CenterNet-style) instead of YOLO-style boxes (seed 000): atom "
    "columns are dense (hundreds to tens of thousands per image), tiny (a few px), touching or "
    "overlapping, and nearly all of one shape, so anchors, box regression and non-maximum "
    "suppression between touching boxes add nothing but failure modes. A heatmap with one "
    "Gaussian blob per column (seed 003) is decoded by 3x3 local maxima, with sub-pixel "
    "positions from a parabola on the log-heatmap, and one extra channel gives the box side. "
    "Network: PixelUnshuffle(2) stem so every convolution runs at <= 1/2 resolution, 4-level "
    "U-Net (two 3x3 conv+BN+ReLU per level, 1x1 fusion after each skip concatenation as in "
    "seed 001), head 3x3 conv + 1x1 conv to 4*(C+1) channels + PixelShuffle(2) back to full "
    "resolution (stride 1): C class heatmaps (sigmoid) + 1 log box side (exp)."
)


class TrainConfig:
    """Hyper-parameters of a training run (all recorded in the model card)."""

    def __init__(self, **kw: Any) -> None:
        self.seed: int = 0
        self.steps: int = 11000
        self.batch: int = 16
        self.crop: int = 144
        self.pool: int = 2400
        self.sim_shape: int = 256
        self.pad: int = 32
        self.border_fill: str = "zero"  # what the padding holds (data.BORDER_FILLS)
        self.hole_weight: float = data.HOLE_WEIGHT  # loss weight at empty cell centres
        self.vacuum_weight: float = 1.0  # loss weight in vacuum (holes, beyond surfaces)
        self.lr: float = 3e-3
        self.weight_decay: float = 1e-4
        self.warmup: int = 300
        self.loss: str = "focal"
        self.size_weight: float = 0.2
        self.channels: tuple[int, ...] = (16, 32, 48, 64)
        self.val_every: int = 2000
        self.val_images: int = 2
        self.test_images: int = 6
        # validation images per case on which the thresholds are chosen: a detector that makes
        # a few errors per image needs many images for the choice not to follow their noise
        self.threshold_images: int = 4
        self.threads: int = 2
        self.workers: int = 2
        self.margin: int = 96
        self.tile: int = 1024
        self.time_limit_min: float = 0.0  # safety stop of the training loop (0: none)
        # > 0: the step count is set, once BUDGET_PROBE's steps are timed, so that the loop
        # ends within this many minutes (a GPU run; the card records the count, and --steps
        # with it repeats the run exactly, the warm-up not depending on the count)
        self.time_budget_min: float = 0.0
        self.mix: dict[str, float] = dict(data.DEFAULT_MIX)  # share of each simulator
        self.init: str = ""  # start from these weights (a .pt state dict) instead of at random
        # "bf16": forward pass under bfloat16 autocast, channels-last (weights and optimiser stay
        # float32); about 1.9x faster steps on CPUs with AVX512-BF16, the export is float32;
        # "auto": bf16 where the CPU has it natively (train() settles it, as it does a budget's
        # step count)
        self.precision: str = "fp32"
        # where the network trains: "cpu" (the recipes) or "cuda" (a GPU: the pool is held and
        # cropped there, data.DevicePool); simulation and evaluation stay on the CPU
        self.device: str = "cpu"
        # how graphene images draw their holes and microscopes (data.DEFAULT_GRAPHENE_DRAWS)
        self.graphene: dict[str, Any] = {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in data.DEFAULT_GRAPHENE_DRAWS.items()
        }
        for key, value in kw.items():
            if not hasattr(self, key):
                raise TypeError(f"unknown option {key}")
            setattr(self, key, value)

    def as_dict(self) -> dict[str, Any]:
        """Return the configuration as a plain dict."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items()}


# --------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------
def heatmap_loss(logits: Any, heat: Any, weight: Any, kind: str = "focal") -> Any:
    """Heatmap loss normalised by the number of columns in the batch.

    Parameters
    ----------
    logits : torch.Tensor, shape (N, C, H, W)
        Raw heatmap outputs.
    heat : torch.Tensor, shape (N, C, H, W)
        Gaussian-blob targets in [0, 1].
    weight : torch.Tensor, shape (N, 1, H, W)
        0 where the loss is ignored.
    kind : {"focal", "centernet", "mse"}
        ``"focal"``: penalty-reduced focal loss with soft targets, ``|y - p|^2 * BCE(p, y)``
        (its minimum is at p = y, so the network reproduces the Gaussian blobs and the
        log-parabola decoding stays sub-pixel exact; the ``|y - p|^2`` factor suppresses the
        many easy background pixels as CenterNet's focal loss does).  ``"centernet"``: the
        original (positives only at each blob's peak pixel, negatives weighted by
        ``(1 - y)^4``).  ``"mse"``: squared error (seed 003).

    Returns
    -------
    torch.Tensor
        Scalar loss.
    """
    import torch
    import torch.nn.functional as F

    peaks = (F.max_pool2d(heat, 3, 1, 1) == heat) & (heat > 0.5)
    n_pos = peaks.sum().clamp(min=1).float()
    p = torch.sigmoid(logits)
    if kind == "focal":
        bce = F.binary_cross_entropy_with_logits(logits, heat, reduction="none")
        loss = (p - heat).abs().pow(2) * bce
    elif kind == "centernet":
        logp = F.logsigmoid(logits)
        log1mp = F.logsigmoid(-logits)
        pos = peaks.float()
        loss = -(pos * (1 - p).pow(2) * logp + (1 - pos) * (1 - heat).pow(4) * p.pow(2) * log1mp)
    elif kind == "mse":
        loss = 10.0 * (p - heat).pow(2)
    else:
        raise ValueError(f"unknown loss {kind!r}")
    return (loss * weight).sum() / n_pos


def size_loss(log_size_pred: Any, log_size: Any, mask: Any) -> Any:
    """L1 loss on the log box side at the column centres (where the target blob > 0.5)."""
    return ((log_size_pred - log_size).abs() * mask).sum() / mask.sum().clamp(min=1.0)


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------
THRESHOLDS = tuple(np.round(np.arange(0.05, 0.9, 0.05), 2))


def _spacing(truth: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    if len(truth) < 2:
        return 20.0
    return float(np.median(cKDTree(truth).query(truth, k=2)[0][:, 1]))


def scores_by_threshold(
    peaks: Any,
    truth: np.ndarray,
    dont_care: np.ndarray | None = None,
    thresholds: tuple[float, ...] = THRESHOLDS,
    strict: bool = True,
) -> dict[float, dict[str, float]]:
    """Score peaks at several confidence thresholds (radius 0.25 x nn spacing).

    Parameters
    ----------
    peaks : pandas.DataFrame
        Decoded peaks (``y, x, score``) at the lowest threshold.
    truth : ndarray, shape (m, 2)
        True positions (centres inside the image).
    dont_care : ndarray, shape (k, 2), optional
        Columns just outside the image: detections matched to them count neither way.
    thresholds : tuple of float
        Thresholds to score.
    strict : bool
        Also count ``fp_strict`` and ``fn_strict`` (a second matching).

    Returns
    -------
    dict
        threshold -> ``tp, fp, fn`` (with the don't-care columns), ``fp_strict`` (every
        detection not matched to ``truth`` counts, as in
        :func:`~napari_atomnet.core.metrics.detection_scores`), ``se`` (sum of squared position
        errors of the true positives, px²).
    """
    from ..core.metrics import match_points

    everything = truth if dont_care is None or not len(dont_care) else np.vstack([truth, dont_care])
    n = len(truth)
    radius = 0.25 * _spacing(truth)
    out = {}
    for t in thresholds:
        found = peaks.loc[peaks["score"] >= t, ["y", "x"]].to_numpy(np.float64)
        pairs, un_f, un_t = match_points(found, everything, radius)
        real = pairs[pairs[:, 1] < n]
        d = found[real[:, 0]] - truth[real[:, 1]]
        out[float(t)] = {
            "tp": len(real),
            "fp": len(un_f),
            "fn": int((un_t < n).sum()),
            "se": float(np.sum(d * d)),
        }
        if strict:
            matched = len(match_points(found, truth, radius)[0])
            out[float(t)].update(fp_strict=len(found) - matched, fn_strict=n - matched)
    return out


def torch_peaks(
    model: Any,
    image: np.ndarray,
    normalization: dict,
    border: int = 32,
    fill: str = "reflect",
) -> Any:
    """Run the torch model on a whole image as inference does and decode its peaks.

    The image is normalised, padded by ``border`` (``fill``: see :func:`.data.normalize_image`)
    and to a multiple of the stride,
    the whole output decoded at threshold 0.05, and the peaks inside the image kept (as
    :func:`~napari_atomnet.models.detector.detect_atoms` keeps the peaks in a tile's core).
    """
    import torch

    from ..core.detect import decode_heatmap

    h, w = np.shape(image)
    norm = data.normalize_image(image, normalization, pad=border, fill=fill)
    m = model.pad_multiple
    ph, pw = norm.shape
    norm = np.pad(norm, ((0, (-ph) % m), (0, (-pw) % m)), mode="reflect")
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        heat, size = model.inference(torch.from_numpy(norm)[None, None].to(device))
    heat, size = heat[0].float().cpu().numpy(), size[0].float().cpu().numpy()
    peaks = decode_heatmap(heat, threshold=THRESHOLDS[0], size=size)
    peaks["y"] -= border
    peaks["x"] -= border
    inside = peaks["y"].between(-0.5, h - 0.5, inclusive="left") & peaks["x"].between(
        -0.5, w - 0.5, inclusive="left"
    )
    return peaks[inside].reset_index(drop=True)


def evaluate_model(
    predict: Any, cases: list[str], seed: int, n_images: int, shape: tuple[int, int] = (256, 256)
) -> dict[str, dict[float, dict[str, float]]]:
    """Score a detector on held-out simulated images, per case and threshold.

    Parameters
    ----------
    predict : callable
        ``predict(image) -> DataFrame`` of peaks (``y, x, score``) at a low threshold.
    cases : list of str
        Keys of :data:`napari_atomnet.training.data.VALIDATION_CASES`.
    seed : int
        First image seed (image ``k`` of every case uses ``seed + k``).
    n_images : int
        Images per case.
    shape : tuple of int
        Image size.

    Returns
    -------
    dict
        case -> threshold -> pooled scores over the images: ``tp, fp, fn, precision, recall,
        f1`` (columns just outside the image are "don't care", see
        :func:`~napari_atomnet.training.data.validation_sample`), ``f1_strict`` (every detection
        not matched to a column inside the image is a false positive) and ``rmse_px``.
    """
    result: dict[str, dict[float, dict[str, float]]] = {}
    for case in cases:
        sums: dict[float, dict[str, float]] = {}
        for k in range(n_images):
            image, truth, dont_care = data.validation_sample(case, seed + k, shape)
            peaks = predict(image)
            for t, s in scores_by_threshold(peaks, truth, dont_care).items():
                acc = sums.setdefault(t, dict.fromkeys(s, 0.0))
                for key, value in s.items():
                    acc[key] += value
        result[case] = {t: _finish(acc) for t, acc in sums.items()}
    return result


def _finish(acc: dict[str, float]) -> dict[str, float]:
    tp, fp, fn = acc["tp"], acc["fp"], acc["fn"]
    fps, fns = acc["fp_strict"], acc["fn_strict"]
    strict_tp = tp + fn - fns
    return {
        "tp": int(tp),
        "fp": int(fp),
        "fn": int(fn),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
        "f1_strict": 2 * strict_tp / (2 * strict_tp + fps + fns) if strict_tp + fps + fns else 1.0,
        "rmse_px": math.sqrt(acc["se"] / tp) if tp else float("nan"),
    }


def best_class_thresholds(
    predict: Any, cases: list[str], seed: int, n_images: int, shape: tuple[int, int]
) -> tuple[float, float, float]:
    """Choose the (strong, weak) confidence thresholds with the highest mean validation F1.

    One threshold for both classes let the "weak" channel report faint B sites at the centre of
    plain square cells (a prior learnt from perovskites) or, raised, lose real weak columns;
    the weak class gets its own threshold (ties: the lower pair).

    Returns
    -------
    strong, weak : float
        The thresholds.
    mean_f1 : float
        Mean F1 over the cases at those thresholds.
    """
    from ..models.detector import confident

    runs = _validation_runs(predict, cases, seed, n_images, shape)
    grid = [t for t in THRESHOLDS if t >= 0.2]
    best = (-1.0, 0.0, 0.0)
    for strong in grid:
        for weak in grid:
            f1 = _mean_case_f1(
                (case, confident(peaks, [strong, weak]), truth, dont_care)
                for case, _, peaks, truth, dont_care in runs
            )
            if f1 > best[0] + 1e-9:
                best = (f1, strong, weak)
    return best[1], best[2], best[0]


def _validation_runs(
    predict: Any, cases: list[str], seed: int, n_images: int, shape: tuple[int, int]
) -> list[tuple[str, np.ndarray, Any, np.ndarray, np.ndarray]]:
    """``(case, image, detections, truth, dont_care)`` for ``n_images`` images of each case."""
    runs = []
    for case in cases:
        for k in range(n_images):
            image, truth, dont_care = data.validation_sample(case, seed + k, shape)
            runs.append((case, image, predict(image), truth, dont_care))
    return runs


def _mean_case_f1(scored: Iterable[tuple[str, Any, np.ndarray, np.ndarray]]) -> float:
    """Mean over the cases of each case's F1, the detections of its images pooled.

    ``scored`` yields ``(case, detections, truth, dont_care)``, one per image.
    """
    sums: dict[str, dict[str, float]] = {}
    for case, peaks, truth, dont_care in scored:
        s = scores_by_threshold(peaks, truth, dont_care, (0.0,), strict=False)[0.0]
        acc = sums.setdefault(case, {"tp": 0.0, "fp": 0.0, "fn": 0.0})
        for key in acc:
            acc[key] += s[key]
    f1 = [2 * a["tp"] / max(2 * a["tp"] + a["fp"] + a["fn"], 1) for a in sums.values()]
    return float(np.mean(f1))


def _refined(image: np.ndarray, peaks: Any) -> Any:
    """Gaussian-refine detections of an oriented (atoms bright) image, as find_atoms does."""
    from ..pipeline import refine_atoms

    peaks = peaks.reset_index(drop=True)
    return refine_atoms(image, peaks, polarity="bright") if len(peaks) else peaks


#: Validation images per case on which :func:`fits_used` decides whether to refine by default.
REFINE_IMAGES = 4


def fits_used(runs: list, n_images: int) -> dict[str, float]:
    """Measure, per case, how often the Gaussian refinement gives the positions.

    :func:`~napari_atomnet.pipeline.refine_atoms` keeps the detected positions of an image when
    fewer than half of its fits succeed (``fit_status`` "not_gaussian": HRTEM phase contrast).
    A model whose validation images mostly end that way refines for nothing, and its card says
    so (``refine_default`` false).

    Parameters
    ----------
    runs : list
        :func:`_checked_runs` (the fit check's, reused).
    n_images : int
        Judge the first ``n_images`` images of each case.

    Returns
    -------
    dict
        case -> share of its images whose refined positions come from the fits.
    """
    used: dict[str, list[bool]] = {}
    for case, k, refined, *_ in runs:
        if k < n_images:
            fitted = bool(len(refined)) and bool((refined["fit_status"] != "not_gaussian").any())
            used.setdefault(case, []).append(fitted)
    return {case: float(np.mean(flags)) for case, flags in used.items()}


#: Amplitude significance levels (fitted amplitude / standard error) tried by the fit check.
FIT_CHECK_SNR = (2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0)
#: Family-wise significance levels tried for detections at empty sites
#: (:func:`~napari_atomnet.core.holes.empty_site_pvalues`).
EMPTY_SITE_ALPHA = (0.01, 0.05, 0.2)
#: Relative scores tried for detections without a usable fit (see ``relative_score`` in
#: :func:`~napari_atomnet.models.detector.fit_confirmed`).
RELATIVE_SCORES = (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)
#: Validation images per case for the fit check: the errors it removes are rare (a few per
#: image), so it needs more images than the thresholds.
FIT_CHECK_IMAGES = 8
#: Validation images per case for the empty-site test: the false detections it removes are
#: rarer still (for the shipped weights: a handful in 32 images of the ABF-like and the dose 8-10
#: cases, about none in 8).
EMPTY_SITE_IMAGES = 32


def _checked_runs(
    raw: list, n_images: int, thresholds: tuple[float, float]
) -> list[tuple[str, int, Any, np.ndarray | None, np.ndarray, np.ndarray]]:
    """``(case, k, refined detections, empty-site p-values, truth, dont_care)`` per image.

    ``raw`` are :func:`_validation_runs` with ``n_images`` per case.  The detections kept at
    the class ``thresholds`` are refined by Gaussian fits, as
    :func:`napari_atomnet.pipeline.find_atoms` does, and every detection of the other classes
    than the first is given its empty-site p-value (NaN where it does not apply).
    """
    from ..models.detector import confident, empty_site_test

    runs = []
    for index, (case, image, peaks, truth, dont_care) in enumerate(raw):
        kept = _refined(image, confident(peaks, thresholds))
        p = empty_site_test(image, kept, "bright")
        runs.append((case, index % n_images, kept, p, truth, dont_care))
    return runs


def best_fit_check(
    predict: Any,
    cases: list[str],
    seed: int,
    n_images: int,
    shape: tuple[int, int],
    thresholds: tuple[float, float],
    empty_site_images: int = EMPTY_SITE_IMAGES,
    validation: tuple[list, list] | None = None,
) -> dict[str, Any] | None:
    """Choose the fit-check rule (see :func:`~napari_atomnet.models.detector.fit_confirmed`).

    The detections kept at the class ``thresholds`` are refined by Gaussian fits, as
    :func:`napari_atomnet.pipeline.find_atoms` does; a rule keeps a detection whose score
    reaches its class's "sure" score or whose fitted amplitude is ``min_snr`` standard errors
    above zero (with ``fit_ok``: and whose fit succeeded).  The rule with the highest mean
    validation F1 over the cases (``n_images`` per case) wins; a stricter rule must do strictly
    better than a milder one.  Then the empty-site test is offered on top
    (``empty_site_alpha``, each of :data:`EMPTY_SITE_ALPHA`), judged on ``empty_site_images``
    per case since the errors it removes are rare; if one does strictly better, ``min_snr`` and
    the other classes' sure scores are chosen again with it on those images (it may let a
    milder ``min_snr`` keep more faint columns; the first class's sure score stays, as the test
    never judges that class).  Then, on the same images, a ``relative_score`` (each of
    :data:`RELATIVE_SCORES`) for the detections without a usable fit (HRTEM), kept if it does
    strictly better.  Last, lower thresholds of the other classes than the first (0.3 up to
    ``thresholds[1]``) for fit-checked detection (``class_thresholds`` in the rule, see
    :func:`~napari_atomnet.models.detector.class_thresholds`), kept if one does strictly
    better.

    ``validation``: the images' detections and refined runs when the caller has them already
    (:func:`_validation_runs` and :func:`_checked_runs` with ``max(n_images,
    empty_site_images)`` images per case at ``thresholds``), so they are computed once.

    Returns
    -------
    dict or None
        ``min_snr``, ``fit_ok``, ``sure_scores`` {class: score}, ``empty_site_alpha``,
        ``relative_score`` and ``class_thresholds`` (None when they did not help), the
        validation mean F1 ``without`` and ``with`` the first rule (``n_images`` per case) and
        ``extended_validation`` (the mean F1 on ``empty_site_images`` per case after each
        step); None when no rule improves on keeping every detection.
    """
    from ..models.detector import fit_confirmed

    classes = list(data.CLASSES)
    n_every = max(n_images, empty_site_images)
    if validation is None:
        raw = _validation_runs(predict, cases, seed, n_every, shape)
        validation = raw, _checked_runs(raw, n_every, thresholds)
    raw, every = validation
    few = [run for run in every if run[1] < n_images]

    def mean_f1(rule: dict[str, Any] | None, runs: list) -> float:
        return _mean_case_f1(
            (case, kept if rule is None else kept[fit_confirmed(kept, rule, classes, p)], t, d)
            for case, _, kept, p, t, d in runs
        )

    grids = [
        [t for t in THRESHOLDS if t >= thr] + [1.0] for thr in thresholds
    ]  # sure score = the class threshold: that class is never checked

    def search(
        best: tuple[float, dict[str, Any] | None],
        fit_oks: Iterable[bool],
        sure_grids: list[list[float]],
        alpha: float | None,
        runs: list,
    ) -> tuple[float, dict[str, Any] | None]:
        for fit_ok, min_snr in itertools.product(fit_oks, FIT_CHECK_SNR):
            for sure in itertools.product(*sure_grids):
                sure_scores = dict(zip(classes, map(float, sure), strict=True))
                rule = {
                    "min_snr": min_snr,
                    "fit_ok": fit_ok,
                    "sure_scores": sure_scores,
                    "empty_site_alpha": alpha,
                }
                f1 = mean_f1(rule, runs)
                if f1 > best[0] + 1e-9:
                    best = (f1, rule)
        return best

    without = mean_f1(None, few)
    first = search((without, None), (False, True), grids, None, few)
    if first[1] is None:
        return None
    rule = first[1]
    plain = mean_f1(rule, every)
    best = (plain, rule)
    for alpha in EMPTY_SITE_ALPHA:
        f1 = mean_f1({**rule, "empty_site_alpha": alpha}, every)
        if f1 > best[0] + 1e-9:
            best = (f1, {**rule, "empty_site_alpha": alpha})
    if best[1] is not rule:
        # the test only judges the other classes than the first: the first class keeps its
        # sure score, min_snr and the others' sure scores are chosen again
        sure_grids = [[rule["sure_scores"][classes[0]]], *grids[1:]]
        alpha = best[1]["empty_site_alpha"]
        best = search(best, (bool(rule["fit_ok"]),), sure_grids, alpha, every)
    # rows without a usable fit (HRTEM) are judged apart, by their score relative to the image's
    best = (best[0], {**best[1], "relative_score": None})
    checked = best
    for relative in RELATIVE_SCORES:
        candidate = {**checked[1], "relative_score": relative}
        f1 = mean_f1(candidate, every)
        if f1 > best[0] + 1e-9:
            best = (f1, candidate)
    scored = best
    # the check drops false faint detections: a lower threshold of the other classes may now
    # keep more real ones (the first class's threshold stays)
    best = (best[0], {**best[1], "class_thresholds": None})
    for lower in [t for t in THRESHOLDS if 0.3 <= t < thresholds[1]]:
        runs = _checked_runs(raw, n_every, (thresholds[0], lower))
        f1 = mean_f1(scored[1], runs)
        if f1 > best[0] + 1e-9:
            at = dict(zip(classes, map(float, (thresholds[0], lower)), strict=True))
            best = (f1, {**scored[1], "class_thresholds": at})
    return {
        **best[1],
        "validation_mean_f1": {"without": round(without, 5), "with": round(first[0], 5)},
        "extended_validation": {  # 6 decimals: one detection in 288 images moves the 6th
            "images_per_case": n_every,
            "mean_f1_first_rule": round(plain, 6),
            "mean_f1_with_empty_site_test": round(checked[0], 6),
            "mean_f1_with_relative_score": round(scored[0], 6),
            "mean_f1": round(best[0], 6),
        },
    }


def _case_metrics(result: dict[str, dict[float, dict[str, float]]]) -> dict[str, dict]:
    """Per-case metrics of :func:`evaluate_model` at the lowest threshold, rounded for a card."""
    return {
        case: {
            k: (round(v, 5) if isinstance(v, float) else v)
            for k, v in by_threshold[THRESHOLDS[0]].items()
        }
        for case, by_threshold in result.items()
    }


def best_threshold(result: dict[str, dict[float, dict[str, float]]]) -> float:
    """Return the threshold with the highest mean F1 over the cases (the lower one on ties)."""
    thresholds = sorted(next(iter(result.values())))
    mean_f1 = [np.mean([result[c][t]["f1"] for c in result]) for t in thresholds]
    return float(thresholds[int(np.argmax(mean_f1))])


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def lr_schedule(step: int, steps: int, lr: float, warmup: int) -> float:
    """Learning rate at ``step``: linear warm-up, then cosine decay to 2 % of ``lr``.

    Examples
    --------
    >>> lr_schedule(0, 100, 1.0, 10), lr_schedule(10, 100, 1.0, 10)
    (0.1, 1.0)
    >>> round(lr_schedule(99, 100, 1.0, 0), 3)
    0.02
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = (step - warmup) / max(1, steps - warmup)
    return lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac)))


def train_step(
    model: Any,
    opt: Any,
    batch: dict[str, Any],
    *,
    lr: float,
    loss: str | Sequence[tuple[str, slice, float]] = "focal",
    size_weight: float = 0.2,
    clip: float = 5.0,
    precision: str = "fp32",
) -> tuple[float, float]:
    """One optimisation step on a batch (shared by training and fine-tuning).

    Parameters
    ----------
    model : AtomDetector
        In training mode.
    opt : torch.optim.Optimizer
        Its optimiser; every parameter group gets the learning rate ``lr``.
    batch : dict
        From :func:`~napari_atomnet.training.data.sample_batch` (numpy arrays) or
        :meth:`~napari_atomnet.training.data.DevicePool.sample` (tensors); it goes to the
        model's device.
    lr : float
        Learning rate of this step.
    loss : str or sequence of (str, slice, float)
        Heatmap loss (see :func:`heatmap_loss`), or one per part of the batch (kind, samples,
        weight), each normalised by its own columns, weighted and summed (fine-tuning distils
        with "mse" on the simulated crops).
    size_weight : float
        Weight of the box-size loss.
    clip : float
        Gradient-norm clip.
    precision : {"fp32", "bf16"}
        "bf16" runs the forward pass under bfloat16 autocast on channels-last input (the model
        should be channels-last too, see :func:`use_precision`); losses stay float32.

    Returns
    -------
    heatmap_loss, size_loss : float
    """
    import torch

    device = next(model.parameters()).device

    def tensor(key: str) -> Any:
        return torch.as_tensor(batch[key]).to(device, non_blocking=True)

    x, heat, weight = tensor("image"), tensor("heat"), tensor("weight")
    _check_precision(precision)
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits, log_size = model(x.contiguous(memory_format=torch.channels_last))
        logits, log_size = logits.float(), log_size.float()
    else:
        logits, log_size = model(x)
    parts = [(loss, slice(None), 1.0)] if isinstance(loss, str) else loss
    l_hm = sum(w * heatmap_loss(logits[i], heat[i], weight[i], kind) for kind, i, w in parts)
    l_sz = size_loss(log_size, tensor("log_size"), tensor("size_mask"))
    total = l_hm + size_weight * l_sz
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return float(l_hm.item()), float(l_sz.item())


def _check_precision(precision: str, choices: Sequence[str] = PRECISIONS) -> None:
    if precision not in choices:
        raise ValueError(f"precision must be one of {tuple(choices)}, not {precision!r}")


def resolve_precision(precision: str) -> str:
    """Return the training precision to use for ``precision`` ("auto" decided by the CPU).

    Parameters
    ----------
    precision : {"auto", "fp32", "bf16"}
        "auto" is "bf16" on CPUs with native bfloat16 arithmetic (AVX512-BF16 or AMX), where
        steps run about 1.7-1.9x faster, and "fp32" elsewhere (emulated bfloat16 is slower).

    Returns
    -------
    str
        "fp32" or "bf16".
    """
    _check_precision(precision, PRECISION_CHOICES)
    if precision != "auto":
        return precision
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, may go away
    native = any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)
    return "bf16" if native else "fp32"


def use_precision(model: Any, precision: str) -> Any:
    """Put a model in the memory format its training precision wants (in place).

    Parameters
    ----------
    model : torch.nn.Module
        The network.
    precision : {"fp32", "bf16"}
        "bf16" trains channels-last (oneDNN's fast bfloat16 convolutions); "fp32" keeps the
        default layout, so float32 runs reproduce the shipped models exactly.

    Returns
    -------
    torch.nn.Module
        The same model.
    """
    import torch

    _check_precision(precision)
    fmt = torch.channels_last if precision == "bf16" else torch.contiguous_format
    return model.to(memory_format=fmt)


def train(cfg: TrainConfig, pool: list[data.Example] | None = None) -> tuple[Any, dict]:
    """Train a detector; returns the model and a history dict.

    Parameters
    ----------
    cfg : TrainConfig
        Hyper-parameters.
    pool : list of Example, optional
        Training images (default: :func:`~napari_atomnet.training.data.make_pool` from
        ``cfg.seed``).

    Returns
    -------
    model : AtomDetector
    history : dict
        ``loss`` (per logged step), ``val`` (mean F1 per validation), ``pool_s``, ``train_s``.
    """
    import torch

    from .nets import AtomDetector, count_parameters

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    cfg.precision = resolve_precision(cfg.precision)  # the record says what was used
    device = training_device(cfg.device)  # before the pool: a missing GPU fails at once
    if cfg.time_budget_min and cfg.warmup < BUDGET_PROBE[1]:
        raise ValueError(f"a time budget needs a warm-up of at least {BUDGET_PROBE[1]} steps")
    ss = np.random.SeedSequence(cfg.seed)
    pool_ss, batch_ss = ss.spawn(2)
    history: dict[str, Any] = {"loss": [], "val": []}
    t0 = time.perf_counter()
    if pool is None:
        _log(f"simulating {cfg.pool} training images ({cfg.workers} processes)")
        step = max(1, cfg.pool // 10)

        def progress(done: int, total: int) -> None:
            if done % step == 0 or done == total:
                _log(f"  pool {done}/{total}")

        pool = data.make_pool(
            cfg.pool,
            pool_ss,
            shape=(cfg.sim_shape, cfg.sim_shape),
            pad=cfg.pad,
            border_fill=cfg.border_fill,
            hole_weight=cfg.hole_weight,
            vacuum_weight=cfg.vacuum_weight,
            workers=cfg.workers,
            progress=progress,
            mix=cfg.mix,
            graphene=cfg.graphene,
        )
    history["pool_s"] = time.perf_counter() - t0
    counts = {k: sum(e.source == k for e in pool) for k in cfg.mix}
    _log(f"pool ready in {history['pool_s']:.0f} s: {counts}")

    model = AtomDetector(classes=len(data.CLASSES), channels=tuple(cfg.channels))
    if cfg.init:
        model.load_state_dict(torch.load(cfg.init, map_location="cpu"))
        _log(f"starting from {cfg.init}")
    _log(f"AtomDetector {cfg.channels}: {count_parameters(model)} parameters")
    use_precision(model.to(device), cfg.precision)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if device.type == "cpu":

        def next_batch() -> dict[str, Any]:
            return data.sample_batch(pool, rng, cfg.batch, cfg.crop, len(data.CLASSES))

    else:
        # crops cut on the GPU: the same batches as sample_batch, without the host in the loop
        torch.backends.cudnn.benchmark = True
        on_device = data.DevicePool(pool, device, len(data.CLASSES))
        _log(f"pool on {device_name(device)}: {on_device.image.shape}")

        def next_batch() -> dict[str, Any]:
            return on_device.sample(rng, cfg.batch, cfg.crop)

    def lr_at(step: int) -> float:
        return lr_schedule(step, cfg.steps, cfg.lr, cfg.warmup)

    rng = np.random.default_rng(batch_ss)
    t1 = time.perf_counter()
    run = {"hm": 0.0, "sz": 0.0, "n": 0}
    model.train()
    history["stopped_at"] = None
    budget_open = bool(cfg.time_budget_min)  # the step count is not known yet
    for step in itertools.count():
        if step == BUDGET_PROBE[0]:
            t_probe = time.perf_counter()
        if budget_open and step == BUDGET_PROBE[1]:
            cfg.steps = budgeted_steps(
                step,
                (time.perf_counter() - t_probe) / (BUDGET_PROBE[1] - BUDGET_PROBE[0]),
                60.0 * cfg.time_budget_min - (time.perf_counter() - t1),
            )
            budget_open = False
            _log(f"time budget of {cfg.time_budget_min} min: {cfg.steps} steps in all")
        if step >= cfg.steps and not budget_open:
            break
        if cfg.time_limit_min and time.perf_counter() - t0 > 60.0 * cfg.time_limit_min:
            history["stopped_at"] = step
            _log(f"time limit of {cfg.time_limit_min} min reached: stopping at step {step}")
            break
        l_hm, l_sz = train_step(
            model,
            opt,
            next_batch(),
            lr=lr_at(step),
            loss=cfg.loss,
            size_weight=cfg.size_weight,
            precision=cfg.precision,
        )
        run["hm"] += l_hm
        run["sz"] += l_sz
        run["n"] += 1
        if (step + 1) % 100 == 0 or step + 1 == cfg.steps:
            el = time.perf_counter() - t1
            of = "?" if budget_open else cfg.steps
            _log(
                f"step {step + 1}/{of} heatmap {run['hm'] / run['n']:.4f} "
                f"size {run['sz'] / run['n']:.4f} lr {lr_at(step):.2e} "
                f"({el / (step + 1):.3f} s/step)"
            )
            history["loss"].append((step + 1, run["hm"] / run["n"], run["sz"] / run["n"]))
            run = {"hm": 0.0, "sz": 0.0, "n": 0}
        if cfg.val_every and (step + 1) % cfg.val_every == 0 and step + 1 < cfg.steps:
            res = quick_validation(model, cfg)
            model.train()
            history["val"].append((step + 1, res))
    history["train_s"] = time.perf_counter() - t1
    history["device"] = device_name(device)
    # on the CPU in the default layout again, for evaluation and export
    use_precision(model.to("cpu"), "fp32")
    model.eval()
    return model, history


def budgeted_steps(step: int, seconds_per_step: float, seconds_left: float) -> int:
    """Count the steps of a run with a time budget, ``step`` of them done.

    Parameters
    ----------
    step : int
        Steps done (at least the learning-rate warm-up's, which does not depend on the count).
    seconds_per_step : float
        Measured time of one step.
    seconds_left : float
        What is left of the budget; 5 % of it is kept for the validations on the way.

    Returns
    -------
    int
        The run's total step count (at least ``step``).

    Examples
    --------
    >>> budgeted_steps(300, 0.01, 100.0)
    9800
    """
    if seconds_per_step <= 0:
        raise ValueError(f"seconds_per_step must be positive, got {seconds_per_step}")
    return step + max(int(0.95 * seconds_left / seconds_per_step), 0)


def training_device(device: str) -> Any:
    """Return the torch device a run asks for, checking that this machine has it.

    Parameters
    ----------
    device : str
        "cpu", "cuda" or "cuda:N".

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        Any other name, or a CUDA device that torch does not see here.
    """
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}: use cpu or cuda") from err
    if dev.type not in DEVICES:
        raise ValueError(f"unknown device {device!r}: use cpu or cuda")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= count:
            raise ValueError(f"device {device!r} asked for, but torch sees {count} CUDA devices")
    return dev


def device_name(device: Any) -> str:
    """Describe a training device for logs and the model card ("2-core CPU", the GPU's name)."""
    import torch

    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"{os.cpu_count()}-core CPU, torch.set_num_threads({torch.get_num_threads()})"


def validation_cases(mix: dict[str, float]) -> list[str]:
    """List the validation cases of the simulators a training mix draws from.

    Parameters
    ----------
    mix : dict
        Share of each simulator (``lattice``, ``perovskite``, ``graphene``).

    Returns
    -------
    list of str
        Keys of :data:`~napari_atomnet.training.data.VALIDATION_CASES`, in their order.

    Examples
    --------
    >>> validation_cases({"graphene": 1.0})
    ['graphene_bright_1e4', 'graphene_dark_1e4']
    """
    used = {k for k, v in mix.items() if v > 0}
    return [c for c in data.VALIDATION_CASES if data.case_simulator(c) in used]


def quick_validation(model: Any, cfg: TrainConfig) -> dict[str, float]:
    """F1 at threshold 0.3 per validation case with the torch model (a few images each)."""
    norm = dict(data.DEFAULT_NORMALIZATION)
    res = evaluate_model(
        lambda img: torch_peaks(model, img, norm, cfg.pad, cfg.border_fill),
        validation_cases(cfg.mix),
        VAL_SEED,
        cfg.val_images,
    )
    f1 = {c: round(r[0.3]["f1"], 4) for c, r in res.items()}
    _log("validation F1@0.3 " + json.dumps(f1))
    return f1


# --------------------------------------------------------------------------------------------
# inference speed
# --------------------------------------------------------------------------------------------
def inference_ms_per_mp(onnx_path: Path, size: int = 1024, repeats: int = 3) -> float:
    """Best-of-``repeats`` onnxruntime CPU time of one (1, 1, size, size) input, ms per MP."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(1, 1, size, size)).astype(np.float32)
    session.run(None, {"image": x})
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        session.run(None, {"image": x})
        best = min(best, time.perf_counter() - t)
    return 1000.0 * best / (size * size / 1e6)


def detect_ms_per_mp(onnx_path: Path, tile: int, size: int = 2048) -> float:
    """Wall time of :func:`~napari_atomnet.models.detector.detect_atoms` on a size² image."""
    from ..models.detector import detect_atoms

    sim = data.validation_image("perovskite_dose200", TEST_SEED, (size, size))
    # a pixel size inside a one-sampling model's range: time detection, not the search
    px = data.VALIDATION_SAMPLING / 10
    detect_atoms(sim.image, model=str(onnx_path), tile=tile, device="cpu", pixel_size_nm=px)
    t = time.perf_counter()
    detect_atoms(sim.image, model=str(onnx_path), tile=tile, device="cpu", pixel_size_nm=px)
    return 1000.0 * (time.perf_counter() - t) / (size * size / 1e6)


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
_SIMULATORS = {
    "lattice": "synth.lattice_image(**synth.lattice.random_lattice_params(rng)): square, "
    "rectangular, hexagonal, honeycomb, oblique, perovskite, rocksalt with random bases; "
    "spacing 6-40 px, column sigma 0.08-0.5 spacing, bright or dark (35 %), dose 8-5000 "
    "counts/peak, backgrounds + gradients, interfaces (20 %), surfaces (20 %), "
    "vacancies, jitter, detector MTF (50 %)",
    "perovskite": "synth.perovskite_haadf: spacing 8-40 px (log-uniform), sigma 0.08-0.2 "
    "spacing, dose 8-2000 (log-uniform), B/A 0.15-0.6, polarization 0-0.1, 90/180 "
    "domain walls, strain, vacancies 0-5 %, dislocation (30 %), any rotation, scan "
    "jitter, drift",
    "graphene": "synth.graphene_hrtem (seed 003): Table 1 CTF draws (defocus +-200 A, Cs "
    "+-20 um, C5, astigmatism, focal spread; {aligned} % of the draws aligned: |defocus| <= "
    "120 A, |Cs| <= 20 um, astigmatism <= 10 A), MTF, dose "
    f"{data.HRTEM_DOSE[0]:g}-{data.HRTEM_DOSE[1]:g} e/A^2 (log-uniform), {{holes}} holes, "
    "sampling {sampling} A/px (scale jitter); columns ignored when the clean image "
    f"correlates < {data.MIN_HRTEM_CONTRAST} with the atom map",
}


def _training_record(cfg: TrainConfig, history: dict, wall: float) -> dict[str, Any]:
    """Return the model card's ``training`` section of a run that just trained."""
    return {
        "recipe": _recipe(cfg),
        "config": cfg.as_dict(),
        "seed": cfg.seed,
        "steps": cfg.steps,
        "stopped_at_step": history.get("stopped_at"),
        "pool_seconds": round(history["pool_s"], 1),
        "train_seconds": round(history["train_s"], 1),
        "wall_time_seconds": round(wall, 1),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "machine": history["device"],
        "final_loss": history["loss"][-1][1:] if history["loss"] else None,
        "loss_history": history["loss"],
        "validation_history": history["val"],
    }


def _recipe(cfg: TrainConfig) -> dict[str, Any]:
    from ..models.registry import file_sha256

    start = (
        {
            "init": f"started from the weights {Path(cfg.init).name} (sha256 "
            f"{file_sha256(cfg.init)[:16]}), not at random"
        }
        if cfg.init
        else {}
    )
    return {
        "simulators": {k: _simulator_text(k, cfg) for k in _SIMULATORS if cfg.mix.get(k, 0) > 0},
        **start,
        "mix": cfg.mix,
        "pool_images": cfg.pool,
        "image_size": cfg.sim_shape,
        "border": (
            f"reflection padding {cfg.pad} px, mirrored labels (as tiles see borders)"
            if cfg.border_fill == "reflect"
            else f"padding {cfg.pad} px of zeros after normalisation (inference zeroes what lies "
            "beyond the image), no labels there"
        ),
        "augmentation": f"random {cfg.crop} px crops, flips, 90 degree rotations, gamma 0.7-1.4 "
        "(30 %)",
        "orientation": "images with dark atoms (ABF, dark lattices, HRTEM at the other CTF "
        "sign) are negated after normalisation: the network learns bright atoms only and "
        "inference is told the contrast (polarity) or guesses it",
        "targets": "Gaussian blob per column, sigma_t = clip(0.12 nn, 1, 3) px, maximum of blobs "
        f"per class; classes {list(data.CLASSES)} (weak: column type below "
        f"{data.WEAK_RATIO} of the strongest of its lattice); box side min(5 sigma_column, nn); "
        f"columns with matched-filter SNR < {data.MIN_SNR} ignored",
        "loss": f"{cfg.loss} heatmap loss + {cfg.size_weight} x L1(log box side); heatmap loss "
        f"weight {data.BORDER_WEIGHT:g} within 3 px of an image edge"
        + (
            f", {cfg.hole_weight:g} within 1.5 sigma_t of the holes of the column arrangement "
            "(Voronoi vertices: empty cell centres, hexagon centres, vacancies)"
            if cfg.hole_weight != 1
            else ""
        )
        + (
            f", {cfg.vacuum_weight:g} in vacuum (farther than {data.VACUUM_SPACINGS:g} spacings "
            "from every column)"
            if cfg.vacuum_weight != 1
            else ""
        ),
        "optimizer": f"AdamW lr {cfg.lr} (warm-up {cfg.warmup}, cosine), weight decay "
        f"{cfg.weight_decay}, batch {cfg.batch}, grad-norm clip 5"
        + (f"; {BF16_TEXT}" if cfg.precision == "bf16" else ""),
    }


def graphene_sampling(cfg: TrainConfig) -> tuple[float, float]:
    """Return the sampling range (Å/px) a run draws its graphene images from."""
    low, high = cfg.graphene.get("sampling", data.DEFAULT_GRAPHENE_DRAWS["sampling"])
    return float(low), float(high)


def _simulator_text(kind: str, cfg: TrainConfig) -> str:
    """Describe how the run draws a simulator's images (the card's recipe)."""
    if kind != "graphene":
        return _SIMULATORS[kind]
    holes = [float(p) for p in cfg.graphene["holes"]]
    total = sum(holes)
    counts = (
        f"0-{len(holes) - 1} (probabilities " + "/".join(f"{p / total:.2g}" for p in holes) + ")"
    )
    low, high = graphene_sampling(cfg)
    return _SIMULATORS[kind].format(
        aligned=f"{100 * float(cfg.graphene['aligned']):g}",
        holes=counts,
        sampling=f"{low:g}-{high:g}",
    )


def _parse_probabilities(text: str, option: str, parser: argparse.ArgumentParser) -> list[float]:
    try:
        values = [float(p) for p in text.split(",")]
    except ValueError:
        parser.error(f"{option}: {text!r} is not a list of numbers like 0.2,0.2,0.2,0.2,0.2")
    if not all(v >= 0 for v in values) or sum(values) <= 0:
        parser.error(f"{option}: the probabilities must be >= 0 and not all 0")
    return values


def _parse_mix(text: str, parser: argparse.ArgumentParser) -> dict[str, float]:
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, _, share = part.partition("=")
        name = name.strip()
        if name not in data.DEFAULT_MIX:
            parser.error(
                f"--mix: unknown simulator {name!r} (one of {', '.join(data.DEFAULT_MIX)})"
            )
        try:
            mix[name] = float(share)
        except ValueError:
            parser.error(f"--mix: {part!r} is not NAME=SHARE")
        if not mix[name] >= 0:
            parser.error(f"--mix: the share of {name} must be >= 0")
    if sum(mix.values()) <= 0:
        parser.error("--mix: the shares add up to 0")
    return mix


def _phase_contrast_only(mix: dict[str, float]) -> bool:
    """Whether a training mix holds HRTEM (phase-contrast) simulations only."""
    return {k for k, v in mix.items() if v > 0} == {"graphene"}


def _description(mix: dict[str, float]) -> str:
    if _phase_contrast_only(mix):
        return (
            "Atom detector for HRTEM (phase-contrast) images of graphene-like 2D materials, "
            "trained on napari-atomnet's own graphene HRTEM simulations only (seed 003's recipe)."
        )
    return (
        "Atom-column detector for atomic-resolution (S)TEM and HRTEM images (HAADF, ABF, phase "
        "contrast), trained on napari-atomnet's own simulations only."
    )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the .onnx + .json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny run for tests")
    parser.add_argument("--name", default=NAME)
    parser.add_argument("--pool", type=int, default=None)
    parser.add_argument("--loss", default=None, choices=["focal", "centernet", "mse"])
    parser.add_argument("--channels", default=None, help="e.g. 16,32,48,64")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--val-every", type=int, default=None)
    parser.add_argument("--test-images", type=int, default=None)
    parser.add_argument(
        "--threshold-images",
        type=int,
        default=None,
        help="validation images per case on which the thresholds are chosen (default "
        f"{TrainConfig().threshold_images})",
    )
    parser.add_argument("--no-speed", action="store_true", help="skip the timing measurements")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 2)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help=f"processes simulating the pool (default {TrainConfig().workers})",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="where the network trains: cpu (default; the recipes) or cuda (a GPU holds and "
        "crops the pool; simulation, evaluation and export stay on the CPU)",
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="train for as many steps as fit in this many minutes, timed over steps "
        f"{BUDGET_PROBE[0]}-{BUDGET_PROBE[1]} (overrides --steps; the card records the count, "
        "and --steps with it repeats the run)",
    )
    parser.add_argument(
        "--train-only",
        action="store_true",
        help="stop after training: write the weights (--save-torch) and the training record "
        "(<out>/<name>.training.json); --weights/--record then do the evaluation and export "
        "(e.g. on another machine)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default=None,
        help="bf16: forward passes under bfloat16 autocast, channels-last (about 1.9x faster "
        "steps on CPUs with AVX512-BF16, about 10x slower on CPUs without it; weights, "
        "optimiser and export stay float32); auto: bf16 where the CPU has native bfloat16, "
        f"fp32 elsewhere (the card records which); default {TrainConfig().precision}",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="safety stop of the training loop after this many minutes (default: none)",
    )
    parser.add_argument(
        "--border-fill",
        choices=data.BORDER_FILLS,
        default=None,
        help="what the padding beyond an image's edge holds in training and inference "
        f"(default {TrainConfig().border_fill})",
    )
    parser.add_argument(
        "--hole-weight",
        type=float,
        default=None,
        help="heatmap loss weight at the holes of the column arrangement (default "
        f"{TrainConfig().hole_weight:g})",
    )
    parser.add_argument(
        "--vacuum-weight",
        type=float,
        default=None,
        help="heatmap loss weight in vacuum, far from every column (default "
        f"{TrainConfig().vacuum_weight:g})",
    )
    parser.add_argument(
        "--mix",
        default=None,
        help="share of each simulator, e.g. graphene=1 (default "
        + ",".join(f"{k}={v:g}" for k, v in data.DEFAULT_MIX.items())
        + "); validation uses the cases of the simulators drawn from",
    )
    parser.add_argument(
        "--graphene-holes",
        default=None,
        help="probabilities of 0, 1, 2, ... holes in a graphene image (default "
        + ",".join(f"{p:g}" for p in data.DEFAULT_GRAPHENE_DRAWS["holes"])
        + ")",
    )
    parser.add_argument(
        "--aligned-share",
        type=float,
        default=None,
        help="share of graphene images at an aligned microscope (default "
        f"{data.DEFAULT_GRAPHENE_DRAWS['aligned']:g})",
    )
    parser.add_argument(
        "--graphene-sampling",
        default=None,
        help="range of graphene sampling, Å/px, as LOW,HIGH (default "
        + ",".join(f"{v:g}" for v in data.DEFAULT_GRAPHENE_DRAWS["sampling"])
        + ")",
    )
    parser.add_argument(
        "--init",
        type=Path,
        default=None,
        help="start from these weights (a --save-torch file) instead of at random",
    )
    parser.add_argument("--save-torch", type=Path, default=None, help="also save the weights")
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="skip training: load these weights (a --save-torch file) and redo the threshold "
        "choice, the held-out metrics and the export; the training record is taken from "
        "--record (the card the run wrote)",
    )
    parser.add_argument("--record", type=Path, default=None, help="model card of the run")
    parser.add_argument(
        "--evaluate-onnx",
        type=Path,
        default=None,
        help="skip training: take this network (an .onnx written by this trainer; its embedded "
        "card gives the training record) and redo the threshold choice, the held-out metrics "
        "and the card; the graph and weights are copied unchanged",
    )
    args = parser.parse_args(argv)
    if (args.weights is None) != (args.record is None):
        parser.error("--weights and --record go together")
    if args.evaluate_onnx is not None:
        if args.weights is not None or args.train_only or args.save_torch is not None:
            parser.error("--evaluate-onnx takes none of --weights, --train-only, --save-torch")
        if not args.evaluate_onnx.is_file():
            parser.error(f"--evaluate-onnx: no such file {args.evaluate_onnx}")
    if args.train_only and (args.save_torch is None or args.weights is not None):
        parser.error("--train-only needs --save-torch (and no --weights)")
    # Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning threads
    # made training steps 3-5x slower.  Must be set before torch starts its thread pool.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    t_start = time.perf_counter()
    cfg = TrainConfig(seed=args.seed)
    if args.quick:
        cfg = TrainConfig(
            seed=args.seed,
            steps=4,
            pool=6,
            batch=2,
            crop=64,
            sim_shape=96,
            pad=16,
            val_every=0,
            val_images=1,
            test_images=1,
            workers=1,
        )
    if args.threads:
        cfg.threads = args.threads
    if args.time_limit:
        cfg.time_limit_min = args.time_limit
    if args.time_budget is not None:
        if args.time_budget <= 0:
            parser.error("--time-budget must be positive (minutes)")
        cfg.time_budget_min = args.time_budget
    options = ("steps", "pool", "loss", "lr", "batch", "val_every")
    evaluation = ("test_images", "threshold_images")  # also apply to a redone evaluation
    extra = ("border_fill", "hole_weight", "vacuum_weight", "precision", "workers", "device")
    for key in (*options, *evaluation, *extra):
        value = getattr(args, key)
        if value is not None:
            setattr(cfg, key, value)
    if args.channels:
        cfg.channels = tuple(int(c) for c in args.channels.split(","))
    if args.mix:
        cfg.mix = _parse_mix(args.mix, parser)
    if args.graphene_holes:
        cfg.graphene["holes"] = _parse_probabilities(
            args.graphene_holes, "--graphene-holes", parser
        )
    if args.aligned_share is not None:
        if not 0 <= args.aligned_share <= 1:
            parser.error("--aligned-share must lie in [0, 1]")
        cfg.graphene["aligned"] = args.aligned_share
    if args.graphene_sampling:
        try:
            low, high = (float(v) for v in args.graphene_sampling.split(","))
        except ValueError:
            parser.error("--graphene-sampling takes two numbers, LOW,HIGH (Å/px)")
        if not 0.03 <= low <= high <= 0.5:
            parser.error("--graphene-sampling must satisfy 0.03 <= LOW <= HIGH <= 0.5 (Å/px)")
        cfg.graphene["sampling"] = [low, high]
    if args.init:
        if not args.init.is_file():
            parser.error(f"--init: no such file {args.init}")
        cfg.init = str(args.init)
    try:
        training_device(cfg.device)
    except ValueError as err:
        parser.error(f"--device: {err}")

    import onnx
    import torch

    from .export import embedded_card, export_detector, rewrite_card
    from .nets import ARCHITECTURE, count_parameters, receptive_field

    def write_network(path: Path, card_info: dict[str, Any]) -> dict[str, Any]:
        # the trained network exported, or the network taken copied with the new card
        if args.evaluate_onnx is not None:
            return rewrite_card(args.evaluate_onnx, path, card_info)
        return export_detector(model, path, card_info)

    record: dict[str, Any] | None = None
    network: dict[str, Any] | None = None  # --evaluate-onnx: the card of the network taken
    model: Any = None
    if args.weights is not None or args.evaluate_onnx is not None:
        if args.evaluate_onnx is not None:
            network = embedded_card(args.evaluate_onnx)
            record = network["training"]
        else:
            record = json.loads(args.record.read_text())["training"]
        cfg = TrainConfig(**{**record["config"], "channels": tuple(record["config"]["channels"])})
        for key in evaluation:
            if getattr(args, key) is not None:
                setattr(cfg, key, getattr(args, key))
        history: dict[str, Any] = {}
        if args.weights is not None:
            from .nets import AtomDetector

            model = AtomDetector(classes=len(data.CLASSES), channels=tuple(cfg.channels))
            model.load_state_dict(torch.load(args.weights, map_location="cpu"))
            model.eval()
            _log(f"loaded {args.weights}; training record from {args.record}")
        else:
            _log(f"evaluating {args.evaluate_onnx}; training record from its card")
        _log(f"config {json.dumps(cfg.as_dict())}")
    else:
        _log(f"config {json.dumps(cfg.as_dict())}")
        model, history = train(cfg)
    if args.save_torch:
        torch.save(model.state_dict(), args.save_torch)
    if args.train_only:
        path = Path(args.out) / f"{args.name}.training.json"
        training = _training_record(cfg, history, time.perf_counter() - t_start)
        write_text_atomic(path, json.dumps({"training": training}, indent=1), overwrite=True)
        _log(f"wrote {args.save_torch} and {path}; evaluate and export with --weights/--record")
        return 0
    if network is not None:
        rf = network["architecture"]["receptive_field_px"]
        architecture, pad_multiple = network["architecture"], network["pad_multiple"]
    else:
        rf = receptive_field(model, 384 if args.quick else 512)
        architecture = {
            "class": ARCHITECTURE,
            "channels": list(cfg.channels),
            "parameters": count_parameters(model),
            "receptive_field_px": rf,
        }
        pad_multiple = model.pad_multiple
    if cfg.margin < (rf + 1) // 2:
        cfg.margin = int(math.ceil((rf + 1) / 2 / 16) * 16)
    _log(f"receptive field {rf} px, margin {cfg.margin} px")

    out = Path(args.out)
    onnx_path = out / f"{args.name}.onnx"
    card: dict[str, Any] = {
        "name": args.name,
        "version": VERSION,
        "description": _description(cfg.mix),
        "classes": list(data.CLASSES),
        "stride": 1,
        "pad_multiple": pad_multiple,
        "margin": cfg.margin,
        "border": cfg.pad,  # padding at image borders, as the training images were padded
        "border_fill": cfg.border_fill,
        "hole_weight": cfg.hole_weight,  # fine-tuning keeps the recipe's target weights
        "vacuum_weight": cfg.vacuum_weight,
        "tile": cfg.tile,
        "default_threshold": 0.3,
        "normalization": dict(data.DEFAULT_NORMALIZATION),
        "atoms": "bright",  # dark-atom images are negated before the network (detect_atoms)
        # phase contrast only: the image's look does not tell the atoms' contrast, the model does
        **({"contrast_guess": "model"} if _phase_contrast_only(cfg.mix) else {}),
        # one material, so one physical scale: images of a known pixel size outside the range
        # the model learnt are resampled into it (detect_atoms)
        # (and graphene's bond, by which the sampling of an uncalibrated image is found)
        **(
            {"sampling_angstrom": list(graphene_sampling(cfg)), "spacing_angstrom": BOND_ANGSTROM}
            if _phase_contrast_only(cfg.mix)
            else {}
        ),
        "design": DESIGN,
        "architecture": architecture,
    }
    write_network(onnx_path, card)

    # threshold on the validation images, metrics on the test images (both held out)
    from ..models.detector import confident, detect_atoms

    def predict(img: np.ndarray) -> Any:
        # validation images come oriented (atoms bright): tell detect_atoms, do not guess
        return detect_atoms(
            img,
            model=str(onnx_path),
            threshold=THRESHOLDS[0],
            device="cpu",
            polarity="bright",
            pixel_size_nm=data.VALIDATION_SAMPLING / 10,  # a one-sampling model: no search
        ).table

    cases = validation_cases(cfg.mix)
    shape = (256, 256)
    if args.quick:
        cases, shape = cases[:2], (96, 96)
    _log("choosing the thresholds on the validation images")
    n_threshold = max(cfg.val_images, cfg.threshold_images)
    thr, weak_thr, val_f1 = best_class_thresholds(predict, cases, VAL_SEED, n_threshold, shape)
    _log(f"thresholds: strong {thr}, weak {weak_thr} (validation mean F1 {val_f1:.4f})")
    _log("scoring the test images")
    test = evaluate_model(predict, cases, TEST_SEED, cfg.test_images, shape)

    def predict_at_class_thresholds(img: np.ndarray) -> Any:
        return confident(predict(img), [thr, weak_thr])

    chosen = evaluate_model(predict_at_class_thresholds, cases, TEST_SEED, cfg.test_images, shape)
    _log("choosing the fit check on the validation images")
    empty_images = FIT_CHECK_IMAGES if args.quick else EMPTY_SITE_IMAGES
    n_every = max(FIT_CHECK_IMAGES, empty_images)
    raw = _validation_runs(predict, cases, VAL_SEED, n_every, shape)
    runs = _checked_runs(raw, n_every, (thr, weak_thr))  # judged by the fit check and below
    fit_check = best_fit_check(
        predict,
        cases,
        VAL_SEED,
        FIT_CHECK_IMAGES,
        shape,
        (thr, weak_thr),
        empty_site_images=empty_images,
        validation=(raw, runs),
    )
    _log(f"fit check: {fit_check}")
    refined_share = fits_used(runs, REFINE_IMAGES)
    # refine by default unless most validation images keep the detected positions anyway
    refine_default = float(np.mean(list(refined_share.values()))) >= 0.5
    _log(f"images whose positions come from the fits: {refined_share}; refine {refine_default}")
    checked_metrics: dict[str, Any] = {}
    if fit_check is not None:
        from ..models.detector import fit_check as apply_fit_check

        checked_at = list((fit_check.get("class_thresholds") or {}).values()) or [thr, weak_thr]

        def predict_checked(img: np.ndarray) -> Any:
            refined = _refined(img, confident(predict(img), checked_at))
            keep = apply_fit_check(img, refined, fit_check, list(data.CLASSES), "bright")
            return refined[keep]

        checked = evaluate_model(predict_checked, cases, TEST_SEED, cfg.test_images, shape)
        checked_metrics = _case_metrics(checked)
    metrics = _case_metrics(chosen)
    for c in cases:
        _log(
            f"  {c}: F1 {metrics[c]['f1']:.4f} (tp {metrics[c]['tp']}, fp {metrics[c]['fp']}, "
            f"fn {metrics[c]['fn']}), strict F1 {metrics[c]['f1_strict']:.4f}, "
            f"rmse {metrics[c]['rmse_px']:.3f} px"
        )
    speed: dict[str, Any] = {}
    if not args.no_speed and not args.quick:
        speed["onnxruntime_ms_per_mp_1024"] = round(inference_ms_per_mp(onnx_path), 1)
        by_tile = {tile: detect_ms_per_mp(onnx_path, tile) for tile in (512, 1024, 2048)}
        for tile, ms in by_tile.items():
            speed[f"detect_atoms_ms_per_mp_2048_tile{tile}"] = round(ms, 1)
        card["tile"] = min(by_tile, key=by_tile.get)  # the faster core size
        speed["note"] = "onnxruntime CPU (default threads) on the 2-core training machine"
        _log(f"speed {speed}; tile {card['tile']}")
    wall = time.perf_counter() - t_start
    if record is not None:  # the record of the run, with this evaluation's settings
        training = {**record, "config": cfg.as_dict(), "evaluation_redone_seconds": round(wall, 1)}
    else:
        training = _training_record(cfg, history, wall)
    card.update(
        default_threshold=thr,
        class_thresholds={"strong": thr, "weak": weak_thr},
        fit_check=fit_check,
        refine_default=refine_default,
        training=training,
        validation={
            "images": "held-out simulations (seeds never used in training): "
            f"{n_threshold} per case (seed {VAL_SEED}+) to choose the strong and "
            "weak thresholds (grid 0.2-0.85, highest mean F1 over the cases), "
            f"{FIT_CHECK_IMAGES} per case (seed {VAL_SEED}+) to choose the fit check, "
            f"{EMPTY_SITE_IMAGES} per case (seed {VAL_SEED}+) for its empty-site test, "
            f"{REFINE_IMAGES} per case (seed {VAL_SEED}+) to decide whether to refine by "
            "default, "
            f"{cfg.test_images} per case (seed {TEST_SEED}+, 256x256) for these metrics",
            "matching_radius": "0.25 x median nearest-neighbour spacing",
            "scoring": "f1: columns whose centres lie just outside the image (up to 16 px; half "
            "of such a column is visible at the edge) are don't-care: a detection of one is "
            "neither a true nor a false positive. f1_strict: every detection not matched to a "
            "column inside the image counts as a false positive (plain detection_scores).",
            "cases": {c: data.VALIDATION_CASES[c] for c in cases},
            "metrics_at_default_threshold": metrics,
            "metrics_with_fit_check": checked_metrics,
            "images_refined_by_fits": refined_share,
            "mean_f1_by_single_threshold": {
                str(t): round(float(np.mean([test[c][t]["f1"] for c in cases])), 5)
                for t in THRESHOLDS
            },
        },
        speed=speed,
        torch_version=torch.__version__,
        onnx_version=onnx.__version__,
    )
    final = write_network(onnx_path, card)
    _log(
        f"wrote {onnx_path} ({onnx_path.stat().st_size / 1e6:.2f} MB), sha256 "
        f"{final['sha256'][:12]}, total {wall / 60:.1f} min"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
