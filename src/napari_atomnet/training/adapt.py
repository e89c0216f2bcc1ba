"""Adapt the HRTEM detector to one microscope's imaging conditions (issue 3).

In a phase-contrast image what an atom looks like depends on the microscope: defocus and
spherical aberration decide whether atoms are dark or bright and how far their contrast is
smeared over the neighbours (seed 003).  The built-in ``atomnet-hrtem`` is trained over a whole
range of aligned conditions, and pays for that breadth at any one of them.  Most users know
their conditions (the aberration corrector reports defocus and Cs); :func:`adapt_detector`
simulates graphene images at those conditions (:func:`simulate_conditions`, the project's own
:func:`~napari_atomnet.synth.graphene_hrtem` with each value drawn within a tolerance) and
trains a compact detector (:data:`ADAPT_CHANNELS`, with the built-in's classes and settings)
on them, from scratch by default
(:func:`~napari_atomnet.training.finetune.fine_tune_on`: the same training, held-out F1 before
and after, and atomic write as fine-tuning on corrected labels).

The adapted model is for those conditions: its card records them, and its held-out F1 is
measured on simulations at them (never trained on).  Away from them it can be worse than the
model it came from; keep using the built-in one there.

Needs the ``[train]`` extra (torch, onnx); importing this module does not.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import data
from .finetune import (
    FineTuneConfig,
    FineTuneResult,
    LabelledImage,
    ProgressCallback,
    fine_tune_on,
    prepare_fine_tuning,
)

if TYPE_CHECKING:
    from ..core.optics import ConditionsFit

__all__ = [
    "ImagingConditions",
    "adapt_config",
    "adapt_detector",
    "simulate_conditions",
]

#: Side of the simulated images (as in the training pool).
SIM_SHAPE = (256, 256)
#: Images whose atoms show less contrast than this (``synth.graphene_hrtem``'s measure) are
#: drawn again: near a contrast reversal the image shows no atoms to learn (as in training).
MIN_CONTRAST = data.MIN_HRTEM_CONTRAST
#: Default number of simulated images (a fifth held out) and of training steps: about
#: 1 + 6.5 minutes on a 2-core CPU that runs bfloat16 natively, 1 + 10 in float32.
ADAPT_IMAGES = 500
ADAPT_STEPS = 3000
#: Widths of the adapted network (trained from scratch), whatever the base model's: a detector
#: for one microscope's conditions needs less than one for all of them.  At these widths the
#: adaptation reached F1 0.9975 (dark atoms) and 1.000 (bright) on the benchmark's 10⁴ e/Å²
#: images with the conditions matched to the image (bench ``adapt_match``; the built-in
#: ``atomnet-hrtem``: 0.992 and 1.000).
ADAPT_CHANNELS = (16, 32, 48, 64)


@dataclass
class ImagingConditions:
    """A microscope's HRTEM imaging conditions, each with the tolerance it is known to.

    Attributes
    ----------
    defocus : float
        Defocus, Å (positive: underfocus, as :func:`~napari_atomnet.synth.graphene_hrtem`).
    cs_um : float
        Spherical aberration, µm.
    pixel_size_angstrom : float
        Sampling, Å per pixel.
    astig_max_angstrom : float
        Residual two-fold astigmatism, Å: drawn uniformly up to this.
    dose : float
        Electron dose, e/Å²: drawn log-uniformly within a factor 2 of it.
    voltage_kv : float
        Acceleration voltage, kV.
    defocus_tolerance, cs_tolerance_um : float
        Defocus and Cs are drawn uniformly within ± these of the given values.
    candidates : tuple of (float, float)
        (defocus, Cs) pairs the image is consistent with
        (:func:`~napari_atomnet.core.optics.fit_imaging_conditions`); when given, each image
        draws one of them and the tolerances around it (one grid step: the score changes
        sharply across the ridge of good matches, and the truth, which lies between grid points,
        has a neighbour among them), and ``defocus``, ``cs_um`` hold the best match.  Empty: draw
        around ``defocus``, ``cs_um``.
    candidate_weights : tuple of float
        Relative chance of drawing each candidate (empty: all alike).  :meth:`from_fit` weighs
        them by how well they match, ``exp((score - best) / (delta / 2))``: the better matches
        are drawn more, every consistent one still often (at least e⁻² as often as the best).
    """

    defocus: float
    cs_um: float
    pixel_size_angstrom: float
    astig_max_angstrom: float = 10.0
    dose: float = 1e4
    voltage_kv: float = 80.0
    defocus_tolerance: float = 20.0
    cs_tolerance_um: float = 5.0
    candidates: tuple[tuple[float, float], ...] = ()
    candidate_weights: tuple[float, ...] = ()

    @classmethod
    def from_fit(
        cls, fit: ConditionsFit, pixel_size_angstrom: float, **kwargs: Any
    ) -> ImagingConditions:
        """Return conditions that draw from everything an image is consistent with.

        Parameters
        ----------
        fit : ConditionsFit
            From :func:`~napari_atomnet.core.optics.fit_imaging_conditions`.
        pixel_size_angstrom : float
            Sampling, Å per pixel.
        **kwargs
            Other fields (``astig_max_angstrom``, ``dose``, ``voltage_kv``).
        """
        defocus, cs, best = fit.best
        step_defocus, step_cs = fit.steps
        weights = np.exp((fit.consistent_scores - best) / max(fit.delta / 2, 1e-12))
        return cls(
            defocus=defocus,
            cs_um=cs,
            pixel_size_angstrom=pixel_size_angstrom,
            defocus_tolerance=step_defocus,
            cs_tolerance_um=step_cs,
            candidates=tuple((float(d), float(c)) for d, c in fit.consistent),
            candidate_weights=tuple(round(float(w), 4) for w in weights),
            **kwargs,
        )

    def check(self) -> None:
        """Raise ValueError, naming the value, for conditions the simulator cannot image."""
        values = asdict(self)
        candidates = np.asarray(values.pop("candidates"), dtype=float)
        if candidates.size and (candidates.ndim != 2 or candidates.shape[1] != 2):
            raise ValueError("candidates must be (defocus, Cs) pairs")
        if not np.isfinite(candidates).all():
            raise ValueError("candidates must be finite")
        weights = np.asarray(values.pop("candidate_weights"), dtype=float)
        if weights.size and (weights.shape != (len(candidates),)):
            raise ValueError("candidate_weights needs one weight per candidate")
        if weights.size and not (np.isfinite(weights).all() and (weights > 0).all()):
            raise ValueError("candidate_weights must be finite and > 0")
        for key, value in values.items():
            if not math.isfinite(float(value)):
                raise ValueError(f"{key} must be a finite number, got {value}")
        if not 0.03 <= self.pixel_size_angstrom <= 0.5:
            raise ValueError(
                f"pixel size must lie in 0.03-0.5 Å (graphene's 1.42 Å bonds need a few pixels), "
                f"got {self.pixel_size_angstrom}"
            )
        if self.dose <= 0:
            raise ValueError(f"dose must be > 0 e/Å², got {self.dose}")
        if not 20 <= self.voltage_kv <= 1000:
            raise ValueError(f"voltage must lie in 20-1000 kV, got {self.voltage_kv}")
        for key in ("astig_max_angstrom", "defocus_tolerance", "cs_tolerance_um"):
            if values[key] < 0:
                raise ValueError(f"{key} must be >= 0, got {values[key]}")

    def text(self) -> str:
        """Return the conditions in words, for the model card."""
        if self.candidates:
            pts = np.asarray(self.candidates)
            optics = (
                f"defocus {pts[:, 0].min():g} to {pts[:, 0].max():g} Å and Cs {pts[:, 1].min():g} "
                f"to {pts[:, 1].max():g} µm ({len(pts)} (defocus, Cs) pairs ± "
                f"{self.defocus_tolerance:g} Å, ± {self.cs_tolerance_um:g} µm, matched to an image"
                f"{', the better matches drawn more' if self.candidate_weights else ''})"
            )
        else:
            optics = (
                f"defocus {self.defocus:g} ± {self.defocus_tolerance:g} Å, Cs {self.cs_um:g} ± "
                f"{self.cs_tolerance_um:g} µm"
            )
        return f"{optics}, {self.pixel_size_angstrom:g} Å/px, {self.voltage_kv:g} kV"

    def draw(self, rng: np.random.Generator) -> dict[str, float]:
        """Draw one image's simulator parameters within the tolerances (of a candidate)."""
        defocus, cs = self.defocus, self.cs_um
        if self.candidates:
            n = len(self.candidates)
            if self.candidate_weights:
                p = np.asarray(self.candidate_weights, dtype=float)
                k = int(rng.choice(n, p=p / p.sum()))
            else:
                k = int(rng.integers(n))
            defocus, cs = self.candidates[k]
        return {
            "defocus": float(rng.uniform(-1, 1) * self.defocus_tolerance + defocus),
            "cs_um": float(rng.uniform(-1, 1) * self.cs_tolerance_um + cs),
            "astig_angstrom": float(rng.uniform(0.0, self.astig_max_angstrom)),
            "dose": float(self.dose * np.exp(rng.uniform(-np.log(2.0), np.log(2.0)))),
            "pixel_size_angstrom": float(self.pixel_size_angstrom),
            "voltage_kv": float(self.voltage_kv),
        }


def adapt_config(**overrides: Any) -> FineTuneConfig:
    """Return the training configuration of an adaptation.

    Every crop comes from the simulations at the conditions (``user_fraction`` 1: the model is
    for them, no rehearsal of other conditions), without extra rotated copies (the simulated
    networks have every orientation).  The network starts from fresh weights (``from_scratch``),
    at the widths :data:`ADAPT_CHANNELS`, with the full training's learning rate, in bfloat16
    where the CPU runs it natively (``precision`` "auto"), which is faster than moving the
    built-in's wider network.  On the benchmark's dark-atom HRTEM image (``benchmarks/run.py
    adapt``, the conditions stated 10 Å / 2 µm off, 500 images, 3,000 steps, bfloat16) F1 went
    from 0.992 (``atomnet-hrtem``, widths 16-48-72-96) to 0.9971 from scratch in 8.2 min, and to
    0.9995 starting from the built-in's weights (``from_scratch=False``) with the same images
    and steps in 9.6 min.  With the two built-ins before it, from scratch did as well (0.9975
    against 0.9980) or better (0.9995 against 0.9980).

    Parameters
    ----------
    **overrides
        Fields of :class:`~napari_atomnet.training.finetune.FineTuneConfig` to change.
    """
    defaults = {
        "steps": ADAPT_STEPS,
        "batch": 16,
        "lr": 1e-3,
        "warmup": 300,
        "user_fraction": 1.0,
        "sim_images": 0,
        "rotations": 0,
        "val_fraction": 0.2,
        "from_scratch": True,
        "freeze_norm": False,
        "channels": ADAPT_CHANNELS,
        "precision": "auto",
    }
    config = {**defaults, **overrides}
    if not config["from_scratch"] and "channels" not in overrides:
        config["channels"] = None  # continuing from the base's weights keeps its widths
    return FineTuneConfig(**config)


def simulate_conditions(
    conditions: ImagingConditions,
    n_images: int,
    *,
    seed: int = 0,
    shape: tuple[int, int] = SIM_SHAPE,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> list[LabelledImage]:
    """Simulate labelled graphene HRTEM images at a microscope's conditions.

    Parameters
    ----------
    conditions : ImagingConditions
        What to image at (each image draws its own values within the tolerances).
    n_images : int
        Images to return.  Draws whose atoms show no contrast (|contrast| <
        :data:`MIN_CONTRAST`, next to a contrast reversal) are replaced by new draws.
    seed : int
        The images are a pure function of it and the conditions.
    shape : tuple of int
        Image size.
    progress : callable, optional
        ``progress(done, n_images)``.
    cancelled : callable, optional
        Polled between images; True raises :class:`InterruptedError`.

    Returns
    -------
    list of LabelledImage
        The noisy images with every atom labelled, and whether its atoms are bright or dark.

    Raises
    ------
    ValueError
        For bad conditions, or when the conditions show no atoms in 10 draws in a row (a
        contrast reversal at every drawn value).
    """
    from .. import synth

    conditions.check()
    if n_images < 1:
        raise ValueError(f"n_images must be at least 1, got {n_images}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xADA9]))
    images: list[LabelledImage] = []
    failures = 0
    while len(images) < n_images:
        if cancelled is not None and cancelled():
            raise InterruptedError("adaptation cancelled")
        params = conditions.draw(rng)
        sim = synth.graphene_hrtem(shape, **params, seed=int(rng.integers(0, 2**31 - 1)))
        if abs(float(sim.extras["contrast"])) < MIN_CONTRAST:
            failures += 1
            if failures >= 10:
                raise ValueError(
                    "these imaging conditions show no atom contrast (graphene's contrast "
                    "reverses there): check defocus and Cs, or widen their tolerances"
                )
            continue
        failures = 0
        rows = data.label_atoms(sim.atoms, all_strong=True)
        polarity = "bright" if data.sim_polarity(sim) > 0 else "dark"
        text = ", ".join(f"{k} {v:.4g}" for k, v in params.items())
        images.append(
            LabelledImage(
                f"sim{len(images):03d}",
                sim.image.astype(np.float32),
                rows,
                polarity,
                text,
                pixel_size_nm=sim.pixel_size_nm,
            )
        )
        if progress is not None:
            progress(len(images), n_images)
    return images


def adapt_detector(
    conditions: ImagingConditions,
    *,
    name: str,
    base: str = "atomnet-hrtem",
    n_images: int = ADAPT_IMAGES,
    out_dir: str | Path | None = None,
    config: FineTuneConfig | None = None,
    progress: ProgressCallback | None = None,
    cancelled: Callable[[], bool] | None = None,
    overwrite: bool = False,
) -> FineTuneResult:
    """Fine-tune a detector on simulations at a microscope's conditions; register the result.

    Parameters
    ----------
    conditions : ImagingConditions
        The microscope's conditions, with their tolerances.
    name : str
        Name of the new model (see :func:`~napari_atomnet.training.finetune.check_model_name`).
    base : str
        Base model: registry name or ``.onnx`` path.  Trained from scratch (the default
        ``config``), the new model takes only its architecture and its card is enough;
        continuing from its weights needs its ``.pt`` beside the ``.onnx``.
    n_images : int
        Simulated images (256², about 0.1 s each); ``config.val_fraction`` of them are held
        out to measure F1 before and after.
    out_dir : path-like, optional
        Where to write (default: the user model folder).
    config : FineTuneConfig, optional
        Default :func:`adapt_config`.
    progress : callable, optional
        ``progress(stage, done, total, loss)`` as in
        :func:`~napari_atomnet.training.finetune.fine_tune_detector` (stage ``"data"`` counts
        the simulated images).
    cancelled : callable, optional
        Polled at every step; True raises :class:`InterruptedError` and nothing is written.
    overwrite : bool
        Replace an existing user model of that name.

    Returns
    -------
    FineTuneResult
        The card's ``fine_tuning`` record holds the conditions (``conditions``); when every
        simulated image showed its atoms one way, the card's ``polarity`` says which, and
        detection with ``polarity="auto"`` uses it.

    Raises
    ------
    ValueError
        Bad conditions, name or configuration, a base model without torch weights (or, from
        scratch, without this project's architecture); nothing is written.
    ImportError
        torch or onnx is missing.
    """
    t_start = time.perf_counter()
    cfg = config or adapt_config()
    cfg.check()
    conditions.check()
    card, out = prepare_fine_tuning(name, base, out_dir, overwrite, from_scratch=cfg.from_scratch)
    report = progress or (lambda *_: None)
    stop = cancelled or (lambda: False)
    images = simulate_conditions(
        conditions,
        n_images,
        seed=cfg.seed,
        progress=lambda done, total: report("data", done, total, None),
        cancelled=stop,
    )
    polarities = sorted({p.polarity for p in images})
    how = "'s network trained from scratch for" if cfg.from_scratch else " adapted to"
    return fine_tune_on(
        images,
        card,
        name=name,
        out=out,
        config=cfg,
        polarity="/".join(polarities),
        source=f"{n_images} graphene_hrtem simulations ({SIM_SHAPE[0]}x{SIM_SHAPE[1]}) at the "
        "conditions below",
        progress=report,
        cancelled=stop,
        overwrite=overwrite,
        started=t_start,
        record={"conditions": asdict(conditions), "simulated_at_conditions": n_images},
        description=f"{card.name}{how} HRTEM imaging conditions: {conditions.text()} "
        "(napari-atomnet adapt). For images taken there.",
        # conditions that image every atom one way: "auto" contrast means that way
        card_updates={"polarity": polarities[0]} if len(polarities) == 1 else None,
    )
